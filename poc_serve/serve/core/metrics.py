"""Ray Serve custom metrics of PoC v1 rounds, v2 generation and jobs, the callback senders, the
engine calls and inference (shown in the Ray dashboard and Prometheus; docs/monitoring.md).

Ray exports them with a ``ray_`` prefix, e.g. ``ray_poc_nonces_checked_total``. Names follow
Prometheus' conventions: counters end in ``_total``, a unit closes the name where there is one,
labels are lower_snake. A counter appears once it is first incremented (Ray exports no zero), so
the fault counters show up with the first fault.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from ray.serve import metrics

STATE_CODES = {"IDLE": 0, "GENERATING": 1, "VALIDATING": 2, "STOPPED": 3}
# Names as Prometheus shows them (with Ray's prefix); the Grafana dashboard names exactly these.
EXPORTED_NAMES = [f"ray_{n}" for n in (
    # v1 rounds
    "poc_nonces_checked_total", "poc_valid_nonces_total", "poc_rate_nonces_per_second",
    "poc_round_state", "poc_validated_nonces_total", "poc_validations_total",
    # v2 generation and jobs
    "poc_v2_artifacts_total", "poc_v2_nonfinite_nonces_total", "poc_v2_rate_artifacts_per_second",
    "poc_v2_generating", "poc_v2_queued_nonces", "poc_v2_jobs_total",
    # the callback senders (label sender: v1, v2_generation, v2_jobs)
    "poc_callbacks_total", "poc_callback_attempts_failed_total", "poc_callback_items_dropped_total",
    "poc_callback_backlog_callbacks", "poc_callback_backlog_items",
    # the shared engine
    "poc_engine_calls_failed_total", "poc_inference_rejected_total")]


class PoCMetrics:
    """The counters and gauges of v1, v2, callbacks, engine calls and inference; one instance per
    ingress replica."""

    def __init__(self) -> None:
        self.checked = metrics.Counter("poc_nonces_checked_total", description="Nonces computed by generation.")
        self.valid = metrics.Counter("poc_valid_nonces_total", description="Valid nonces found by generation.")
        self.rate = metrics.Gauge("poc_rate_nonces_per_second", description="Generation rate of the round.")
        self.state = metrics.Gauge("poc_round_state",
                                   description="Round state: 0 IDLE, 1 GENERATING, 2 VALIDATING, 3 STOPPED.")
        self.validated = metrics.Counter("poc_validated_nonces_total", description="Nonces recomputed by /validate.")
        self.validations = metrics.Counter("poc_validations_total", description="ProofBatches judged, by verdict.",
                                           tag_keys=("verdict",))
        self.artifacts = metrics.Counter("poc_v2_artifacts_total", description="v2 artifacts generated.")
        self.nonfinite = metrics.Counter("poc_v2_nonfinite_nonces_total",
                                         description="v2 nonces left out: non-finite after one recomputation.")
        self.artifact_rate = metrics.Gauge("poc_v2_rate_artifacts_per_second",
                                           description="v2 generation rate (artifacts per second).")
        self.v2_generating = metrics.Gauge("poc_v2_generating", description="1 while the v2 generation loop runs.")
        self.queued_nonces = metrics.Gauge("poc_v2_queued_nonces", description="Nonces of queued v2 jobs.")
        self.jobs = metrics.Counter("poc_v2_jobs_total", description="v2 generate jobs, by kind and outcome.",
                                    tag_keys=("kind", "outcome"))
        self.callbacks = metrics.Counter("poc_callbacks_total",
                                         description="Callbacks delivered or dropped, by sender, path and outcome.",
                                         tag_keys=("sender", "kind", "outcome"))
        self.callback_attempts_failed = metrics.Counter(
            "poc_callback_attempts_failed_total", description="Callback POSTs that failed (retried or then dropped).",
            tag_keys=("sender", "kind"))
        self.callback_items_dropped = metrics.Counter(
            "poc_callback_items_dropped_total", description="Nonces or artifacts in dropped callbacks.",
            tag_keys=("sender",))
        self.callback_backlog = metrics.Gauge(
            "poc_callback_backlog_callbacks", description="Callbacks not yet delivered.", tag_keys=("sender",))
        self.callback_backlog_items = metrics.Gauge(
            "poc_callback_backlog_items", description="Nonces or artifacts in callbacks not yet delivered.",
            tag_keys=("sender",))
        self.engine_calls_failed = metrics.Counter(
            "poc_engine_calls_failed_total",
            description="PoC calls to the engine replicas that failed (the batch is retried), by method.",
            tag_keys=("method",))
        self.inference_rejected = metrics.Counter(
            "poc_inference_rejected_total", description="Inference requests answered 503, by reason.",
            tag_keys=("reason",))

    def record_batch(self, checked: int, valid: int) -> None:
        """Count one computed generation batch."""
        self.checked.inc(checked)
        if valid:
            self.valid.inc(valid)

    def record_rate(self, rate: float) -> None:
        """Set the generation rate."""
        self.rate.set(rate)

    def record_state(self, state: str) -> None:
        """Set the round state."""
        self.state.set(STATE_CODES[state])

    def record_validation(self, nonces: int, fraud: bool) -> None:
        """Count one judged ProofBatch."""
        if nonces:
            self.validated.inc(nonces)
        self.validations.inc(tags={"verdict": "fraud" if fraud else "honest"})

    def record_artifacts(self, generated: int, nonfinite: int) -> None:
        """Count one computed v2 generation batch."""
        if generated:
            self.artifacts.inc(generated)
        if nonfinite:
            self.nonfinite.inc(nonfinite)

    def record_artifact_rate(self, rate: float) -> None:
        """Set the v2 generation rate."""
        self.artifact_rate.set(rate)

    def record_v2_generating(self, generating: bool) -> None:
        """Set whether the v2 generation loop runs."""
        self.v2_generating.set(int(generating))

    def record_queued_nonces(self, nonces: int) -> None:
        """Set the nonces of queued v2 jobs."""
        self.queued_nonces.set(nonces)

    def record_job(self, kind: str, outcome: str) -> None:
        """Count one finished v2 job (kind: generate or validate; outcome: completed or failed)."""
        self.jobs.inc(tags={"kind": kind, "outcome": outcome})

    def record_callback(self, sender: str, kind: str, outcome: str, items: int) -> None:
        """Count one delivered or dropped callback of ``sender`` (its CallbackSender's ``on_outcome``)."""
        self.callbacks.inc(tags={"sender": sender, "kind": kind, "outcome": outcome})
        if outcome == "dropped" and items:
            self.callback_items_dropped.inc(items, tags={"sender": sender})

    def record_callback_attempt_failed(self, sender: str, kind: str) -> None:
        """Count one failed POST of ``sender`` (its CallbackSender's ``on_attempt_failed``)."""
        self.callback_attempts_failed.inc(tags={"sender": sender, "kind": kind})

    def record_callback_backlog(self, sender: str, callbacks: int, items: int) -> None:
        """Set what ``sender`` has not delivered yet (its CallbackSender's ``on_backlog``)."""
        self.callback_backlog.set(callbacks, tags={"sender": sender})
        self.callback_backlog_items.set(items, tags={"sender": sender})

    def record_engine_call_failed(self, method: str) -> None:
        """Count one failed PoC call to the engine deployment (``compute`` or ``compute_artifacts``)."""
        self.engine_calls_failed.inc(tags={"method": method})

    def record_inference_rejected(self, reason: str) -> None:
        """Count one inference request answered 503 (reason: poc_running, inference_down or
        engine_unavailable)."""
        self.inference_rejected.inc(tags={"reason": reason})

    def callback_hooks(self, sender: str) -> dict[str, Callable]:
        """The observer arguments of a CallbackSender whose series carry the label sender=``sender``."""
        return dict(on_outcome=partial(self.record_callback, sender),
                    on_attempt_failed=partial(self.record_callback_attempt_failed, sender),
                    on_backlog=partial(self.record_callback_backlog, sender))
