"""The engine deployment: one vLLM PoC engine per replica, nothing else."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable, Iterator

from ray import serve

from poc_serve.engine.config import EngineConfig
from poc_serve.engine.protocol import ArtifactRound, PoCComputeError, PoCEngineProtocol, PoCRound

logger = logging.getLogger("ray.serve.poc_serve")
# The cause's first line is what an HTTP caller sees; the whole traceback goes to the replica log.
_CAUSE_CHARS = 500


async def _build_vllm_engine(config: EngineConfig) -> PoCEngineProtocol:
    from poc_serve.engine.engine import PoCEngine

    engine = PoCEngine(config)
    await engine.start()
    return engine


@serve.deployment(max_ongoing_requests=4, health_check_period_s=10, health_check_timeout_s=60)
class PoCEngineDeployment:
    """Owns one engine; the ingress calls :meth:`compute` through a handle."""

    # Serve awaits an async constructor; the replica takes requests only once the engine is up.
    async def __init__(self, config: EngineConfig,  # type: ignore[misc]
                       engine_factory: Callable[[EngineConfig], Awaitable[PoCEngineProtocol]] = _build_vllm_engine):
        self.config = config
        self.engine = await engine_factory(config)

    async def compute(self, round: dict, nonces: list[int]) -> list[float]:
        """v1 distances of ``nonces`` for ``round`` (a :class:`PoCRound` as a dict)."""
        poc_round = PoCRound(**round)
        with self._failures_named(poc_round.seq_len, len(nonces), poc_round.randomization):
            result = await self.engine.compute(poc_round, nonces)
        return result.distances

    async def compute_artifacts(self, round: dict, nonces: list[int]) -> list[str | None]:
        """v2 artifacts (vector_b64, None where non-finite) of ``nonces`` for ``round`` (an
        :class:`ArtifactRound` as a dict)."""
        artifact_round = ArtifactRound(**round)
        with self._failures_named(artifact_round.seq_len, len(nonces), f"v2 k_dim {artifact_round.k_dim}"):
            result = await self.engine.compute_artifacts(artifact_round, nonces)
        return result.artifacts

    async def model_info(self) -> dict:
        """The served model, the path vLLM loaded, its hidden size and longest sequence."""
        return self.engine.model_info()

    @contextlib.contextmanager
    def _failures_named(self, seq_len: int, count: int, kind: str) -> Iterator[None]:
        """A failed PoC call is logged here, once, with the model and the call's shape, and
        raised as :class:`PoCComputeError` naming its cause (what HTTP callers see)."""
        try:
            yield
        except Exception as exc:
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            reason = f"PoC forward failed on the engine: {lines[0][:_CAUSE_CHARS]}"
            logger.error("%s (model %s, %d nonces, seq_len %d, %s, %d nonces per forward)", reason,
                         self.config.model, count, seq_len, kind, self.config.poc_forward_size(seq_len),
                         exc_info=exc)
            raise PoCComputeError(reason) from exc

    async def generate(self, request: dict) -> AsyncIterator[dict]:
        """Stream one inference request: ``{"prompt" | "messages", "sampling", "request_id"}``.
        Bad requests (prompt too long, bad sampling values) yield one ``{"error": ...}`` chunk so
        the ingress can answer 400 instead of failing the stream."""
        from poc_serve.engine.vllm_compat import REQUEST_ERRORS

        try:
            prompt = request.get("prompt")
            if prompt is None:
                prompt = self.engine.chat_prompt(request["messages"])
            async for chunk in self.engine.generate(prompt, request["sampling"], request["request_id"]):
                yield chunk
        except REQUEST_ERRORS as exc:
            yield {"error": str(exc)}

    async def check_health(self) -> None:
        """Serve marks the replica unhealthy (and replaces it) when the engine is dead."""
        await self.engine.check_health()

    def __del__(self):
        engine = getattr(self, "engine", None)  # absent when the constructor failed
        if engine is not None:
            engine.shutdown()
