"""The inference layer alone (no Ray, no engine): OpenAI's one error shape for every failure,
streamed or not, and the answers it builds from engine chunks."""

from __future__ import annotations

import asyncio
import json

import pytest

from poc_serve.serve.openai.service import InferenceService
from poc_serve.serve.openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError

MODEL = "poc-tiny-qwen3"


def chunk(text: str, finish: str | None = None, done: int = 1) -> dict:
    return {"text": text, "token_ids": [1], "finish_reason": finish, "prompt_tokens": 3, "completion_tokens": done}


class ChunkEngine:
    """An engine client whose every inference stream is ``chunks`` (an exception raises there)."""

    served_model_name = MODEL
    inference_down = None

    def __init__(self, chunks: list):
        self._chunks = chunks

    async def unavailable(self) -> None:
        return None

    async def generate(self, request: dict):
        for item in self._chunks:
            if isinstance(item, Exception):
                raise item
            yield item


def service(chunks: list, busy: str | None = None) -> InferenceService:
    return InferenceService(ChunkEngine(chunks), busy_reason=lambda: busy, retry_after_s=7)


def completion(**fields) -> CompletionRequest:
    return CompletionRequest(**{"model": MODEL, "prompt": "hi", **fields})


def run(coro):
    return asyncio.run(coro)


async def streamed(response) -> list:
    events = [part async for part in response.body_iterator]
    return [json.loads(e.removeprefix("data: ")) if "[DONE]" not in e else "[DONE]" for e in events]


def test_whole_answer_from_chunks():
    answer = run(service([chunk("Hel"), chunk("lo", "length", 2)]).completion(completion()))
    assert answer["choices"] == [{"index": 0, "text": "Hello", "finish_reason": "length"}]
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    chat = ChatCompletionRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    answer = run(service([chunk("Hi", "stop")]).chat(chat))
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}


@pytest.mark.parametrize("case,status,kind", [
    ("busy", 503, "poc_running"), ("model", 404, "not_found_error"), ("engine error", 400, "invalid_request_error"),
    ("engine died", 503, "service_unavailable")])
def test_errors_have_openais_shape(case, status, kind):
    """Busy node (with Retry-After), unknown model, a request the engine refuses, and an engine
    that fails before the first chunk all answer {"error": {"message", "type", "code"}}."""
    chunks = {"engine error": [{"error": "prompt too long"}], "engine died": [RuntimeError("actor died")]}
    svc = service(chunks.get(case, [chunk("x", "stop")]), busy="PoC is running" if case == "busy" else None)
    with pytest.raises(OpenAIError) as raised:
        run(svc.completion(completion(model="other" if case == "model" else MODEL)))
    body = raised.value.body()
    assert raised.value.status == status
    assert body == {"error": {"message": body["error"]["message"], "type": kind, "code": status}}
    assert body["error"]["message"]
    response = raised.value.response()
    assert response.status_code == status
    assert (response.headers.get("retry-after") == "7") is (case == "busy")


def test_stream_error_after_the_first_chunk_is_an_event_in_the_same_shape():
    """Once the status line is sent, an engine failure arrives as one error event, then [DONE]."""
    async def scenario() -> list:  # one event loop: asyncio.run would close the engine's stream
        response = await service([chunk("a"), RuntimeError("replica died")]).completion(completion(stream=True))
        return await streamed(response)

    events = run(scenario())
    assert events[0]["choices"][0]["text"] == "a"
    assert events[1] == {"error": {"message": "inference failed on the engine: RuntimeError",
                                   "type": "service_unavailable", "code": 503}}
    assert events[-1] == "[DONE]" and len(events) == 3
