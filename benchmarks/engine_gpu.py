"""Engine-level PoC check and benchmark on a GPU: correctness against transformers, throughput.

Phases run in subprocesses so GPU memory is free between them; each prints `RESULT {json}` and
appends it to $OUT/engine_gpu.jsonl (or ./engine_gpu.jsonl). Skips (exit 0) without CUDA.

    python benchmarks/engine_gpu.py --phases model,reference,inputs,baseline,engine
    python benchmarks/engine_gpu.py --phases engine --engine-kwargs '{"enforce_eager": true}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.environ.get("OUT", ".")
BH, PK = "gpu_check_block", "gpu_check_key"
CHECK_NONCES = list(range(64))


def emit(d: dict) -> None:
    line = json.dumps(d, default=str)
    print("RESULT " + line, flush=True)
    with open(os.path.join(OUT, "engine_gpu.jsonl"), "a") as f:
        f.write(line + "\n")


def sync():
    import torch
    torch.cuda.synchronize()


def phase_model(a):
    from poc_serve.models.tiny import build_random_checkpoint
    t = time.time()
    if not os.path.exists(os.path.join(a.model_dir, "config.json")):
        build_random_checkpoint(a.model_dir, "qwen3", "qwen3-0.6b-shape")
    emit({"phase": "model", "seconds": round(time.time() - t, 1)})


def phase_reference(a):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference import load_reference_model, reference_last_hidden
    from poc_serve.poc import nonce_distances
    model = load_reference_model(a.model_dir, torch.bfloat16).cuda()
    out = {}
    for seq_len in (64, 256):
        for mode in ("sign_flips", "layer_hooks"):
            last = reference_last_hidden(model, BH, PK, CHECK_NONCES, seq_len, mode)
            out[f"{seq_len}_{mode}"] = {"hidden": last.cpu(),
                                        "dist": nonce_distances(last, BH, PK, CHECK_NONCES, mode).cpu()}
    torch.save(out, os.path.join(a.model_dir, "reference.pt"))
    emit({"phase": "reference", "keys": list(out)})


def phase_inputs(a):
    import torch
    from poc_serve.poc import input_embeddings, seed_from_string
    seeds = [seed_from_string(f"{BH}_{PK}_nonce{n}") for n in range(1024)]
    res = {"phase": "inputs", "shape": [1024, 64, 1024]}
    for name, fn in (("eager", lambda: _eager(seeds)),
                     ("compiled", lambda: input_embeddings(BH, PK, range(1024), 64, 1024, "cuda", torch.bfloat16))):
        fn(); sync()
        t = time.time()
        for _ in range(10):
            fn()
        sync()
        res[f"{name}_ms"] = round((time.time() - t) * 100, 2)
    emit(res)


def _eager(seeds):
    import torch
    from poc_serve.poc import rng
    return rng._box_muller(torch.tensor(seeds, device="cuda").view(-1, 1), 64 * 1024).to(torch.bfloat16)


def phase_baseline(a):
    import torch
    from transformers import AutoModel
    from poc_serve.poc import input_embeddings, nonce_distances
    model = AutoModel.from_pretrained(a.model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    for seq_len, batch in ((64, 1024), (256, 256)):
        nonces = list(range(batch))
        with torch.inference_mode():
            def step():
                emb = input_embeddings(BH, PK, nonces, seq_len, 1024, "cuda", torch.bfloat16)
                last = model(inputs_embeds=emb).last_hidden_state[:, -1].float()
                return nonce_distances(last, BH, PK, nonces)
            step(); sync()
            t = time.time()
            for _ in range(a.iters):
                step()
            sync()
        emit({"phase": "baseline", "seq_len": seq_len, "batch": batch,
              "nonces_per_s": round(a.iters * batch / (time.time() - t), 1)})


def phase_engine(a):
    import torch
    from poc_serve.engine.config import EngineConfig
    from poc_serve.engine.engine import PoCEngine
    from poc_serve.engine.protocol import PoCRound
    kwargs = json.loads(a.engine_kwargs)
    label = kwargs.pop("label", "default")
    profile = kwargs.pop("profile", False)
    # Env vars for this engine (e.g. POC_EXPAND_KV_HEADS, or VLLM_ENABLE_V1_MULTIPROCESSING=0 with
    # the "uni" executor, which runs the worker in this process so the profiler sees its kernels).
    os.environ.update(kwargs.pop("env", {}))
    cfg = EngineConfig(model=a.model_dir, max_num_batched_tokens=65536, max_model_len=2048,
                       skip_tokenizer_init=True, **kwargs)
    t = time.time()
    eng = PoCEngine(cfg)
    eng.start()
    start_s = time.time() - t
    ref = torch.load(os.path.join(a.model_dir, "reference.pt"))

    async def run():
        res = {"phase": "engine", "label": label, "start_s": round(start_s, 1), "config": kwargs}
        for seq_len in (64, 256):
            for mode in ("sign_flips", "layer_hooks"):
                out = await eng.compute(PoCRound(block_hash=BH, public_key=PK, seq_len=seq_len, randomization=mode),
                                        CHECK_NONCES, return_hidden=True)
                r = ref[f"{seq_len}_{mode}"]
                h = torch.tensor(out.hidden)
                cos = torch.nn.functional.cosine_similarity(h, r["hidden"], dim=-1).min().item()
                dd = (torch.tensor(out.distances) - r["dist"]).abs()
                res[f"check_{seq_len}_{mode}"] = {"min_cos": round(cos, 6), "max_dist_err": float(dd.max()),
                                                  "mean_dist_err": float(dd.mean())}
            # Throughput of the engine call (input generation, forward, post-processing, RPC).
            round_ = PoCRound(block_hash=BH, public_key=PK, seq_len=seq_len)
            size = eng.batch_size(seq_len)
            await eng.compute(round_, list(range(size)))
            t0 = time.time()
            n = size * a.iters
            await eng.compute(round_, list(range(1000, 1000 + n)))
            res[f"rate_{seq_len}"] = round(n / (time.time() - t0), 1)
            res[f"batch_{seq_len}"] = size
            # The same nonces in another batch give the same distance (fixed batch shape).
            x = await eng.compute(round_, [1003, 1005])
            y = await eng.compute(round_, list(range(1000, 1010)))
            res[f"batch_independent_{seq_len}"] = x.distances == [y.distances[3], y.distances[5]]
        if profile:
            from torch.profiler import ProfilerActivity
            round_ = PoCRound(block_hash=BH, public_key=PK, seq_len=64)
            with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                await eng.compute(round_, list(range(eng.batch_size(64))))
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
            with open(os.path.join(OUT, f"profile_{label}.txt"), "w") as f:
                f.write(table)
            print(table)
        return res

    emit(asyncio.run(run()))
    eng.shutdown()


PHASES = {"model": phase_model, "reference": phase_reference, "inputs": phase_inputs,
          "baseline": phase_baseline, "engine": phase_engine}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--phases", default="model,reference,inputs,baseline,engine")
    p.add_argument("--phase")
    p.add_argument("--model-dir", default="/tmp/poc_qwen3_0.6b")
    p.add_argument("--engine-kwargs", default="{}", help="JSON; may hold several configs as a list")
    p.add_argument("--iters", type=int, default=8)
    a = p.parse_args()
    if a.phase:
        return PHASES[a.phase](a)
    import torch
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return
    env = dict(os.environ, PYTHONPATH=ROOT + ":" + os.environ.get("PYTHONPATH", ""))
    configs = json.loads(a.engine_kwargs)
    configs = configs if isinstance(configs, list) else [configs]
    for phase in a.phases.split(","):
        for cfg in (configs if phase == "engine" else [{}]):
            cmd = [sys.executable, __file__, "--phase", phase, "--model-dir", a.model_dir,
                   "--engine-kwargs", json.dumps(cfg), "--iters", str(a.iters)]
            t = time.time()
            rc = subprocess.run(cmd, env=env).returncode
            print(f"PHASE {phase} {cfg} rc={rc} {time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
