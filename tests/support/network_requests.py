"""The inference requests the network's host sends a node (shared/spec/ml-node.md 5.2 and 5.5),
and the checks on their answers, for the e2e tests and benchmarks/network_gpu.py."""

from __future__ import annotations

import json
import re

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


def post(base: str, path: str, body: dict, timeout: float = 600) -> httpx.Response:
    """As the network's host posts it: compact JSON, a version segment before the path."""
    return httpx.post(f"{base}/v3.0.8{path}", content=json.dumps(body, separators=(",", ":")), timeout=timeout,
                      headers={"content-type": "application/json"})


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
