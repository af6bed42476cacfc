"""/status under load during a long v1 round, through the real Serve app on this machine (CPU):
the engine is a stand-in (every nonce valid, a fixed time per call) injected through the engine
deployment's ``engine_factory``, because what is measured is the ingress, not the GPU.

A round runs until ``--valid`` valid nonces are held (500,000 by default: every nonce below that
is valid, to fill the round fast); past them one nonce in ten is valid, about an H200's share at
seq_len 64 (some 800 valid of 8,000 checked a second). Then for
``--seconds`` the generation rate is measured without polling, and again while ``--rps``
GET /status?nonces=false a second come from concurrent clients; the latency percentiles of
those calls and the rate loss are printed as one JSON line.

    .venv/bin/python benchmarks/status_cpu.py [--valid 500000] [--rps 100] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

import httpx
import ray
from ray import serve

from poc_serve.engine.protocol import PoCBatchResult, PoCRound
from poc_serve.serve.config import PoCAppArgs
from poc_serve.app import assemble_app
from poc_serve.testing.stand_in import StandInEngine

V1 = "/api/v1/pow"
PORT = 8000
# Seconds per engine call of 1,024 nonces: 0.25 gives about 8,000 nonces/s over two replicas with
# two calls in flight each, an H200's rate at seq_len 64 (docs/benchmarks.md).
CALL_S = 0.25
# Nonces below this are all valid; past it one in ten (set from --valid in main()).
FILL_NONCES = 500_000


class ValidShareEngine(StandInEngine):
    """After ``CALL_S`` seconds, distance 1.0 (valid at r_target 1.4) for every nonce below
    ``FILL_NONCES`` and every tenth one past it, 2.0 (not valid) for the others."""

    async def compute(self, round: PoCRound, nonces: list[int], return_hidden: bool = False) -> PoCBatchResult:
        await asyncio.sleep(CALL_S)
        return PoCBatchResult(nonces=nonces,
                              distances=[1.0 if n < FILL_NONCES or n % 10 == 0 else 2.0 for n in nonces])


def checked(http: httpx.Client) -> int:
    return http.get(f"{V1}/status", params={"nonces": "false"}).json()["total_checked"]


def rate(http: httpx.Client, seconds: float) -> float:
    """Nonces checked per second over ``seconds``."""
    start, t0 = checked(http), time.monotonic()
    time.sleep(seconds)
    return (checked(http) - start) / (time.monotonic() - t0)


STATUS_GET = f"GET {V1}/status?nonces=false HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


async def get_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One GET /status?nonces=false on a kept-alive connection; raises unless it answers 200."""
    writer.write(STATUS_GET)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)


async def poll(port: int, rps: float, seconds: float, connections: int = 32) -> list[float]:
    """GET /status?nonces=false at ``rps`` a second for ``seconds``, open loop over kept-alive
    connections; each call's latency in s, counted from when it was due (so waiting for a free
    connection counts). A bare asyncio client: httpx's took a whole core of this 2-core machine
    at 100 calls/s, starving the service it measured."""
    free: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []

    async def one(due: float) -> None:
        connection = await free.get()
        await get_status(*connection)
        latencies.append(time.monotonic() - due)
        free.put_nowait(connection)

    calls, t0 = [], time.monotonic()
    for i in range(int(rps * seconds)):
        due = t0 + i / rps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        calls.append(asyncio.create_task(one(due)))
    await asyncio.gather(*calls)
    while not free.empty():
        free.get_nowait()[1].close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--valid", type=int, default=500_000, help="valid nonces held before measuring")
    parser.add_argument("--rps", type=float, default=100.0, help="GET /status calls per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement")
    parser.add_argument("--call-s", type=float, default=CALL_S, help="seconds per engine call of 1,024 nonces")
    args = parser.parse_args()
    # cloudpickle sends the engine class with the globals it reads
    globals().update(CALL_S=args.call_s, FILL_NONCES=args.valid)

    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    app_args = PoCAppArgs(model="stand-in", engine_num_cpus=0, num_engine_replicas=2,
                          engine=dict(max_model_len=64, max_num_batched_tokens=4096, poc_forwards_per_call=4))
    serve.run(assemble_app(app_args, ValidShareEngine.factory), name="status", route_prefix="/")
    base = f"http://127.0.0.1:{PORT}"
    with httpx.Client(base_url=base, timeout=60) as http:
        http.post(f"{V1}/init/generate", json=dict(block_hash="b", block_height=1, public_key="k", r_target=1.4,
                                                   node_id=0, node_count=1, seq_len=16)).raise_for_status()
        t0 = time.monotonic()
        while checked(http) < args.valid:
            time.sleep(1)
        filled_s = time.monotonic() - t0
        quiet = rate(http, args.seconds)
        polled_start, p0 = checked(http), time.monotonic()
        latencies = asyncio.run(poll(PORT, args.rps, args.seconds))
        polled = (checked(http) - polled_start) / (time.monotonic() - p0)
        full_t0 = time.monotonic()
        full = http.get(f"{V1}/status")
        full_s = time.monotonic() - full_t0
        held = http.get(f"{V1}/status", params={"nonces": "false"}).json()["total_valid"]
        http.post(f"{V1}/stop")
    latencies.sort()
    print(json.dumps({
        "benchmark": "status_cpu", "cpus": os.cpu_count(), "valid_share_after_fill": 0.1,
        "valid_nonces_held": held, "fill_s": round(filled_s, 1),
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
