"""Inference through the service against the same engine called directly, at N concurrent
network-shaped chat requests (spec ml-node.md 5.2: logprobs, 5 top_logprobs, seed, token ids).

Phase 1 builds one engine (PoCEngine, vLLM's serving classes over it: what an engine replica
runs) and calls its OpenAIServer directly; phase 2 deploys the service (one engine replica, the
same engine config) and sends the same requests over HTTP. Output tokens/s of each, their ratio,
and whether every request was answered. On a GPU, benchmarks/network_gpu.py runs the same two
measurements (:func:`engine_direct`, :func:`through_service`) with the GPU config.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/inference_speed.py --concurrency 64 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from contextlib import nullcontext
from typing import Callable, ContextManager

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.shared import emit  # noqa: E402

MODEL = "poc-tiny-qwen3"
ENGINE = dict(max_model_len=1024, max_num_batched_tokens=8192, max_poc_forward_size=256)


def bodies(model: str, n: int, max_tokens: int) -> list[dict]:
    """``n`` chat requests as the network sends them, each of exactly ``max_tokens`` tokens."""
    return [{"logprobs": True, "logprobs_mode": "processed_logprobs", "max_completion_tokens": max_tokens,
             "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"Tell me about item {i}."}],
             "model": model, "return_token_ids": True, "seed": 1000 + i, "skip_special_tokens": False,
             "stream": False, "top_logprobs": 5, "ignore_eos": True} for i in range(n)]


async def engine_direct(engine_config, batches: list[list[dict]],
                        around: Callable[[int], ContextManager] = lambda n: nullcontext()
                        ) -> list[tuple[float, int, int]]:
    """(seconds, output tokens, requests answered) of each batch of requests sent at once to the
    OpenAIServer of one engine built from ``engine_config`` (no Ray, no HTTP); each batch's timed
    part runs inside ``around(len(batch))``."""
    from poc_serve.engine.engine import PoCEngine

    engine = PoCEngine(engine_config)
    await engine.start()
    server = engine.openai_server()

    async def one(body: dict) -> int:
        [answer] = [item async for item in server.handle("/v1/chat/completions", body)]
        return json.loads(answer["body"])["usage"]["completion_tokens"] if answer["status"] == 200 else -1

    results = []
    for requests in batches:
        await one(requests[0])  # warm-up
        with around(len(requests)):
            started = time.monotonic()
            tokens = await asyncio.gather(*(one(b) for b in requests))
        results.append((time.monotonic() - started, sum(t for t in tokens if t > 0), sum(t > 0 for t in tokens)))
    engine.shutdown()
    return results


async def through_service(base: str, requests: list[dict],
                          around: Callable[[int], ContextManager] = lambda n: nullcontext()) -> tuple[float, int, int]:
    """(seconds, output tokens, requests answered) of ``requests`` sent at once over HTTP, the
    timed part inside ``around(len(requests))``."""
    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=len(requests))) as http:
        async def one(body: dict) -> int:
            answer = await http.post(f"{base}/v1/chat/completions", json=body)
            return answer.json()["usage"]["completion_tokens"] if answer.status_code == 200 else -1

        await one(requests[0])
        with around(len(requests)):
            started = time.monotonic()
            tokens = await asyncio.gather(*(one(b) for b in requests))
        return time.monotonic() - started, sum(t for t in tokens if t > 0), sum(t > 0 for t in tokens)


def main() -> None:
    import ray
    from ray import serve

    from poc_serve.app import build_app
    from poc_serve.engine.config import EngineConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    a = p.parse_args()
    requests = bodies(MODEL, a.concurrency, a.max_tokens)
    [(direct_s, direct_tokens, direct_ok)] = asyncio.run(engine_direct(EngineConfig(model=MODEL, **ENGINE),
                                                                       [requests]))
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    serve.run(build_app({"model": MODEL, "engine": ENGINE, "engine_num_cpus": 0}), name="bench", route_prefix="/")
    service_s, service_tokens, service_ok = asyncio.run(through_service("http://127.0.0.1:8123", requests))
    serve.shutdown()
    ray.shutdown()
    direct, service = direct_tokens / direct_s, service_tokens / service_s
    emit({"bench": "inference_cpu", "model": MODEL, "concurrency": a.concurrency, "max_tokens": a.max_tokens,
          "engine_direct_tokens_per_s": round(direct, 1), "service_tokens_per_s": round(service, 1),
          "ratio": round(service / direct, 3), "answered": [direct_ok, service_ok], "cpus": os.cpu_count(),
          "date": time.strftime("%Y-%m-%d")}, file="inference_cpu.jsonl")


if __name__ == "__main__":
    main()
