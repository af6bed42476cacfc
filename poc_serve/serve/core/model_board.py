"""Where the node's wanted model and each engine replica's report meet: a board in Ray's GCS
key-value store (the same store as the round checkpoints).

``inference/up`` writes a :class:`ModelTarget`: what to serve, under a generation number that grows
with each load, and whether inference is up (``POST /api/v1/stop`` sets it down without a
reload). Every engine replica watches the target, rebuilds its engine in place when the generation
grows, and writes a :class:`ReplicaReport` (loading, ready or failed, with the generation it
serves) that it refreshes every :data:`REPORT_REFRESH_S`. The management routes derive the node's
state from the board alone, so it is the same from any ingress replica and after an ingress
restart; a replica that starts (a restart, a new node) serves the target, not the model its
deployment was bound with, so the node comes back to what the network last asked for.

A target is tied to the deployment's own engine config (``base_key``): a redeploy with another
engine config (the operator's change) makes the old target void, and the deployment's model is
served again.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, Field

from poc_serve.engine.vllm_args import ServingRequest
from poc_serve.serve.core.store import KeyValueStore

# A replica refreshes its report this often; one not refreshed for REPORT_STALE_S is gone (killed,
# its node lost) and no longer counts.
REPORT_REFRESH_S = 5.0
REPORT_STALE_S = 30.0


class ModelTarget(BaseModel):
    """What the node is to serve."""

    generation: int = Field(description="Grows by one with each load that inference/up starts.")
    serving: ServingRequest = Field(description="The engine config and serving options to load.")
    inference_up: bool = Field(True, description="False after POST /api/v1/stop, until inference/up.")
    base_key: str = Field(description="Digest of the deployment's engine config the target was made over.")


class ReplicaReport(BaseModel):
    """One engine replica's account of itself."""

    replica: str = Field(description="Serve's replica id.")
    generation: int = Field(description="The target generation this report is about (0: the deployment's model).")
    state: Literal["loading", "ready", "failed"] = Field(description="Where its engine stands.")
    served_model_name: str = Field(description="The model it loads or serves.")
    error: str | None = Field(None, description="Why the load failed.")
    devices: list[dict] = Field(default_factory=list, description="GPUs of its node (NVML), for /api/v1/gpu/devices.")
    driver: dict | None = Field(None, description="Its node's GPU driver (NVML), for /api/v1/gpu/driver.")
    node_id: str = Field("", description="Ray node id of the replica.")
    updated: float = Field(description="Wall-clock time of the last refresh.")


class ModelBoard:
    """The board of one application (keys ``<app>/model/...``)."""

    def __init__(self, store: KeyValueStore, app_name: str):
        self._store = store
        self._target_key = f"{app_name}/model/target"
        self._report_prefix = f"{app_name}/model/replica/"

    def target(self) -> ModelTarget | None:
        raw = self._store.get(self._target_key)
        return ModelTarget.model_validate_json(raw) if raw else None

    def set_target(self, target: ModelTarget) -> None:
        self._store.put(self._target_key, target.model_dump_json().encode())

    def report(self, report: ReplicaReport) -> None:
        self._store.put(self._report_prefix + report.replica, report.model_dump_json().encode())

    def withdraw(self, replica: str) -> None:
        self._store.delete_prefix(self._report_prefix + replica)

    def reports(self, now: float | None = None) -> list[ReplicaReport]:
        """The live replicas' reports (refreshed within :data:`REPORT_STALE_S`)."""
        now = time.time() if now is None else now
        reports = [ReplicaReport.model_validate(json.loads(raw)) for raw in self._store.values(self._report_prefix)]
        return [r for r in reports if now - r.updated <= REPORT_STALE_S]
