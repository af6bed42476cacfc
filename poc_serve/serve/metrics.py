"""Ray Serve custom metrics of PoC v1 rounds and v2 generation and jobs (shown in the Ray dashboard
and Prometheus).

Ray exports them with a ``ray_`` prefix, e.g. ``ray_poc_nonces_checked_total``.
"""

from __future__ import annotations

from ray.serve import metrics

STATE_CODES = {"IDLE": 0, "GENERATING": 1, "VALIDATING": 2, "STOPPED": 3}
# Names as Prometheus shows them (with Ray's prefix); the Grafana dashboard and tests use these.
EXPORTED_NAMES = [f"ray_{n}" for n in (
    "poc_nonces_checked_total", "poc_valid_nonces_total", "poc_rate_nonces_per_second",
    "poc_round_state", "poc_validated_nonces_total", "poc_validations_total")]
# v2's and the callback senders' (apart, because a v1 round alone never exports them).
V2_EXPORTED_NAMES = [f"ray_{n}" for n in (
    "poc_v2_artifacts_total", "poc_v2_nonfinite_nonces_total", "poc_v2_rate_artifacts_per_second",
    "poc_v2_generating", "poc_v2_queued_nonces", "poc_v2_jobs_total", "poc_callbacks_total",
    "poc_callback_items_dropped_total")]


class PoCMetrics:
    """The counters and gauges of v1 and v2; one instance per ingress replica."""

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
        self.callbacks = metrics.Counter("poc_callbacks_total", description="Callbacks, by path and outcome.",
                                         tag_keys=("kind", "outcome"))
        self.callback_items_dropped = metrics.Counter(
            "poc_callback_items_dropped_total", description="Nonces or artifacts in dropped callbacks.")

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

    def record_callback(self, kind: str, outcome: str, items: int) -> None:
        """Count one delivered or dropped callback (the CallbackSender's ``on_outcome``)."""
        self.callbacks.inc(tags={"kind": kind, "outcome": outcome})
        if outcome == "dropped" and items:
            self.callback_items_dropped.inc(items)
