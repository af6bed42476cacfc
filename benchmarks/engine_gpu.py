"""Engine-level PoC check and benchmark on a GPU: correctness against transformers, throughput.

Phases run in subprocesses so GPU memory is free between them; each prints `RESULT {json}` and
appends it to $OUT/engine_gpu.jsonl (or ./engine_gpu.jsonl). Skips (exit 0) without CUDA.

    python benchmarks/engine_gpu.py --phases model,reference,inputs,baseline,engine
    python benchmarks/engine_gpu.py --phases engine --engine-kwargs '{"enforce_eager": true}' \
        --variants '[{"label": "f16k", "poc_forward_tokens": 16384}]' --profile --memory-search
    # an MoE model, its FP8 checkpoint (<model-dir>-fp8) and vLLM's online FP8, against the bf16 reference
    python benchmarks/engine_gpu.py --model poc-qwen3-30b-a3b-8l-random --model-dir /tmp/moe \
        --seq-lens 64,256,1024 --phases model,fp8,reference,baseline,engine \
        --engine-kwargs '[{"label": "bf16"}, {"label": "fp8-online", "engine_kwargs": {"quantization": "fp8"}},
                          {"label": "fp8-checkpoint", "model": "/tmp/moe-fp8"}]'
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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


def emit(d: dict, file: str = "engine_gpu.jsonl") -> None:
    """Print one result line and append it to $OUT/``file``."""
    line = json.dumps(d, default=str)
    print("RESULT " + line, flush=True)
    with open(os.path.join(OUT, file), "a") as f:
        f.write(line + "\n")


def sync():
    import torch
    torch.cuda.synchronize()


def phase_model(a):
    from poc_serve.models.tiny import BUILTIN_MODELS, build_random_checkpoint
    t = time.time()
    if not os.path.exists(os.path.join(a.model_dir, "config.json")):
        build_random_checkpoint(a.model_dir, *BUILTIN_MODELS[a.model])
    emit({"phase": "model", "model": a.model, "seconds": round(time.time() - t, 1)})


def phase_fp8(a):
    """The model's block-FP8 checkpoint (as the network's FP8 models ship) at ``<model-dir>-fp8``."""
    from poc_serve.models.fp8 import quantize_checkpoint_fp8
    t = time.time()
    quantize_checkpoint_fp8(a.model_dir, a.model_dir.rstrip("/") + "-fp8")
    emit({"phase": "fp8", "seconds": round(time.time() - t, 1)})


def seq_lens(a) -> list[int]:
    return [int(s) for s in a.seq_lens.split(",")]


def phase_reference(a):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference import load_reference_model, reference_artifacts, reference_last_hidden
    from poc_serve.poc import nonce_distances
    model = load_reference_model(a.model_dir, torch.bfloat16).cuda()
    out = {}
    for seq_len in seq_lens(a):
        out[f"{seq_len}_v2"] = reference_artifacts(model, BH, PK, CHECK_NONCES, seq_len).cpu()
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
    hidden = model.config.hidden_size
    for seq_len in seq_lens(a):
        batch = max(1, a.baseline_tokens // seq_len)
        nonces = list(range(batch))
        with torch.inference_mode():
            def step():
                emb = input_embeddings(BH, PK, nonces, seq_len, hidden, "cuda", torch.bfloat16)
                last = model(inputs_embeds=emb).last_hidden_state[:, -1].float()
                return nonce_distances(last, BH, PK, nonces)
            step(); sync()
            t = time.time()
            for _ in range(a.iters):
                step()
            sync()
        emit({"phase": "baseline", "seq_len": seq_len, "batch": batch,
              "nonces_per_s": round(a.iters * batch / (time.time() - t), 1)})


def phase_gemm(a):
    """The PoC forward's GEMMs alone (cuBLAS, bf16, the model's shapes, the final layer at the last
    positions only), back to back for ``--gemm-seconds`` per seq_len: the rate that fusing every
    other kernel away could at most reach, at the clock the board sustains under GEMM load."""
    import torch
    cfg = json.load(open(os.path.join(a.model_dir, "config.json")))
    hidden, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes = {"qkv": (q + 2 * kv, hidden), "o_proj": (hidden, q), "gate_up": (2 * inter, hidden),
              "down": (hidden, inter)}
    weights = {k: torch.randn(n, m, device="cuda", dtype=torch.bfloat16) * 0.02 for k, (n, m) in shapes.items()}
    res = {"phase": "gemm", "forward_tokens": a.gemm_tokens}
    for seq_len in (64, 256):
        batch = a.gemm_tokens // seq_len
        tokens = batch * seq_len
        inputs = {k: torch.randn(tokens, m, device="cuda", dtype=torch.bfloat16) for k, (n, m) in shapes.items()}
        outs = {k: torch.empty(tokens, n, device="cuda", dtype=torch.bfloat16) for k, (n, m) in shapes.items()}

        def forward():
            for layer in range(layers):
                for k, w in weights.items():  # the final layer: keys/values everywhere, the rest at last positions
                    m = batch if layer == layers - 1 and k != "qkv" else tokens
                    torch.mm(inputs[k][:m], w.t(), out=outs[k][:m])

        rows = {k: tokens * layers if k == "qkv" else tokens * (layers - 1) + batch for k in shapes}
        flop = 2 * sum(rows[k] * n * m for k, (n, m) in shapes.items())
        forward(); sync()
        with GpuClockSampler() as clocks:
            t0, n = time.time(), 0
            while time.time() - t0 < a.gemm_seconds:
                for _ in range(10):
                    forward()
                sync()
                n += 10
            seconds = time.time() - t0
        res[f"rate_{seq_len}"] = round(n * batch / seconds, 1)
        res[f"tflops_{seq_len}"] = round(n * flop / seconds / 1e12, 1)
        res[f"gpu_{seq_len}"] = clocks.summary
    emit(res)


def _profile_poc_call(worker, kwargs: dict, path: str) -> None:
    """Runs INSIDE each vLLM worker (sent through collective_rpc): one warm PoC call, then one
    under the torch profiler; rank 0 writes the kernel table to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    worker.poc_compute(**kwargs)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        worker.poc_compute(**kwargs)
    wall_ms = (time.perf_counter() - t0) / 3 * 1000  # the call as the worker sees it, unprofiled
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        worker.poc_compute(**kwargs)
        torch.cuda.synchronize()
    if worker.rank == 0:
        with open(path, "w") as f:
            f.write(f"{len(kwargs['nonces'])} nonces, worker wall time per call {wall_ms:.1f} ms (unprofiled)\n")
            f.write(_gpu_idle(prof) + "\n")
            f.write(prof.key_averages().table(sort_by="self_device_time_total", row_limit=30))


def _gpu_idle(prof) -> str:
    """Where the GPU waited during the profiled call: the span from its first to its last kernel,
    the time no kernel ran, and the longest gaps with the kernels on either side."""
    from torch.autograd import DeviceType
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type == DeviceType.CUDA and e.name != "Command Buffer Full")
    if not spans:
        return "no kernels recorded"
    first, end, last_name = spans[0][0], spans[0][0], ""
    idle, gaps = 0.0, []
    for start, stop, name in spans:
        if start > end:
            idle += start - end
            gaps.append((start - end, last_name[:40], name[:40]))
        if stop > end:
            end, last_name = stop, name
    top = "; ".join(f"{g / 1000:.2f} ms after {a!r} before {b!r}" for g, a, b in sorted(gaps, reverse=True)[:5])
    return f"kernel span {(end - first) / 1000:.1f} ms, GPU idle {idle / 1000:.1f} ms in {len(gaps)} gaps; longest: {top}"


def _rpc_noop(worker) -> None:
    """Runs INSIDE each vLLM worker: nothing (times the engine's call round trip)."""


def _trace_layer_hooks(worker, kwargs: dict) -> list:
    """Runs INSIDE each vLLM worker: a layer_hooks PoC call with pre-hooks recording, per decoder
    layer, the norms of the (hidden, residual) it receives at the last position of the first nonce
    (after the previous layer's transform they are ~1 each; raw layer outputs are far larger)."""
    import torch
    from poc_serve.engine.vllm_compat import decoder_layers, decoder_stack, worker_model
    seen = []

    def pre(index):
        def hook(module, args):  # vLLM calls layer(positions, hidden_states, residual)
            hidden, residual = args[1], args[2]
            row = kwargs["seq_len"] - 1
            seen.append([index] + [None if t is None else round(float(t[row].float().norm()), 5) for t in (hidden, residual)])
        return hook

    handles = [layer.register_forward_pre_hook(pre(i))
               for i, layer in decoder_layers(decoder_stack(worker_model(worker)))]
    try:
        worker.poc_compute(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen


class GpuClockSampler:
    """Samples SM clock and power with nvidia-smi while a rate is timed: a rate below the summed
    kernel time of a (short) profile may come from clocks dropping under sustained load."""

    def __enter__(self) -> "GpuClockSampler":
        self.summary: dict = {}
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw",
                                          "--format=csv,noheader,nounits", "-i", "0", "-lms", "200"],
                                         stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:  # no NVIDIA driver tools (a CPU smoke run)
            self.proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        rows = [line.split(",") for line in self.proc.communicate()[0].splitlines() if "," in line]
        clocks = sorted(float(r[0]) for r in rows)
        self.summary = {"sm_mhz_min": clocks[0], "sm_mhz_median": clocks[len(clocks) // 2],
                        "power_w_max": max(float(r[1]) for r in rows)} if rows else {}


def _with_settings(config, settings: dict):
    """``config`` with ``settings`` applied, validated like a new EngineConfig."""
    return type(config).model_validate({**config.model_dump(), **settings})


async def _variant(eng, ref, variant: dict, a) -> dict:
    """Correctness, throughput, validation latency and batch independence of one PoC setting."""
    import torch
    from poc_serve.engine.protocol import PoCRound
    res = {"phase": "engine", **variant}
    eng.config = _with_settings(eng.config, {k: v for k, v in variant.items() if k != "label"})
    for seq_len in seq_lens(a):
        for mode in ("sign_flips", "layer_hooks"):
            out = await eng.compute(PoCRound(block_hash=BH, public_key=PK, seq_len=seq_len, randomization=mode),
                                    CHECK_NONCES, return_hidden=True)
            r = ref[f"{seq_len}_{mode}"]
            cos = torch.nn.functional.cosine_similarity(torch.tensor(out.hidden), r["hidden"], dim=-1)
            dd = (torch.tensor(out.distances) - r["dist"]).abs()
            res[f"check_{seq_len}_{mode}"] = {"min_cos": round(cos.min().item(), 6), "max_dist_err": float(dd.max()),
                                              "mean_dist_err": float(dd.mean()), "n_over_1e-3": int((dd > 1e-3).sum()),
                                              # equal digests across engines and settings: bit-identical distances
                                              "digest": hashlib.sha1(repr(out.distances).encode()).hexdigest()[:12]}
        # Throughput of the engine call (input generation, forwards, post-processing, RPC).
        round_ = PoCRound(block_hash=BH, public_key=PK, seq_len=seq_len)
        size = eng.batch_size(seq_len)
        n = max(size, a.nonces_per_rate // seq_len * 64 // size * size)
        await eng.compute(round_, list(range(size)))
        with GpuClockSampler() as clocks:
            t0 = time.time()  # all calls queued at once, as the service keeps calls in flight
            await asyncio.gather(*(eng.compute(round_, list(range(i, i + size))) for i in range(1000, 1000 + n, size)))
            res[f"rate_{seq_len}"] = round(n / (time.time() - t0), 1)
        res[f"gpu_{seq_len}"] = clocks.summary
        res[f"forward_{seq_len}"] = eng.config.poc_forward_size(seq_len)
        # The same nonces in another request give the same distance (fixed forward shape).
        x = await eng.compute(round_, [1003, 1005])
        y = await eng.compute(round_, list(range(1000, 1000 + size + 10)))
        res[f"batch_independent_{seq_len}"] = x.distances == [y.distances[3], y.distances[5]]
        res.update(await _v2(eng, ref, seq_len, n))
    round_ = PoCRound(block_hash=BH, public_key=PK, seq_len=64)
    times = []
    for i in range(5):
        t0 = time.time()
        await eng.compute(round_, list(range(i * 200, i * 200 + 200)))
        times.append(time.time() - t0)
    res["validate_200_s"] = {"median": round(sorted(times)[2], 4), "min": round(min(times), 4)}
    return res


async def _v2(eng, ref, seq_len: int, n: int) -> dict:
    """PoC v2 on the same engine: artifacts against the reference (L2 of decoded vectors), the
    artifact rate over the same nonce count as v1's rate, and batch independence."""
    import torch
    from poc_serve.engine.protocol import ArtifactRound
    from poc_serve.poc import decode_artifact
    round_ = ArtifactRound(block_hash=BH, public_key=PK, seq_len=seq_len)
    got = await eng.compute_artifacts(round_, CHECK_NONCES)
    l2 = torch.stack([torch.linalg.vector_norm(decode_artifact(b64, 12) - r.float())
                      for b64, r in zip(got.artifacts, ref[f"{seq_len}_v2"])])
    size = eng.batch_size(seq_len)
    t0 = time.time()
    await asyncio.gather(*(eng.compute_artifacts(round_, list(range(i, i + size)))
                           for i in range(1000, 1000 + n, size)))
    rate = round(n / (time.time() - t0), 1)
    x = await eng.compute_artifacts(round_, [1003, 1005])
    y = await eng.compute_artifacts(round_, list(range(1000, 1000 + size + 10)))
    return {f"v2_check_{seq_len}": {"max_l2": round(l2.max().item(), 5), "mean_l2": round(l2.mean().item(), 5)},
            f"v2_rate_{seq_len}": rate, f"v2_batch_independent_{seq_len}": x.artifacts == y.artifacts[3:6:2]}


async def _inference_rate(eng, requests: int = 64, prompt_len: int = 128, new_tokens: int = 128) -> dict:
    """Output tokens/s of a batch of greedy generations (random prompt ids), all submitted at once,
    after one warm request: inference on the same engine, eager or compiled."""
    import torch
    vocab = eng.llm.model_config.get_vocab_size()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (prompt_len,), generator=gen).tolist() for _ in range(requests)]
    sampling = dict(max_tokens=new_tokens, ignore_eos=True, temperature=0.0)

    async def one(i: int) -> int:
        tokens = 0
        async for step in eng.generate(prompts[i], sampling, request_id=f"bench-{i}-{time.time()}"):
            tokens = step["completion_tokens"]
        return tokens

    await one(0)
    t0 = time.time()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
    seconds = time.time() - t0
    return {"requests": requests, "prompt_len": prompt_len, "output_tokens": tokens,
            "seconds": round(seconds, 2), "output_tokens_per_s": round(tokens / seconds, 1)}


def phase_engine(a):
    import torch
    from poc_serve.engine.config import EngineConfig
    from poc_serve.engine.engine import PoCEngine
    kwargs = json.loads(a.engine_kwargs)
    label = kwargs.pop("label", "default")
    # Env vars for this engine; the profiler sends a function to the workers, which vLLM's engine
    # core only forwards with VLLM_ALLOW_INSECURE_SERIALIZATION=1.
    os.environ.update(kwargs.pop("env", {}))
    if a.profile or a.trace_layer_hooks:
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    cfg = EngineConfig(**{"model": a.model_dir, "max_num_batched_tokens": 65536, "max_model_len": 2048,
                          "skip_tokenizer_init": True, **kwargs})
    t = time.time()
    eng = PoCEngine(cfg)
    ref = torch.load(os.path.join(a.model_dir, "reference.pt"))

    async def run():
        await eng.start()
        emit({"phase": "engine_start", "label": label, "config": kwargs, "start_s": round(time.time() - t, 1),
              "memory_probes": eng.memory_probes})
        base = eng.config
        for variant in json.loads(a.variants):
            eng.config = base
            variant.pop("profile", None)
            name = f"{label}/{variant.pop('label')}"
            try:
                emit(await _variant(eng, ref, {"label": name, **variant}, a))
            except Exception as exc:  # noqa: BLE001 - one failing setting must not cost the others
                emit({"phase": "engine", "label": name, **variant, "error": repr(exc)[:500]})
        eng.config = base
        if a.profile:
            for variant in json.loads(a.variants):
                if not variant.pop("profile", False):
                    continue
                name = variant.pop("label")
                fwd = _with_settings(base, variant)
                for seq_len in map(int, a.profile_seq_lens.split(",")):
                    size = fwd.poc_forward_size(seq_len)
                    kw = dict(block_hash=BH, public_key=PK, seq_len=seq_len, randomization="sign_flips",
                              nonces=list(range(size * fwd.poc_forwards_per_call)), forward_size=size,
                              **fwd.poc_forward_options())
                    path = os.path.join(OUT, f"profile_{label}_{name}_{seq_len}.txt")
                    await eng.llm.collective_rpc(_profile_poc_call, args=(kw, path))
                    print(f"PROFILE {label}/{name} seq_len {seq_len}\n" + open(path).read(), flush=True)
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                await eng.llm.collective_rpc(_rpc_noop)
                times.append(time.perf_counter() - t0)
            emit({"phase": "rpc_roundtrip", "label": label, "median_ms": round(sorted(times)[10] * 1000, 2)})
        if a.inference:
            emit({"phase": "inference", "label": label, **await _inference_rate(eng)})
        if a.trace_layer_hooks:
            size = base.poc_forward_size(64)
            kw = dict(block_hash=BH, public_key=PK, seq_len=64, randomization="layer_hooks",
                      nonces=list(range(size)), forward_size=size, **base.poc_forward_options())
            emit({"phase": "trace_layer_hooks", "label": label,
                  "per_rank": await eng.llm.collective_rpc(_trace_layer_hooks, args=(kw,))})
        if a.memory_search:
            # Forwards beyond max_num_batched_tokens (which the service never runs) until one fails.
            for nonces in (1024, 1536, 2048, 3072, 4096, 6144):
                try:
                    probe = await eng.llm.collective_rpc("poc_memory_probe", kwargs=dict(
                        seq_len=64, num_nonces=nonces, forward_size=nonces, **base.poc_forward_options()))
                    emit({"phase": "memory", "tokens": nonces * 64, "ok": True, "probe": probe})
                except Exception as exc:  # noqa: BLE001 - the failure is the measurement
                    emit({"phase": "memory", "tokens": nonces * 64, "ok": False, "error": str(exc)[:300]})
                    break

    asyncio.run(run())
    eng.shutdown()


PHASES = {"model": phase_model, "fp8": phase_fp8, "reference": phase_reference, "inputs": phase_inputs,
          "baseline": phase_baseline, "gemm": phase_gemm, "engine": phase_engine}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--phases", default="model,reference,inputs,baseline,engine")
    p.add_argument("--phase")
    p.add_argument("--model", default="poc-qwen3-0.6b-random", help="model: the built-in random model built")
    p.add_argument("--model-dir", default="/tmp/poc_qwen3_0.6b")
    p.add_argument("--seq-lens", default="64,256", help="comma-separated seq_lens checked and timed")
    p.add_argument("--baseline-tokens", type=int, default=65536, help="baseline: tokens per transformers batch")
    p.add_argument("--engine-kwargs", default="{}", help="JSON; may hold several configs as a list")
    p.add_argument("--iters", type=int, default=8, help="baseline: timed batches")
    p.add_argument("--variants", default='[{"label": "default"}]',
                   help="JSON list of PoC settings (EngineConfig poc_* fields) timed on each engine")
    p.add_argument("--nonces-per-rate", type=int, default=16384, help="nonces timed per rate at seq_len 64")
    p.add_argument("--profile", action="store_true",
                   help='profile one call in the workers for each variant with "profile": true')
    p.add_argument("--gemm-tokens", type=int, default=32768, help="gemm: tokens per forward")
    p.add_argument("--gemm-seconds", type=float, default=10, help="gemm: seconds timed per seq_len")
    p.add_argument("--profile-seq-lens", default="64", help="comma-separated seq_lens profiled")
    p.add_argument("--inference", action="store_true", help="time a batch of generations on each engine")
    p.add_argument("--memory-search", action="store_true", help="probe forwards beyond the service's size")
    p.add_argument("--trace-layer-hooks", action="store_true", help="per-layer norms of a layer_hooks call")
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
            cmd = [sys.executable, __file__, "--phase", phase, "--model", a.model, "--model-dir", a.model_dir,
                   "--seq-lens", a.seq_lens, "--baseline-tokens", str(a.baseline_tokens),
                   "--engine-kwargs", json.dumps(cfg), "--iters", str(a.iters), "--variants", a.variants,
                   "--nonces-per-rate", str(a.nonces_per_rate)]
            cmd += ["--profile-seq-lens", a.profile_seq_lens, "--gemm-tokens", str(a.gemm_tokens),
                    "--gemm-seconds", str(a.gemm_seconds)]
            cmd += (["--profile"] * a.profile + ["--memory-search"] * a.memory_search + ["--inference"] * a.inference
                    + ["--trace-layer-hooks"] * a.trace_layer_hooks)
            t = time.time()
            rc = subprocess.run(cmd, env=env).returncode
            print(f"PHASE {phase} {cfg} rc={rc} {time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
