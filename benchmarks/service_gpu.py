"""The whole service on GPUs (Ray Serve + vLLM's Ray executor) per layout: correctness of
/validate against the transformers reference, /validate latency, and generation rates read from
/status. Engine-level rates and the transformers baseline: benchmarks/engine_gpu.py (its results
in the same $OUT give this script's summary its ratios).

    python benchmarks/service_gpu.py --phases model,reference,service --layouts tp1,rep2,tp2,pp2 \
        --bench-layouts tp1,rep2

Results: `RESULT {json}` lines, also appended to $OUT/engine_gpu.jsonl; a summary at the end.
Layouts need 1 (tp1) or 2 (rep2, tp2, pp2) GPUs. Skips (exit 0) without CUDA; exits with the
service phase's status (3: a layout did not start).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import threading
import time

from poc_serve.testing.engine_checks import BLOCK_HASH as BH, CHECK_NONCES, PUBLIC_KEY as PK

from shared import OUT, GpuClockSampler, add_model_args, emit, load_reference, phase_model, phase_reference, run_phases

LAYOUTS = {
    "tp1": dict(num_engine_replicas=1, engine=dict(tensor_parallel_size=1)),
    "rep2": dict(num_engine_replicas=2, engine=dict(tensor_parallel_size=1)),
    "tp2": dict(num_engine_replicas=1, engine=dict(tensor_parallel_size=2)),
    "pp2": dict(num_engine_replicas=1, engine=dict(pipeline_parallel_size=2)),
}
R10 = 1.40417


def app_args(model_dir: str, layout: str, engine_overrides: dict) -> dict:
    lay = json.loads(json.dumps(LAYOUTS[layout]))
    engine = dict(max_model_len=2048, max_num_batched_tokens=65536, enforce_eager=False,
                  skip_tokenizer_init=True, **lay.pop("engine"))
    engine.update(engine_overrides)
    return dict(model=model_dir, accelerator="gpu", engine=engine,
                engine_env={"VLLM_USE_FLASHINFER_SAMPLER": "0"}, **lay)


def generation_rate(client, seq_len: int, warmup_s: float, measure_s: float) -> float:
    """Nonces/s of a generating round from /status, after a warm-up: between the first and the
    last change of ``total_checked`` seen while polling every 100 ms (each /status carries the
    round's valid nonces, so faster polling would load the service it measures). An engine call of
    the GPU config takes about a second, so rates over a fixed window are off by up to a call's worth."""
    client.post("/init/generate", json=dict(block_hash=f"bench_{seq_len}", block_height=1, public_key=PK,
                                            r_target=R10, node_id=0, node_count=1, seq_len=seq_len))
    time.sleep(warmup_s)
    changes, last, end = [], None, time.time() + measure_s
    while time.time() < end or (len(changes) < 3 and time.time() < end + 60):
        s = client.get("/status").json()
        if s["total_checked"] != last:  # a batch completed since the previous poll
            changes.append((s["elapsed_seconds"], s["total_checked"]))
            last = s["total_checked"]
        time.sleep(0.1)
    client.post("/stop")
    if len(changes) < 3:
        raise RuntimeError(f"fewer than two batches completed in {measure_s + 60:.0f} s at seq_len {seq_len}")
    (t0, n0), (t1, n1) = changes[1], changes[-1]  # changes[0]: the state found, not a completion
    return (n1 - n0) / (t1 - t0)


def save_start_logs() -> str:
    """Copy Serve's logs and the tail of every Ray worker log to $OUT/start_failure."""
    import ray

    logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    dest = os.path.join(OUT, "start_failure")
    os.makedirs(dest, exist_ok=True)
    if os.path.isdir(os.path.join(logs, "serve")):
        shutil.copytree(os.path.join(logs, "serve"), os.path.join(dest, "serve"), dirs_exist_ok=True)
    for path in glob.glob(os.path.join(logs, "worker-*")):
        with open(path, "rb") as src, open(os.path.join(dest, os.path.basename(path)), "wb") as dst:
            src.seek(max(0, os.path.getsize(path) - 20000))
            dst.write(src.read())
    return dest


def start_service(app, layout: str, timeout_s: float) -> None:
    """``serve.run`` with a deadline. Serve declares a deployment failed only after several failed
    replica starts (six for two replicas, ~90 s each with a GPU engine), and never while one
    replica is still starting; so the benchmark keeps its own deadline. On a failed or late start
    the Ray logs go to $OUT/start_failure, an error line to the results, and the process ends
    with exit status 3."""
    from ray import serve

    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name="poc", route_prefix="/")
        except BaseException as exc:  # reported below, in the benchmark's thread
            errors.append(exc)

    starter = threading.Thread(target=run, daemon=True)
    starter.start()
    starter.join(timeout_s)
    if not errors and not starter.is_alive():
        return
    error = repr(errors[0]) if errors else f"not up in {timeout_s:.0f} s"
    emit({"phase": "service", "layout": layout, "error": error, "logs": save_start_logs()})
    print(f"service {layout} failed to start: {error}", flush=True)
    # Exit at once: a start thread still inside serve.run could block Ray's teardown at exit.
    os._exit(3)


def run_service(a) -> None:
    import httpx
    import ray
    import torch
    from ray import serve

    from poc_serve.app import build_app

    ref = load_reference(a)  # no reference phase: no check
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    client = httpx.Client(base_url="http://127.0.0.1:8000/api/v1/pow", timeout=300)
    for layout in a.layouts.split(","):
        overrides = json.loads(a.service_engine)
        res = {"phase": "service", "layout": layout, "engine": overrides}
        t = time.time()
        start_service(build_app(app_args(a.model_dir, layout, overrides)), layout, a.start_timeout_s)
        res["start_s"] = round(time.time() - t, 1)
        for mode in ("sign_flips", "layer_hooks"):
            client.post("/init/validate", json=dict(block_hash=BH, block_height=1, public_key=PK, r_target=R10,
                                                    seq_len=64, randomization=mode))
            out = client.post("/validate", json=dict(block_hash=BH, block_height=1, public_key=PK,
                                                     nonces=CHECK_NONCES, dist=[0.0] * len(CHECK_NONCES))).json()
            if ref is not None:
                err = (torch.tensor(out["dist"]) - ref[f"64_{mode}"]["dist"]).abs()
                res[f"check_64_{mode}"] = {"max_dist_err": float(err.max()), "mean_dist_err": float(err.mean())}
            res[f"dist_64_{mode}"] = out["dist"][:8]
        body = dict(block_hash=BH, block_height=1, public_key=PK, nonces=list(range(200)), dist=[0.0] * 200)
        times = []
        for _ in range(6):
            t = time.time()
            client.post("/validate", json=body)
            times.append(time.time() - t)
        res["validate_200_s"] = {"median_warm": round(sorted(times[1:])[2], 3), "min": round(min(times), 3)}
        if layout in a.bench_layouts.split(","):
            for seq_len in (64, 256):
                with GpuClockSampler() as clocks:  # GPU 0, over the warm-up and the measurement
                    res[f"rate_{seq_len}"] = round(generation_rate(client, seq_len, a.warmup_s, a.measure_s), 1)
                res[f"gpu_{seq_len}"] = clocks.summary
        emit(res)
        serve.delete("poc")
    serve.shutdown()
    ray.shutdown()


def summary() -> None:
    rows = [json.loads(line) for path in glob.glob(os.path.join(OUT, "*.jsonl")) for line in open(path)]
    base = {r["seq_len"]: r["nonces_per_s"] for r in rows if r["phase"] == "baseline"}
    print("\nSUMMARY (nonces/s; ratio to the transformers baseline)")
    for r in rows:
        if r["phase"] in ("engine", "service"):
            name = r.get("label") or r.get("layout")
            for s in (64, 256):
                if f"rate_{s}" in r and s in base:
                    rate = r[f"rate_{s}"]
                    print(f"  {r['phase']:8s} {name:22s} seq_len {s:3d}: {rate:9.1f}  x{rate / base[s]:.2f}")
    for s, v in sorted(base.items()):
        print(f"  baseline transformers       seq_len {s:3d}: {v:9.1f}")


PHASES = {"model": phase_model, "reference": phase_reference, "service": run_service}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--phases", default="model,reference,service", help=",".join(PHASES))
    p.add_argument("--layouts", default="tp1", help=",".join(LAYOUTS))
    p.add_argument("--bench-layouts", default="tp1", help="layouts whose generation rates are timed")
    p.add_argument("--service-engine", default="{}", help="JSON EngineConfig overrides for every layout")
    p.add_argument("--warmup-s", type=float, default=8)
    p.add_argument("--measure-s", type=float, default=15)
    p.add_argument("--start-timeout-s", type=float, default=480, help="give up on a layout not up by then")
    a = p.parse_args()
    if a.phase:
        return PHASES[a.phase](a)
    status = run_phases(__file__, a.phases)
    summary()
    sys.exit(status)


if __name__ == "__main__":
    main()
