"""Ray Serve custom metrics of the PoC round (shown in the Ray dashboard and Prometheus).

Ray exports them with a ``ray_`` prefix, e.g. ``ray_poc_nonces_checked_total``.
"""

from __future__ import annotations

from ray.serve import metrics

STATE_CODES = {"IDLE": 0, "GENERATING": 1, "VALIDATING": 2, "STOPPED": 3}
# Names as Prometheus shows them (with Ray's prefix); the Grafana dashboard and tests use these.
EXPORTED_NAMES = [f"ray_{n}" for n in (
    "poc_nonces_checked_total", "poc_valid_nonces_total", "poc_rate_nonces_per_second",
    "poc_round_state", "poc_validated_nonces_total", "poc_validations_total")]


class PoCMetrics:
    """The round's counters and gauges; one instance per ingress replica."""

    def __init__(self) -> None:
        self.checked = metrics.Counter("poc_nonces_checked_total", description="Nonces computed by generation.")
        self.valid = metrics.Counter("poc_valid_nonces_total", description="Valid nonces found by generation.")
        self.rate = metrics.Gauge("poc_rate_nonces_per_second", description="Generation rate of the round.")
        self.state = metrics.Gauge("poc_round_state",
                                   description="Round state: 0 IDLE, 1 GENERATING, 2 VALIDATING, 3 STOPPED.")
        self.validated = metrics.Counter("poc_validated_nonces_total", description="Nonces recomputed by /validate.")
        self.validations = metrics.Counter("poc_validations_total", description="ProofBatches judged, by verdict.",
                                           tag_keys=("verdict",))

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
