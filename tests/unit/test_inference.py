"""The ingress's inference gate and relay (poc_serve/serve/openai/service.py) over an engine client
whose answers the test writes: what is refused before an engine is asked (PoC running, inference
down, no engine ready, no JSON object) in vLLM's error shape, and how an engine's answer comes
back (JSON with its status, SSE chunks, a failure before or after the first chunk)."""

from __future__ import annotations

import asyncio
import json

import pytest

from poc_serve.engine.vllm_args import ServingRequest
from poc_serve.engine.config import EngineConfig
from poc_serve.serve.openai.protocol import OpenAIError
from poc_serve.serve.openai.service import InferenceService

MODEL = "poc-tiny-qwen3"


def answered(answer: dict, status: int = 200) -> dict:
    """A non-streamed answer as an engine replica gives it: one item with the JSON bytes."""
    return {"status": status, "stream": False, "media_type": "application/json", "body": json.dumps(answer).encode()}


STREAM = {"status": 200, "stream": True, "media_type": "text/event-stream"}


class ScriptedEngine:
    """An engine client whose every OpenAI answer is ``items`` (an exception raises there)."""

    def __init__(self, items: list, unavailable: str | None = None, down: str | None = None):
        self._items = items
        self._unavailable = unavailable
        self.inference_down = down
        self.serving = ServingRequest(model=MODEL, engine=EngineConfig(model=MODEL, served_model_name=[MODEL, "alias"]))
        self.asked: list[tuple[str, dict]] = []

    async def unavailable(self) -> str | None:
        return self._unavailable

    async def openai(self, route: str, body: dict):
        self.asked.append((route, body))
        for item in self._items:
            if isinstance(item, Exception):
                raise item
            yield item


def service(engine: ScriptedEngine, busy: str | None = None) -> InferenceService:
    return InferenceService(engine, busy_reason=lambda: busy, retry_after_s=7)


BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def test_models_lists_the_served_name_first():
    data = service(ScriptedEngine([])).models()["data"]
    assert [m["id"] for m in data] == [MODEL, "alias"] and data[0]["owned_by"] == "vllm"


def test_an_engines_json_answer_keeps_its_status():
    engine = ScriptedEngine([answered({"error": {"message": "no model x", "code": 404}}, status=404)])
    answer = asyncio.run(service(engine).answer("/v1/chat/completions", BODY))
    assert answer.status_code == 404 and json.loads(answer.body)["error"]["message"] == "no model x"
    assert engine.asked == [("/v1/chat/completions", BODY)]


@pytest.mark.parametrize("case", ["busy", "down", "unavailable", "not an object", "engine died"])
def test_refusals_have_vllms_shape(case):
    engine = ScriptedEngine([RuntimeError("actor died")] if case == "engine died" else [answered({})],
                            unavailable="loading x" if case == "unavailable" else None,
                            down="inference is down" if case == "down" else None)
    body = [1, 2] if case == "not an object" else BODY
    with pytest.raises(OpenAIError) as raised:
        asyncio.run(service(engine, busy="PoC is running" if case == "busy" else None).answer(
            "/v1/chat/completions", body))
    error = raised.value.body()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    status = 400 if case == "not an object" else 503
    assert raised.value.status == error["code"] == status
    assert (raised.value.response().headers.get("retry-after") == "7") is (case in ("busy", "down", "unavailable"))
    assert not engine.asked or case == "engine died"


def test_tokenize_is_not_refused_while_poc_runs():
    engine = ScriptedEngine([answered({"count": 2, "tokens": [1, 2]})])
    answer = asyncio.run(service(engine, busy="PoC is running").answer("/tokenize", {"model": MODEL, "prompt": "a"}))
    assert answer.status_code == 200


def test_stream_error_after_the_first_chunk_is_an_event_in_the_same_shape():
    """Once the status line is sent, an engine failure arrives as one error event, then [DONE]."""
    async def scenario() -> list:
        response = await service(ScriptedEngine([STREAM, 'data: {"a": 1}\n\n', RuntimeError("replica died")])).answer(
            "/v1/completions", BODY)
        return [part async for part in response.body_iterator]

    events = asyncio.run(scenario())
    assert events[0] == 'data: {"a": 1}\n\n'
    assert json.loads(events[1].removeprefix("data: ")) == {"error": {
        "message": "inference failed on the engine: RuntimeError", "type": "ServiceUnavailableError", "param": None,
        "code": 503}}
    assert events[-1] == "data: [DONE]\n\n" and len(events) == 3
