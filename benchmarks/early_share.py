"""Early share (spec ml-node.md 6.3): seconds from a v2 ``init/generate`` to the first
``/generated`` callback, and the artifacts/s over the first minute beside the steady rate; and
``GET /api/v1/state``'s latency while the round generates (polled 5 times a second).

Runs the service as ``serve run`` would with a Serve config's application args (default:
serve_config.yaml's, the embedded default model on CPU; pass deploy/serve_config.gpu.yaml on a
GPU machine), waits for the model to be served, then starts a v2 round the way the network's node
software does (re-sent every second until ``status`` says GENERATING, no Content-Type) with a
local receiver, and records when each callback arrives and how many artifacts it carries.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/early_share.py --seq-len 1024 --seconds 90
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import ray
import yaml
from ray import serve

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.shared import emit  # noqa: E402
from poc_serve.app import build_app  # noqa: E402
from tests.support.dapi import Dapi  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.receiver import CallbackReceiver  # noqa: E402


def early_share(base: str, model: str, seq_len: int, seconds: float, steady_from: float) -> dict:
    """Start a v2 round on the service at ``base`` as the network's node software does, let it
    run ``seconds``, stop it; when each callback came, the rates, and /api/v1/state's latency."""
    arrivals: list[tuple[float, int]] = []
    state_ms: list[float] = []
    with CallbackReceiver() as receiver:
        init = {"block_hash": "early", "block_height": 1, "public_key": "k", "node_id": 0, "node_count": 1,
                "params": {"model": model, "seq_len": seq_len}, "url": receiver.url}
        t0 = time.monotonic()
        done = threading.Event()

        def watch() -> None:
            seen = 0
            while not done.is_set():
                bodies = receiver.bodies("/generated")
                for b in bodies[seen:]:
                    arrivals.append((time.monotonic() - t0, len(b["artifacts"])))
                seen = len(bodies)
                time.sleep(0.05)

        def poll_state() -> None:
            poller = Dapi(base, model)
            while not done.is_set():
                asked = time.monotonic()
                assert poller.get("/api/v1/state").status_code == 200
                state_ms.append(1000 * (time.monotonic() - asked))
                time.sleep(max(0.0, 0.2 - (time.monotonic() - asked)))

        dapi = Dapi(base, model)
        watcher, poller = threading.Thread(target=watch), threading.Thread(target=poll_state)
        watcher.start()
        poller.start()
        inits = dapi.start_poc(init, every_s=1.0)
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        dapi.post("/api/v1/inference/pow/stop", {})
        done.set()
        watcher.join()
        poller.join()
    state_ms.sort()
    first_minute = sum(n for t, n in arrivals if t <= 60.0)
    steady = sum(n for t, n in arrivals if t > steady_from)
    steady_s = seconds - steady_from
    return {"bench": "early_share", "model": model, "seq_len": seq_len, "init_generate_calls": inits,
            "first_callback_s": round(arrivals[0][0], 2) if arrivals else None,
            "callback_times_s": [round(t, 1) for t, _ in arrivals[:12]],
            "artifacts_per_s_first_minute": round(first_minute / 60.0, 1),
            "artifacts_per_s_steady": round(steady / steady_s, 1) if steady_s > 0 else None,
            "state_ms_p50": round(state_ms[len(state_ms) // 2], 1),
            "state_ms_p99": round(state_ms[int(len(state_ms) * 0.99)], 1), "state_polls": len(state_ms),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="serve_config.yaml", help="Serve config whose first application's args run")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=90.0, help="how long the round runs")
    p.add_argument("--steady-from", type=float, default=60.0, help="the steady rate is counted from this second")
    a = p.parse_args()
    args = yaml.safe_load(open(a.config))["applications"][0]["args"]
    ray.init(include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    started = time.monotonic()
    serve.run(build_app(args), name="poc", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    dapi = Dapi(base, args["model"])
    while dapi.get("/health", timeout=30).status_code != 200:
        time.sleep(0.5)
    load_s = time.monotonic() - started
    result = early_share(base, args["model"], a.seq_len, a.seconds, a.steady_from)
    emit({**result, "config": a.config, "load_s": round(load_s, 1)}, file="early_share.jsonl")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
