"""The engine deployment: one vLLM PoC engine per replica, nothing else."""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

from ray import serve

from poc_serve.engine.config import EngineConfig
from poc_serve.engine.protocol import PoCEngineProtocol, PoCRound


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
        self.engine = await engine_factory(config)

    async def compute(self, round: dict, nonces: list[int]) -> list[float]:
        """Distances of ``nonces`` for ``round`` (a :class:`PoCRound` as a dict)."""
        result = await self.engine.compute(PoCRound(**round), nonces)
        return result.distances

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
