"""The network's use of a node, on one GPU, through the whole service (`serve run` with the GPU
config): inference as the network sends it, its speed against the engine called directly, a
stream beside the start of a v2 round, the early share, and the model switch.

Phases, each in a process of its own (GPU memory is free between them):

* ``direct``: one engine (PoCEngine and vLLM's serving classes over it, as an engine replica runs
  it) called without Ray or HTTP, at each ``--concurrency`` (benchmarks/inference_speed.py);
* ``service``: the service with deploy/serve_config.gpu.yaml's args (the model replaced by the
  built-in random one, the hermes tool parser on), then the ``--parts``:
  ``inference`` (spec ml-node.md 5.2 streamed and not, a forced tool call, an ``enforced_tokens``
  replay alone and beside 64 requests, with the network's similarity), ``speed`` (the same
  concurrencies over HTTP; the ratio to ``direct``'s figures in the same $OUT), ``early`` (a
  stream started 1 s before a v2 ``init/generate`` at seq_len 1024, and the early share), and
  ``switch`` (``inference/up`` to ``--switch-to`` and back, and what the engine logs say the time
  went on).

    python benchmarks/network_gpu.py --phases direct,service --parts inference,speed
    python benchmarks/network_gpu.py --phases service --parts early,switch

Results: ``RESULT {json}`` lines, also appended to $OUT/network_gpu.jsonl; engine log lines on
load times in the ``switch`` result. Skips (exit 0) without CUDA.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

import httpx
import psutil
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.early_share import early_share  # noqa: E402
from benchmarks.inference_speed import bodies, engine_direct, through_service  # noqa: E402
from benchmarks.process_profile import profiled  # noqa: E402
from benchmarks.shared import OUT, ROOT, emit, run_phases  # noqa: E402
from tests.support.network_requests import (WEATHER_TOOL, enforced, logprobs_problem, network_body,  # noqa: E402
                                            post, stream_chat)

RESULTS = "network_gpu.jsonl"
# Log lines that say where a model load's time went (the engine replica's and vLLM's).
LOAD_LOG = re.compile(r"(engine replica: |vLLM's engine built in|Loading weights took|Model loading took|"
                      r"torch\.compile takes|Compiling a graph|Graph capturing finished|init engine .* took|"
                      r"Using .* backend|Using FlashAttention|Available KV cache memory|Memory profiling takes|"
                      r"Dynamo bytecode transform time)")


def app_args(a) -> dict:
    args = yaml.safe_load(open(os.path.join(ROOT, a.config)))["applications"][0]["args"]
    args["model"] = a.model
    args["engine"].update(tool_call_parser="hermes", enable_auto_tool_choice=True)
    return args


# --- phases ---------------------------------------------------------------------------------------


def phase_direct(a) -> None:
    from poc_serve.engine.config import EngineConfig

    engine = app_args(a)["engine"]
    config = EngineConfig(model=a.model, **engine)
    batches = [bodies(a.model, n, a.max_tokens) for n in a.concurrency]
    around = profiler(a, "direct", lambda: ({"benchmark": os.getpid()}, {}))
    for n, (seconds, tokens, answered) in zip(a.concurrency, asyncio.run(engine_direct(config, batches, around))):
        emit({"part": "direct", "model": a.model, "concurrency": n, "max_tokens": a.max_tokens,
              "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2), "answered": answered,
              "date": time.strftime("%Y-%m-%d")}, file=RESULTS)


def phase_service(a) -> None:
    import ray
    from ray import serve

    from poc_serve.app import build_app
    from tests.support.dapi import Dapi
    from tests.support.net import free_port

    ray.init(include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    serve.run(build_app(app_args(a)), name="poc", route_prefix="/")
    dapi = Dapi(base, a.model)
    while dapi.get("/health", timeout=30).status_code != 200:
        time.sleep(0.5)
    emit({"part": "start", "model": a.model, "load_s": round(time.monotonic() - started, 1)}, file=RESULTS)
    parts = {"inference": part_inference, "speed": part_speed, "early": part_early, "switch": part_switch}
    for name in a.parts.split(","):
        try:
            parts[name](a, base)
        except Exception as exc:  # one part's failure is a result; the next part still runs
            emit({"part": name, "error": f"{type(exc).__name__}: {exc}"}, file=RESULTS)
    emit({"part": "engine_log", "lines": engine_log_lines()[-60:]}, file=RESULTS)
    serve.shutdown()
    ray.shutdown()


# --- parts of the service phase -------------------------------------------------------------------


def part_inference(a, base: str) -> None:
    from poc_serve.logprob_similarity import logprob_similarity, passes

    plain = post(base, "/v1/chat/completions", network_body(a.model))
    body = plain.json()
    content = body["choices"][0]["logprobs"]["content"]
    streamed = stream_chat(base, network_body(a.model, stream=True, stream_options={"include_usage": True}))
    emit({"part": "network_shape", "status": [plain.status_code, streamed["status"]],
          "logprobs_problem": [logprobs_problem(content), logprobs_problem(streamed["content"])],
          "usage": [body["usage"], streamed["usage"]], "stream_done": streamed["done"],
          "token_ids_match": body["choices"][0].get("token_ids") == [int(c["token"]) for c in content],
          "first_tokens": [c["token"] for c in content[:5]]}, file=RESULTS)

    forced = post(base, "/v1/chat/completions", {
        **network_body(a.model, "What is the weather in Paris?", max_tokens=64), "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    message = forced.json()["choices"][0]["message"] if forced.status_code == 200 else forced.json()
    emit({"part": "forced_tool_call", "status": forced.status_code,
          "tool_calls": message.get("tool_calls"), "content": (message.get("content") or "")[:200]}, file=RESULTS)

    for mode in ("processed_logprobs", "raw_logprobs"):
        story = network_body(a.model, "Tell a long story.", logprobs_mode=mode, temperature=0.7, max_tokens=128)
        original = post(base, "/v1/chat/completions", story).json()["choices"][0]["logprobs"]["content"]
        replay = {**story, "seed": 7, "enforced_tokens": enforced(original)}
        alone = post(base, "/v1/chat/completions", replay).json()["choices"][0]["logprobs"]["content"]

        async def beside_others() -> list[dict]:
            others = bodies(a.model, 64, 256)
            async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=80)) as http:
                answers = await asyncio.gather(*(http.post(f"{base}/v1/chat/completions", json=b)
                                                 for b in [*others[:32], replay, *others[32:]]))
            return answers[32].json()["choices"][0]["logprobs"]["content"]

        busy = asyncio.run(beside_others())
        sims = [logprob_similarity(original, got) for got in (alone, busy)]
        emit({"part": "enforced_replay", "mode": mode, "positions": len(original),
              "tokens_equal": [[c["token"] for c in got[:len(original)]] == [c["token"] for c in original]
                               for got in (alone, busy)],
              "similarity_alone": round(sims[0], 6), "similarity_beside_64": round(sims[1], 6),
              "passes": [passes(s) for s in sims],
              "max_abs_logprob_diff": [round(max(abs(x["logprob"] - y["logprob"]) for x, y in zip(original, got)), 6)
                                       for got in (alone, busy)]}, file=RESULTS)


def part_speed(a, base: str) -> None:
    direct = {}
    path = os.path.join(OUT, RESULTS)
    for line in open(path) if os.path.exists(path) else ():
        row = json.loads(line)
        if row.get("part") == "direct" and row.get("model") == a.model:
            direct[row["concurrency"]] = row["tokens_per_s"]
    around = profiler(a, "service", lambda: (serve_processes(), {"client": os.getpid()}))
    for n in a.concurrency:
        seconds, tokens, answered = asyncio.run(through_service(base, bodies(a.model, n, a.max_tokens), around))
        rate = tokens / seconds
        emit({"part": "speed", "model": a.model, "concurrency": n, "max_tokens": a.max_tokens,
              "service_tokens_per_s": round(rate, 1), "engine_direct_tokens_per_s": direct.get(n),
              "ratio": round(rate / direct[n], 3) if n in direct else None, "answered": answered,
              "date": time.strftime("%Y-%m-%d")}, file=RESULTS)


def part_early(a, base: str) -> None:
    stream: dict = {}
    body = network_body(a.model, "Tell a very long story.", stream=True, max_tokens=a.stream_tokens,
                        ignore_eos=True,
                        stream_options={"include_usage": True})
    streamer = threading.Thread(target=lambda: stream.update(stream_chat(base, body)))
    streamer.start()
    time.sleep(1.0)
    init_at = time.monotonic()
    result = early_share(base, a.model, a.seq_len, a.early_seconds, 60.0)
    streamer.join()
    emit({"part": "stream_before_init", "status": stream["status"], "done": stream["done"],
          "completion_tokens": (stream["usage"] or {}).get("completion_tokens"),
          "ended_s_after_init": round(stream["started"] + stream["seconds"] - init_at, 2),
          "max_gap_s": round(stream["max_gap_s"], 3), "chunks": stream["chunks"]}, file=RESULTS)
    emit({"part": "early_share", **result}, file=RESULTS)


def part_switch(a, base: str) -> None:
    from tests.support.dapi import Dapi

    for model in (a.switch_to, a.model):
        dapi = Dapi(base, model, timeout=900)
        lines_before = len(engine_log_lines())
        started = time.monotonic()
        outcome, answer = dapi.inference_up_command([])
        up_s = time.monotonic() - started
        while dapi.get("/health", timeout=30).status_code != 200:
            time.sleep(0.2)
        chat = post(base, "/v1/chat/completions", network_body(model))
        emit({"part": "switch", "to": model, "outcome": outcome,
              "up_status": answer.status_code if answer is not None else None,
              "up_s": round(up_s, 1), "health_200_s": round(time.monotonic() - started, 1),
              "chat_after": chat.status_code, "state": dapi.get("/api/v1/state").json().get("state"),
              "load_log": engine_log_lines()[lines_before:]}, file=RESULTS)


def profiler(a, phase: str, roots: Callable[[], tuple[dict[str, int], dict[str, int]]]
             ) -> Callable[[int], ContextManager]:
    """The ``around`` of engine_direct and through_service: with ``--profile``, where the CPU time
    of the process trees and single processes ``roots()`` (each name: pid) goes at each
    concurrency (benchmarks/process_profile.py), emitted as a ``profile`` result; without it,
    nothing."""
    @contextmanager
    def around(n: int) -> Iterator[None]:
        if not a.profile:
            yield
            return
        with profiled(f"{phase}-{n}", *roots()) as result:
            yield
        emit({"part": "profile", **result}, file=RESULTS)
    return around


def serve_processes() -> dict[str, int]:
    """The pids of Serve's proxy, the ingress and the engine replicas on this machine, found by the
    titles Ray gives its actors' processes (``ray::ServeReplica:<app>:<deployment>``)."""
    roots = {}
    for process in psutil.process_iter(["cmdline"]):
        title = (process.info["cmdline"] or [""])[0]
        name = title.rsplit(":", 1)[-1].strip()
        if title.startswith("ray::") and name in ("ProxyActor", "PoCIngress", "PoCEngineDeployment"):
            roots[name if name not in roots else f"{name}-{process.pid}"] = process.pid
    return roots


def engine_log_lines() -> list[str]:
    """vLLM's lines on load times and kernels from this Ray session's worker logs, in file order."""
    import ray

    logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    found = []
    for path in sorted(glob.glob(os.path.join(logs, "worker-*")) + glob.glob(os.path.join(logs, "serve", "*.log"))):
        with open(path, errors="replace") as f:
            found += [line.strip()[-240:] for line in f if LOAD_LOG.search(line)]
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--phases", default="direct,service")
    p.add_argument("--parts", default="inference,speed,early,switch")
    p.add_argument("--config", default="deploy/serve_config.gpu.yaml",
                   help="Serve config whose first application's args run (serve_config.yaml: a CPU dry run)")
    p.add_argument("--model", default="poc-qwen3-0.6b-random")
    p.add_argument("--switch-to", default="poc-qwen3-30b-a3b-8l-random")
    p.add_argument("--concurrency", type=lambda s: [int(n) for n in s.split(",")], default=[64, 256])
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--early-seconds", type=float, default=90.0)
    p.add_argument("--stream-tokens", type=int, default=2048)
    p.add_argument("--profile", action="store_true",
                   help="speed: CPU seconds per thread (and py-spy stacks where py-spy is on PATH) of the engine, "
                        "Serve's processes and the client at each concurrency")
    a = p.parse_args()
    if a.phase:
        return {"direct": phase_direct, "service": phase_service}[a.phase](a)
    sys.exit(run_phases(__file__, a.phases))


if __name__ == "__main__":
    main()
