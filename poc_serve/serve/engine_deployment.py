"""The engine deployment: one engine per replica, and the model switch in place.

A replica serves the node's :class:`~poc_serve.serve.core.model_board.ModelTarget` when the board
holds one made over this deployment's engine config (``inference/up`` wrote it), else the model it
was bound with. A watcher task follows the board: when the target's generation grows, the replica
shuts its engine down and builds the new one in the same actor (same placement group: the GPU
layout cannot change this way; :mod:`poc_serve.serve.node.service` refuses such a switch), and
reports loading, ready or failed with its generation. While it loads, and after a failed load,
its PoC and inference calls fail naming why; its health check passes, so Serve does not replace
it in the middle of a load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Awaitable, Callable, Iterator

import ray
from ray import serve

from poc_serve.engine.config import EngineConfig
from poc_serve.engine.protocol import ArtifactRound, PoCComputeError, PoCEngineProtocol, PoCRound
from poc_serve.engine.vllm_args import ServingRequest
from poc_serve.serve.core.errors import logger
from poc_serve.serve.core.model_board import REPORT_REFRESH_S, ModelBoard, ModelTarget, ReplicaReport
from poc_serve.serve.core.store import RayKVStore

# The cause's first line is what an HTTP caller sees; the whole traceback goes to the replica log.
_CAUSE_CHARS = 500
# How often the watcher reads the board: the delay between inference/up and the start of a load.
WATCH_INTERVAL_S = 0.5

EngineFactory = Callable[[EngineConfig], Awaitable[PoCEngineProtocol]]


async def _build_vllm_engine(config: EngineConfig) -> PoCEngineProtocol:
    from poc_serve.engine.engine import PoCEngine

    engine = PoCEngine(config)
    await engine.start()
    return engine


def _gpus() -> dict:
    """The GPUs of this replica's node and their driver (None without NVML), for the board."""
    from poc_serve.serve.node.gpu import GpuUnavailableError, gpu_devices, gpu_driver

    try:
        driver = gpu_driver()
    except GpuUnavailableError:
        driver = None
    return {"devices": gpu_devices()["devices"], "driver": driver}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return f"{type(exc).__name__}: {lines[0][:_CAUSE_CHARS]}"


@serve.deployment(max_ongoing_requests=4, health_check_period_s=10, health_check_timeout_s=60)
class PoCEngineDeployment:
    """Owns one engine; the ingress calls :meth:`compute` through a handle."""

    # Serve awaits an async constructor; the replica takes requests only once the engine is up.
    async def __init__(self, serving: ServingRequest,  # type: ignore[misc]
                       engine_factory: EngineFactory = _build_vllm_engine):
        self._factory = engine_factory
        self._base_key = serving.key()
        context = serve.get_replica_context()
        self._replica = context.replica_id.unique_id
        self._node_id = ray.get_runtime_context().get_node_id()
        self._board = ModelBoard(RayKVStore(), context.app_name)
        target = await asyncio.to_thread(self._board.target)
        self._generation = 0
        if target is not None and target.base_key == self._base_key:
            serving, self._generation = target.serving, target.generation
        self.serving = serving
        self.engine: PoCEngineProtocol | None = None
        self._openai = None
        self._load_error: str | None = None
        await self._report("loading")
        try:
            self.engine = await engine_factory(serving.engine)
            self._openai = self.engine.openai_server()
        except Exception as exc:
            await self._report("failed", _first_line(exc))
            raise
        await self._report("ready")
        self._watcher = asyncio.create_task(self._watch())

    @property
    def config(self) -> EngineConfig:
        return self.serving.engine

    async def compute(self, round: PoCRound, nonces: list[int]) -> list[float]:
        """v1 distances of ``nonces`` for ``round``."""
        with self._failures_named(round.seq_len, len(nonces), round.randomization):
            result = await self._engine().compute(round, nonces)
        return result.distances

    async def compute_artifacts(self, round: ArtifactRound, nonces: list[int]) -> list[str | None]:
        """v2 artifacts (vector_b64, None where non-finite) of ``nonces`` for ``round``."""
        with self._failures_named(round.seq_len, len(nonces), f"v2 k_dim {round.k_dim}"):
            result = await self._engine().compute_artifacts(round, nonces)
        return result.artifacts

    async def model_info(self) -> dict:
        """The served model and name, the path vLLM loaded, its hidden size and longest sequence."""
        return {**self._engine().model_info(), "served_model_name": self.serving.served_model_name}

    def _engine(self) -> PoCEngineProtocol:
        if self.engine is None:
            raise PoCComputeError(self._engine_error())
        return self.engine

    def _engine_error(self) -> str:
        return (f"no model loaded on this engine replica: "
                f"{self._load_error or 'loading ' + self.serving.served_model_name}")

    @contextlib.contextmanager
    def _failures_named(self, seq_len: int, count: int, kind: str) -> Iterator[None]:
        """A failed PoC call is logged here, once, with the model and the call's shape, and
        raised as :class:`PoCComputeError` naming its cause (what HTTP callers see)."""
        try:
            yield
        except PoCComputeError:
            raise
        except Exception as exc:
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            reason = f"PoC forward failed on the engine: {lines[0][:_CAUSE_CHARS]}"
            logger.error("%s (model %s, %d nonces, seq_len %d, %s, %d nonces per forward)", reason,
                         self.config.model, count, seq_len, kind, self.config.poc_forward_size(seq_len),
                         exc_info=exc)
            raise PoCComputeError(reason) from exc

    async def openai(self, route: str, body: dict) -> AsyncIterator:
        """``body`` on an OpenAI route, answered by vLLM's serving classes over this replica's
        engine (:meth:`poc_serve.engine.openai_server.OpenAIServer.handle`: a head, then the JSON
        body or the SSE chunks). Closing the stream (the client left) aborts the engine request."""
        if self.engine is None:
            raise PoCComputeError(self._engine_error())
        async for item in self._openai.handle(route, body):
            yield item

    async def check_health(self) -> None:
        """Serve marks the replica unhealthy (and replaces it) when the engine is dead; a replica
        that loads, or whose load failed, stays (the board says why it serves nothing)."""
        if self.engine is not None:
            await self.engine.check_health()

    # ---------------------------------------------------------------- model switch

    async def _watch(self) -> None:
        """Follow the board: load a newer target; refresh this replica's report."""
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                target = await asyncio.to_thread(self._board.target)
                if target is not None and target.base_key == self._base_key and target.generation > self._generation:
                    await self._load(target)
                elif time.monotonic() - refreshed >= REPORT_REFRESH_S:
                    await self._report("ready" if self.engine is not None else "failed", self._load_error)
                else:
                    continue
                refreshed = time.monotonic()
            except Exception:  # noqa: BLE001 - the GCS may be briefly away: keep watching
                logger.exception("engine replica: reading or writing the model board failed")

    async def _load(self, target: ModelTarget) -> None:
        old, self.engine, self._openai = self.engine, None, None
        self.serving, self._generation, self._load_error = target.serving, target.generation, None
        name = target.serving.served_model_name
        logger.info("engine replica: loading %s (generation %d)", name, target.generation)
        await self._report("loading")
        started = time.monotonic()
        if old is not None:
            old.shutdown()
            logger.info("engine replica: the previous engine shut down in %.1f s", time.monotonic() - started)
        try:
            self.engine = await self._factory(target.serving.engine)
            self._openai = self.engine.openai_server()
        except Exception as exc:  # noqa: BLE001 - reported: the node says what is true
            self._load_error = f"loading {name} failed: {_first_line(exc)}"
            logger.exception("engine replica: %s", self._load_error)
            await self._report("failed", self._load_error)
            return
        logger.info("engine replica: %s ready after %.1f s", name, time.monotonic() - started)
        await self._report("ready")

    async def _report(self, state: str, error: str | None = None) -> None:
        report = ReplicaReport(replica=self._replica, generation=self._generation, state=state,
                               served_model_name=self.serving.served_model_name, error=error,
                               **await asyncio.to_thread(_gpus), node_id=self._node_id, updated=time.time())
        await asyncio.to_thread(self._board.report, report)

    def __del__(self):
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            watcher.cancel()
        engine = getattr(self, "engine", None)  # absent when the constructor failed
        if engine is not None:
            engine.shutdown()
        board = getattr(self, "_board", None)
        if board is not None:
            with contextlib.suppress(Exception):
                board.withdraw(self._replica)
