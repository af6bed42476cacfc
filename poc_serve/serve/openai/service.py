"""Inference over the engine replicas, refused while PoC holds the engine.

Each request is answered by vLLM's own OpenAI serving classes inside an engine replica
(:class:`poc_serve.engine.openai_server.OpenAIServer`) and streamed back through the Serve
handle. This service only decides whether a request may go to an engine:
- 503 with Retry-After while a PoC generation runs (v1 or v2), or a v1 round validates unless the
  app allows it (:mod:`poc_serve.serve.core.policies`);
- 503 while inference is down (``POST /api/v1/stop``) or no engine replica is ready (a load);
- 400 for a body that is not a JSON object.
Requests already running when a round starts are finished, not aborted: PoC batches and
inference steps interleave in the engine. A client that disconnects cancels the handle's stream,
which aborts its engine request. ``/v1/models`` is answered here, from what the engines serve.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

from fastapi.responses import Response, StreamingResponse

from poc_serve.serve.core.engine_client import EngineClient
from poc_serve.serve.core.metrics import PoCMetrics
from poc_serve.serve.openai.protocol import OpenAIError


class InferenceService:
    """Gates requests and relays vLLM's answers from an engine replica."""

    def __init__(self, engine: EngineClient, busy_reason: Callable[[], str | None],
                 retry_after_s: int, metrics: PoCMetrics | None = None):
        self._engine = engine
        self._busy_reason = busy_reason
        self._retry_after_s = retry_after_s
        self._metrics = metrics

    def models(self) -> dict[str, Any]:
        """GET /v1/models: the served name first, then its aliases (vLLM's shape)."""
        serving = self._engine.serving
        names = [serving.served_model_name, *serving.served_model_aliases]
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": serving.model,
             "max_model_len": serving.engine.max_model_len} for name in names]}

    async def answer(self, route: str, body: Any) -> Response:
        """``body`` on ``route`` (/v1/chat/completions, /v1/completions, /tokenize, /detokenize),
        answered by an engine replica."""
        poc_running = self._busy_reason() if route.startswith("/v1/") else None
        busy = poc_running or self._engine.inference_down
        if busy:
            self._count_rejected("poc_running" if poc_running else "inference_down")
            raise OpenAIError(503, busy, headers={"Retry-After": str(self._retry_after_s)})
        if not isinstance(body, dict):
            raise OpenAIError(400, "the request body must be a JSON object")
        unavailable = await self._engine.unavailable()
        if unavailable:  # answered within seconds instead of waiting for a replica that may never come
            self._count_rejected("engine_unavailable")
            raise OpenAIError(503, unavailable, headers={"Retry-After": str(self._retry_after_s)})
        items = self._engine.openai(route, body)
        try:
            head = await anext(items)
            if not head["stream"]:  # the answer's JSON, relayed as the engine replica wrote it
                return Response(head["body"], status_code=head["status"], media_type=head["media_type"])
        except Exception as exc:  # the replica died, or Ray could not reach it
            raise OpenAIError(503, f"inference failed on the engine: {type(exc).__name__}: {exc}"[:500]) from exc
        return StreamingResponse(_relay(items), status_code=head["status"], media_type=head["media_type"])

    def _count_rejected(self, reason: str) -> None:
        if self._metrics:
            self._metrics.record_inference_rejected(reason)


async def _relay(items: AsyncIterator[str]) -> AsyncIterator[str]:
    """The SSE chunks; an engine lost mid-stream ends it with an error chunk and [DONE]."""
    try:
        async for chunk in items:
            yield chunk
    except Exception as exc:  # noqa: BLE001 - the status line is sent: the error goes in the stream
        error = OpenAIError(503, f"inference failed on the engine: {type(exc).__name__}")
        yield f"data: {json.dumps(error.body())}\n\n"
        yield "data: [DONE]\n\n"
