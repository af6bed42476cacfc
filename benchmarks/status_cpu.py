"""/status under load during a long v1 round, through the real Serve app on this machine (CPU):
the engine is a stand-in (every nonce valid, a fixed time per call) injected through the engine
deployment's ``engine_factory``, because what is measured is the ingress, not the GPU.

A round runs until ``--valid`` valid nonces are held (500,000 by default), then for
``--seconds`` the generation rate is measured without polling, and again while ``--rps``
GET /status?nonces=false a second come from concurrent clients; the latency percentiles of
those calls and the rate loss are printed as one JSON line.

    .venv/bin/python benchmarks/status_cpu.py [--valid 500000] [--rps 100] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
import ray
from ray import serve

from poc_serve.app import engine_deployment_options
from poc_serve.engine.protocol import PoCBatchResult, PoCRound
from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.engine_deployment import PoCEngineDeployment
from poc_serve.serve.ingress import PoCIngress

V1 = "/api/v1/pow"
# Seconds per engine call of 1,024 nonces: 0.25 gives about 8,000 nonces/s over two replicas with
# two calls in flight each, an H200's rate at seq_len 64 (docs/benchmarks.md).
CALL_S = 0.25


class AllValidEngine:
    """Distance 1.0 for every nonce after ``CALL_S`` seconds: every nonce is valid at r_target 1.4."""

    max_model_len = 64

    async def compute(self, round: PoCRound, nonces: list[int], return_hidden: bool = False) -> PoCBatchResult:
        await asyncio.sleep(CALL_S)
        return PoCBatchResult(nonces=nonces, distances=[1.0] * len(nonces))

    def model_info(self) -> dict:
        return {"model": "stand-in", "model_path": "/nowhere", "hidden_size": 32, "max_model_len": 64}

    async def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


async def all_valid_engine(config) -> AllValidEngine:
    return AllValidEngine()


def checked(http: httpx.Client) -> int:
    return http.get(f"{V1}/status", params={"nonces": "false"}).json()["total_checked"]


def rate(http: httpx.Client, seconds: float) -> float:
    """Nonces checked per second over ``seconds``."""
    start, t0 = checked(http), time.monotonic()
    time.sleep(seconds)
    return (checked(http) - start) / (time.monotonic() - t0)


async def poll(base: str, rps: float, seconds: float) -> list[float]:
    """GET /status?nonces=false at ``rps`` a second for ``seconds``; each call's latency in s."""
    latencies: list[float] = []

    async def one(http: httpx.AsyncClient) -> None:
        t0 = time.monotonic()
        answer = await http.get(f"{V1}/status", params={"nonces": "false"})
        answer.raise_for_status()
        latencies.append(time.monotonic() - t0)

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        calls, t0 = [], time.monotonic()
        for i in range(int(rps * seconds)):
            await asyncio.sleep(max(0.0, t0 + i / rps - time.monotonic()))
            calls.append(asyncio.create_task(one(http)))
        await asyncio.gather(*calls)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--valid", type=int, default=500_000, help="valid nonces held before measuring")
    parser.add_argument("--rps", type=float, default=100.0, help="GET /status calls per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement")
    parser.add_argument("--call-s", type=float, default=CALL_S, help="seconds per engine call of 1,024 nonces")
    args = parser.parse_args()
    globals()["CALL_S"] = args.call_s  # cloudpickle sends the engine class with the globals it reads

    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    app_args = PoCAppArgs(model="stand-in", engine_num_cpus=0, num_engine_replicas=2,
                          engine=dict(max_model_len=64, max_num_batched_tokens=4096, poc_forwards_per_call=4))
    engine = PoCEngineDeployment.options(**engine_deployment_options(app_args)).bind(
        app_args.engine, engine_factory=all_valid_engine)
    ingress = PoCIngress.options(ray_actor_options={"num_cpus": 0}).bind(engine, app_args)
    serve.run(ingress, name="status", route_prefix="/")
    base = "http://127.0.0.1:8000"
    with httpx.Client(base_url=base, timeout=60) as http:
        http.post(f"{V1}/init/generate", json=dict(block_hash="b", block_height=1, public_key="k", r_target=1.4,
                                                   node_id=0, node_count=1, seq_len=16)).raise_for_status()
        t0 = time.monotonic()
        while checked(http) < args.valid:
            time.sleep(1)
        filled_s = time.monotonic() - t0
        quiet = rate(http, args.seconds)
        polled_start, p0 = checked(http), time.monotonic()
        latencies = asyncio.run(poll(base, args.rps, args.seconds))
        polled = (checked(http) - polled_start) / (time.monotonic() - p0)
        full_t0 = time.monotonic()
        full = http.get(f"{V1}/status")
        full_s = time.monotonic() - full_t0
        held = http.get(f"{V1}/status", params={"nonces": "false"}).json()["total_valid"]
        http.post(f"{V1}/stop")
    latencies.sort()
    print(json.dumps({
        "benchmark": "status_cpu", "valid_nonces_held": held, "fill_s": round(filled_s, 1),
        "status_rps": args.rps, "status_calls": len(latencies),
        "latency_ms": {"p50": round(1e3 * statistics.median(latencies), 2),
                       "p99": round(1e3 * latencies[int(0.99 * (len(latencies) - 1))], 2),
                       "max": round(1e3 * latencies[-1], 2)},
        "rate_quiet_per_s": round(quiet), "rate_polled_per_s": round(polled),
        "rate_loss": round(1 - polled / quiet, 4),
        "full_status_s": round(full_s, 3), "full_status_bytes": len(full.content)}))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
