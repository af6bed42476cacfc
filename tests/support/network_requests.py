"""The inference requests the network's host sends a node (shared/spec/ml-node.md 5.2 and 5.5),
and the checks on their answers, for the e2e tests and benchmarks/network_gpu.py."""

from __future__ import annotations

import json
import re
import time

import httpx

# A token given as its id, as the network asks for it (the host parses it back to an integer).
TOKEN_ID = re.compile(r"^(0|[1-9][0-9]*)$")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def network_body(model: str, content: str = "Name three colors.", max_tokens: int = 32, **overrides) -> dict:
    """The body the network's host sends (spec 5.2), keys as Go's json.Marshal writes them."""
    body = {"logprobs": True, "logprobs_mode": "processed_logprobs", "max_completion_tokens": max_tokens,
            "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}], "model": model,
            "return_token_ids": True, "seed": 4187, "skip_special_tokens": False, "stream": False, "top_logprobs": 5}
    return {**body, **overrides}


def post(base: str, path: str, body: dict, timeout: float = 300) -> httpx.Response:
    """As the network's host posts it: compact JSON, a version segment before the path."""
    return httpx.post(f"{base}/v3.0.8{path}", content=json.dumps(body, separators=(",", ":")), timeout=timeout,
                      headers={"content-type": "application/json"})


def stream_chat(base: str, body: dict, timeout: float = 300) -> dict:
    """A streamed chat as the network's host reads it: the answer's status and content type, its
    content's logprobs, usage, whether it ended with [DONE], and when its chunks came (seconds from
    the request: ``seconds`` to the last, ``max_gap_s`` the longest wait between two)."""
    content, usage, times, lines = [], None, [], []
    started = time.monotonic()
    with httpx.stream("POST", f"{base}/v3.0.8/v1/chat/completions", json=body, timeout=timeout) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: "):
                times.append(time.monotonic() - started)
                lines.append(line)
    for line in lines[:-1]:
        chunk = json.loads(line.removeprefix("data: "))
        for choice in chunk.get("choices") or ():
            content += (choice.get("logprobs") or {}).get("content") or []
        usage = chunk.get("usage") or usage
    gaps = [b - t for t, b in zip(times, times[1:])]
    return {"status": answer.status_code, "content_type": answer.headers.get("content-type", ""),
            "done": bool(lines) and lines[-1] == "data: [DONE]", "content": content, "usage": usage,
            "started": started, "seconds": times[-1] if times else None, "max_gap_s": max(gaps) if gaps else None,
            "chunks": len(lines)}


def logprobs_problem(content: list[dict]) -> str | None:
    """What in an answer's logprobs the network could not use (None: nothing): each token and each
    of its 5 top_logprobs an id, with the id's bytes."""
    if not content:
        return "no logprobs"
    for position, item in enumerate(content):
        for token in (item, *item["top_logprobs"]):
            if not TOKEN_ID.match(token["token"]) or token["bytes"] != list(token["token"].encode()):
                return f"position {position}: {token['token']!r} with bytes {token['bytes']} is not a token id"
        if len(item["top_logprobs"]) != 5:
            return f"position {position}: {len(item['top_logprobs'])} top_logprobs, not 5"
    return None


def enforced(content: list[dict]) -> dict:
    """A validator's ``enforced_tokens`` replaying an answer's logprobs (spec 5.5)."""
    return {"tokens": [{"token": c["token"], "top_tokens": [t["token"] for t in c["top_logprobs"]]} for c in content]}
