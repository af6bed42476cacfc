"""The part of the engine protocol that every stand-in engine answers alike: what the fast test
layer and the CPU benchmarks inject through the engine deployment's ``engine_factory`` in place
of vLLM. A stand-in subclasses :class:`StandInEngine`, adds the calls it is used for (``compute``,
``compute_artifacts``) and is injected as ``engine_factory=TheClass.factory``; its OpenAI routes
are :class:`StandInOpenAIServer`'s.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class StandInEngine:
    """Starts at once, is always healthy, and describes a 64-token model named ``stand-in``."""

    max_model_len = 64

    @classmethod
    async def factory(cls, config: Any) -> "StandInEngine":
        """An ``engine_factory``: a new stand-in, whatever the engine config says."""
        return cls()

    def model_info(self) -> dict:
        return {"model": "stand-in", "model_path": "/nowhere/stand-in", "hidden_size": 32,
                "max_model_len": self.max_model_len}

    async def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def openai_server(self) -> "StandInOpenAIServer":
        return StandInOpenAIServer(self.model_info()["model"])


class StandInOpenAIServer:
    """The OpenAI routes of a stand-in engine: a completion or chat answer of ``max_tokens`` tokens
    ``t0 t1 ...`` (streamed or not), 404 for another model; the shapes of vLLM's answers, enough
    for the ingress's gate and relay."""

    def __init__(self, model: str):
        self.model = model

    async def handle(self, route: str, body: dict | None = None):
        body = body or {}
        if body.get("model") != self.model:
            yield _json_answer(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                               "type": "NotFoundError", "param": "model", "code": 404}})
            return
        tokens = [f"t{i} " for i in range(int(body.get("max_tokens") or 3))]
        chat = route == "/v1/chat/completions"
        usage = {"prompt_tokens": 1, "completion_tokens": len(tokens), "total_tokens": 1 + len(tokens)}
        if not body.get("stream"):
            choice = ({"message": {"role": "assistant", "content": "".join(tokens)}} if chat
                      else {"text": "".join(tokens)})
            yield _json_answer(200, {"id": "stand-in", "object": "chat.completion" if chat else "text_completion",
                                     "model": self.model, "usage": usage,
                                     "choices": [{"index": 0, **choice, "finish_reason": "length"}]})
            return
        yield {"status": 200, "stream": True, "media_type": "text/event-stream"}
        for token in tokens:
            await asyncio.sleep(0.01)
            delta = {"delta": {"content": token}} if chat else {"text": token}
            chunk = {"id": "stand-in", "model": self.model, "choices": [{"index": 0, **delta, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"


def _json_answer(status: int, answer: dict) -> dict:
    """A non-streamed answer as OpenAIServer.handle gives it: one item with the JSON bytes."""
    return {"status": status, "stream": False, "media_type": "application/json", "body": json.dumps(answer).encode()}
