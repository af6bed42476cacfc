"""OpenAI-compatible inference over the engine replicas, blocked while a PoC round runs.

The engine is shared with PoC: while the round is GENERATING (or VALIDATING, unless allowed) new
requests get 503 with Retry-After. Requests already running when a round starts are finished, not
aborted: PoC batches and inference steps interleave in the engine, and PoC results do not depend
on them (tested).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi.responses import StreamingResponse

from poc_serve.serve.core.engine_client import EngineClient
from poc_serve.serve.core.metrics import PoCMetrics
from poc_serve.serve.openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError

class InferenceService:
    """Turns OpenAI requests into engine calls and engine chunks into OpenAI responses."""

    def __init__(self, engine: EngineClient, busy_reason: Callable[[], str | None],
                 retry_after_s: int, metrics: PoCMetrics | None = None):
        self._engine = engine
        self._busy_reason = busy_reason
        self._retry_after_s = retry_after_s
        self._metrics = metrics

    def models(self) -> dict[str, Any]:
        """GET /v1/models."""
        return {"object": "list", "data": [
            {"id": self._engine.served_model_name, "object": "model", "created": 0, "owned_by": "poc_serve"}]}

    async def completion(self, req: CompletionRequest):
        """POST /v1/completions."""
        return await self._run(req, {"prompt": req.prompt}, "cmpl", "text_completion",
                               lambda text: {"text": text}, lambda text: {"text": text})

    async def chat(self, req: ChatCompletionRequest):
        """POST /v1/chat/completions."""
        messages = [m.model_dump() for m in req.messages]
        return await self._run(req, {"messages": messages}, "chatcmpl", "chat.completion",
                               lambda text: {"message": {"role": "assistant", "content": text}},
                               lambda text: {"delta": {"role": "assistant", "content": text}})

    async def _run(self, req, prompt: dict, id_prefix: str, kind: str, whole, delta):
        busy = self._busy_reason() or self._engine.inference_down
        if busy:
            self._count_rejected("poc_running")
            raise OpenAIError(503, busy, "poc_running", {"Retry-After": str(self._retry_after_s)})
        served = self._engine.served_model_name
        if req.model != served:
            raise OpenAIError(404, f"model {req.model!r} is not served here; GET /v1/models lists {served!r}")
        unavailable = await self._engine.unavailable()
        if unavailable:  # answered within seconds instead of waiting for a replica that may never come
            self._count_rejected("engine_unavailable")
            raise OpenAIError(503, unavailable, headers={"Retry-After": str(self._retry_after_s)})
        request_id = f"{id_prefix}-{uuid.uuid4().hex}"
        chunks = self._engine.generate({**prompt, "sampling": req.sampling(), "request_id": request_id})
        with _engine_failures():
            first = await anext(chunks)  # errors (prompt too long, ...) surface before any byte is sent
        if "error" in first:
            raise OpenAIError(400, first["error"])
        head = {"id": request_id, "created": int(time.time()), "model": served}
        if req.stream:
            return StreamingResponse(self._stream(first, chunks, head, kind + ".chunk" if kind.startswith("chat")
                                                  else kind, delta), media_type="text/event-stream")
        text, last = first["text"], first
        with _engine_failures():
            async for chunk in chunks:
                text, last = text + chunk["text"], chunk
        choice = {"index": 0, **whole(text), "finish_reason": last["finish_reason"]}
        return {**head, "object": kind, "choices": [choice], "usage": _usage(last)}

    def _count_rejected(self, reason: str) -> None:
        if self._metrics:
            self._metrics.record_inference_rejected(reason)

    @staticmethod
    async def _stream(first, chunks, head, kind, delta) -> AsyncIterator[str]:
        async def all_chunks():
            yield first
            async for chunk in chunks:
                yield chunk

        try:
            with _engine_failures():
                async for chunk in all_chunks():
                    if "error" in chunk:
                        raise OpenAIError(400, chunk["error"])
                    body = {**head, "object": kind, "choices": [
                        {"index": 0, **delta(chunk["text"]), "finish_reason": chunk["finish_reason"]}]}
                    yield f"data: {json.dumps(body)}\n\n"
        except OpenAIError as exc:  # the status line is sent: the error goes in the stream
            yield f"data: {json.dumps(exc.body())}\n\n"
        yield "data: [DONE]\n\n"


@contextlib.contextmanager
def _engine_failures() -> Iterator[None]:
    """An engine replica that fails mid-request (died, unreachable) becomes a 503 naming it."""
    try:
        yield
    except OpenAIError:
        raise
    except Exception as exc:
        raise OpenAIError(503, f"inference failed on the engine: {type(exc).__name__}") from exc


def _usage(chunk: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": chunk["prompt_tokens"], "completion_tokens": chunk["completion_tokens"],
            "total_tokens": chunk["prompt_tokens"] + chunk["completion_tokens"]}
