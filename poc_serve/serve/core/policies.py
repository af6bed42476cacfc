"""Who may use the shared engine while what runs: the one place for these rules (issue 15 item 5).

v1 rounds, v2 generation, v2 jobs and inference share the engine replicas. The rules:
- one generation at a time on a node: a v1 round may not start generating while the v2 loop
  runs, nor the v2 loop while a v1 round is GENERATING (409 naming what runs);
- queued and waited v2 jobs run only while no generation loop (v1 or v2) runs (spec 4.1);
- new inference requests wait (503) while either generation runs, and while a v1 round is
  VALIDATING unless the app allows it; v2 jobs (validation included) never block inference.
"""

from __future__ import annotations

from typing import Callable

V1_API = "/api/v1/pow"
V2_API = "/api/v1/inference/pow"


class EnginePolicies:
    """Answers the rules above from two probes: the v1 round's state and whether v2 generates."""

    def __init__(self, v1_state: Callable[[], str], v2_generating: Callable[[], bool],
                 allow_inference_during_validation: bool = False):
        self._v1_state = v1_state
        self._v2_generating = v2_generating
        self._allow_inference_during_validation = allow_inference_during_validation

    def v1_generation_conflict(self) -> str | None:
        """Why a v1 round may not start generating now, or None."""
        if self._v2_generating():
            return f"a PoC v2 generation is running: POST {V2_API}/stop first"
        return None

    def v2_generation_conflict(self) -> str | None:
        """Why the v2 loop may not start now, or None."""
        if self._v1_state() == "GENERATING":
            return f"a PoC v1 round is generating: POST {V1_API}/stop first"
        return None

    def jobs_may_run(self) -> bool:
        """Whether v2 jobs may use the engine now."""
        return not self._v2_generating() and self._v1_state() != "GENERATING"

    def inference_busy_reason(self) -> str | None:
        """Why new inference requests are refused now (answered 503), or None."""
        state = self._v1_state()
        if state == "GENERATING" or (state == "VALIDATING" and not self._allow_inference_during_validation):
            return f"Proof-of-Compute is running (state {state}); inference resumes after POST {V1_API}/stop"
        if self._v2_generating():
            return f"Proof-of-Compute v2 generation is running; inference resumes after POST {V2_API}/stop"
        return None
