"""The one way the ingress reaches the engine replicas: PoC calls, model info, inference streams,
and whether an engine is ready (and why not). Services receive an :class:`EngineClient` (or, in
tests, anything with the same methods); none of them knows Serve's handle.

Readiness: a call that needs the engine asks :meth:`EngineClient.unavailable`, which probes the
engine deployment for at most :data:`READY_TIMEOUT_S` and answers why no replica is ready (the
probe's failure and the deployment's state in Serve), so a caller gets a 503 within seconds
rather than a call that waits for a replica that may never come.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle

from poc_serve.engine.protocol import ArtifactRound, PoCComputeError, PoCRound
from poc_serve.engine.vllm_args import ServingRequest
from poc_serve.serve.core.errors import ServiceError
from poc_serve.serve.core.metrics import PoCMetrics

# A call that needs the engine waits at most this long to learn whether one is ready.
READY_TIMEOUT_S = 2.0
# The ingress's periodic health check probes longer: a slow engine start never marks it unhealthy.
PROBE_TIMEOUT_S = 5.0
# Retry-After of the 503 answered while no engine replica is ready.
RETRY_AFTER_S = 10


class EngineReadiness:
    """Whether an engine replica was last found ready, and why not (what /status shows)."""

    def __init__(self) -> None:
        self.ready = False
        self.error: str | None = None


class EngineClient(EngineReadiness):
    """PoC calls and inference streams to the engine deployment behind ``handle``, which serves
    ``serving`` (the model switch of :mod:`poc_serve.serve.node.service` changes it)."""

    def __init__(self, handle: DeploymentHandle, serving: ServingRequest, metrics: PoCMetrics | None = None):
        super().__init__()
        self._handle = handle
        self.serving = serving
        self._loading: str | None = None
        # Why inference is refused though an engine may be loaded (POST /api/v1/stop), or None.
        self.inference_down: str | None = None
        self._metrics = metrics

    @property
    def served_model_name(self) -> str:
        return self.serving.served_model_name

    def poc_call_size(self, seq_len: int) -> int:
        """Nonces per engine call at ``seq_len`` for the served engine config."""
        return self.serving.engine.poc_call_size(seq_len)

    def start_load(self, reason: str) -> None:
        """A model load begins: calls that need the engine get 503 with ``reason`` until it ends."""
        self._loading, self.ready, self.error = reason, False, reason

    def end_load(self, serving: ServingRequest) -> None:
        """The load of ``serving`` ended (ready or failed): readiness is probed again."""
        self.serving, self._loading, self.error = serving, None, None

    async def compute(self, round: PoCRound, nonces: list[int]) -> list[float]:
        """v1 distances of ``nonces``; 502 naming the engine's failure."""
        return await self._poc_call("compute", round, nonces)

    async def compute_artifacts(self, round: ArtifactRound, nonces: list[int]) -> list[str | None]:
        """v2 artifacts of ``nonces`` (None where non-finite); 502 naming the engine's failure."""
        return await self._poc_call("compute_artifacts", round, nonces)

    async def model_info(self) -> dict[str, Any]:
        """The served model, its path, hidden size and longest sequence; 503 if no replica answers."""
        try:
            return await self._handle.model_info.remote()
        except Exception as exc:  # the replica died between the readiness probe and this call
            raise ServiceError(503, f"no engine replica answered model_info: {type(exc).__name__}") from exc

    def openai(self, route: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """vLLM's answer to ``body`` on ``route``, streamed from an engine replica: one item
        ``{"status", "stream": False, "media_type", "body": JSON bytes}``, or a head with
        ``"stream": True`` and the SSE chunks."""
        return self._handle.options(stream=True).openai.remote(route, body)

    async def unavailable(self, timeout: float = READY_TIMEOUT_S) -> str | None:
        """None when an engine replica answers within ``timeout``; else why not (kept in ``error``)."""
        if self._loading:
            return self._loading
        if self.ready:
            return None
        try:
            await asyncio.wait_for(self._handle.check_health.remote(), timeout=timeout)
            self.ready, self.error = True, None
            return None
        except asyncio.TimeoutError:
            reason = "no engine replica is ready yet"
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            reason = f"no engine replica is ready: {type(exc).__name__}: {first}"
        deployment = await asyncio.to_thread(deployment_state, self._handle.app_name, self._handle.deployment_name)
        self.error = f"{reason} ({deployment})"
        return self.error

    async def require(self) -> None:
        """Raise 503 (with Retry-After) unless an engine replica is ready."""
        reason = await self.unavailable()
        if reason:
            raise ServiceError(503, reason)

    async def _poc_call(self, method: str, round: PoCRound | ArtifactRound, nonces: list[int]) -> list:
        try:
            answer = await getattr(self._handle, method).remote(round, nonces)
        except PoCComputeError as exc:  # Ray's wrapper of the engine's error keeps its reason
            self._count_failure(method)
            raise ServiceError(502, exc.reason) from exc
        except Exception as exc:  # the replica died, or Ray could not reach it
            self._count_failure(method)
            raise ServiceError(502, f"PoC forward failed on the engine: {type(exc).__name__}") from exc
        self.ready = True
        return answer

    def _count_failure(self, method: str) -> None:
        if self._metrics:
            self._metrics.record_engine_call_failed(method)


def deployment_state(app: str, name: str) -> str:
    """A deployment's status in Serve with the last line of its message, e.g.
    "PoCEngineDeployment DEPLOY_FAILED: ValueError: bad config" (a blocking call to the Serve
    controller: run it in a thread)."""
    try:
        deployment = serve.status().applications[app].deployments[name]
    except Exception as exc:  # noqa: BLE001 - only a description: never fail the caller on it
        return f"{name}: state unknown ({type(exc).__name__})"
    message = (deployment.message or "").strip().splitlines()
    status = getattr(deployment.status, "value", deployment.status)
    return f"{name} {status}" + (f": {message[-1][:300]}" if message else "")
