"""Engine-level PoC check and benchmark on a GPU: correctness against transformers, throughput.

Phases run in subprocesses so GPU memory is free between them; each prints `RESULT {json}` and
appends it to $OUT/engine_gpu.jsonl (or ./engine_gpu.jsonl). Skips (exit 0) without CUDA.
Profiles of the PoC call in the workers: benchmarks/profile_gpu.py; the service: service_gpu.py.

    python benchmarks/engine_gpu.py --phases model,reference,inputs,baseline,engine
    python benchmarks/engine_gpu.py --phases engine --engine-kwargs '{"enforce_eager": true}' \
        --variants '[{"label": "f16k", "poc_forward_tokens": 16384}]' --memory-search
    # an MoE model, its FP8 checkpoint (<model-dir>-fp8) and vLLM's online FP8, against the bf16 reference
    python benchmarks/engine_gpu.py --model poc-qwen3-30b-a3b-8l-random --model-dir /tmp/moe \
        --seq-lens 64,256,1024 --phases model,fp8,reference,baseline,engine \
        --engine-kwargs '[{"label": "bf16"}, {"label": "fp8-online", "engine_kwargs": {"quantization": "fp8"}},
                          {"label": "fp8-checkpoint", "model": "/tmp/moe-fp8"}]'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from poc_serve.testing.engine_checks import BLOCK_HASH as BH, PUBLIC_KEY as PK

from shared import (GpuClockSampler, add_model_args, emit, engine_under_test, load_reference, main, phase_model,
                    phase_reference, seq_lens, sync, with_settings)


def phase_fp8(a):
    """The model's block-FP8 checkpoint (as the network's FP8 models ship) at ``<model-dir>-fp8``."""
    from poc_serve.models.fp8 import quantize_checkpoint_fp8
    t = time.time()
    quantize_checkpoint_fp8(a.model_dir, a.model_dir.rstrip("/") + "-fp8")
    emit({"phase": "fp8", "seconds": round(time.time() - t, 1)})


def phase_inputs(a):
    import torch
    from poc_serve.poc import input_embeddings, seed_from_string
    seeds = [seed_from_string(f"{BH}_{PK}_nonce{n}") for n in range(1024)]
    res = {"phase": "inputs", "shape": [1024, 64, 1024]}
    for name, fn in (("eager", lambda: _eager(seeds)),
                     ("compiled", lambda: input_embeddings(BH, PK, range(1024), 64, 1024, "cuda", torch.bfloat16))):
        fn()
        sync()
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
            step()
            sync()
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
        forward()
        sync()
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


async def _variant(eng, ref, variant: dict, a) -> dict:
    """Correctness, throughput, validation latency and batch independence of one PoC setting."""
    from poc_serve.engine.protocol import PoCRound
    from poc_serve.testing import engine_checks as checks
    res = {"phase": "engine", **variant}
    eng.config = with_settings(eng.config, {k: v for k, v in variant.items() if k != "label"})
    for seq_len in seq_lens(a):
        for mode in checks.MODES:
            res[f"check_{seq_len}_{mode}"] = await checks.distance_errors(eng, ref, seq_len, mode)
        # Throughput of the engine call (input generation, forwards, post-processing, RPC).
        round_ = PoCRound(block_hash=BH, public_key=PK, seq_len=seq_len)
        size = eng.call_size(seq_len)
        n = max(size, a.nonces_per_rate // seq_len * 64 // size * size)
        await eng.compute(round_, list(range(size)))
        with GpuClockSampler() as clocks:
            t0 = time.time()  # all calls queued at once, as the service keeps calls in flight
            await asyncio.gather(*(eng.compute(round_, list(range(i, i + size))) for i in range(1000, 1000 + n, size)))
            res[f"rate_{seq_len}"] = round(n / (time.time() - t0), 1)
        res[f"gpu_{seq_len}"] = clocks.summary
        res[f"forward_{seq_len}"] = eng.config.poc_forward_size(seq_len)
        # The same nonces in another request give the same distance (fixed forward shape).
        res[f"batch_independent_{seq_len}"] = await checks.batch_independent(eng, seq_len)
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
    from poc_serve.engine.protocol import ArtifactRound
    from poc_serve.testing import engine_checks as checks
    round_ = ArtifactRound(block_hash=BH, public_key=PK, seq_len=seq_len)
    size = eng.call_size(seq_len)
    t0 = time.time()
    await asyncio.gather(*(eng.compute_artifacts(round_, list(range(i, i + size)))
                           for i in range(1000, 1000 + n, size)))
    return {f"v2_check_{seq_len}": await checks.artifact_errors(eng, ref, seq_len),
            f"v2_rate_{seq_len}": round(n / (time.time() - t0), 1),
            f"v2_batch_independent_{seq_len}": await checks.artifacts_batch_independent(eng, seq_len)}


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
    t = time.time()
    label, kwargs, eng = engine_under_test(a)
    ref = load_reference(a)
    if ref is None:
        sys.exit(f"no {a.model_dir}/reference.pt: run the reference phase first")

    async def run():
        await eng.start()
        emit({"phase": "engine_start", "label": label, "config": kwargs, "start_s": round(time.time() - t, 1),
              "memory_probes": eng.memory_probes})
        base = eng.config
        for variant in json.loads(a.variants):
            eng.config = base
            name = f"{label}/{variant.pop('label')}"
            try:
                emit(await _variant(eng, ref, {"label": name, **variant}, a))
            except Exception as exc:  # noqa: BLE001 - one failing setting must not cost the others
                emit({"phase": "engine", "label": name, **variant, "error": repr(exc)[:500]})
        eng.config = base
        if a.inference:
            emit({"phase": "inference", "label": label, **await _inference_rate(eng)})
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


def cli():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--phases", default="model,reference,inputs,baseline,engine", help=",".join(PHASES))
    p.add_argument("--baseline-tokens", type=int, default=65536, help="baseline: tokens per transformers batch")
    p.add_argument("--engine-kwargs", default="{}", help="JSON; may hold several configs as a list")
    p.add_argument("--iters", type=int, default=8, help="baseline: timed batches")
    p.add_argument("--variants", default='[{"label": "default"}]',
                   help="JSON list of PoC settings (EngineConfig poc_* fields) timed on each engine")
    p.add_argument("--nonces-per-rate", type=int, default=16384, help="nonces timed per rate at seq_len 64")
    p.add_argument("--gemm-tokens", type=int, default=32768, help="gemm: tokens per forward")
    p.add_argument("--gemm-seconds", type=float, default=10, help="gemm: seconds timed per seq_len")
    p.add_argument("--inference", action="store_true", help="time a batch of generations on each engine")
    p.add_argument("--memory-search", action="store_true", help="probe forwards beyond the service's size")
    main(p, __file__, PHASES, "engine")


if __name__ == "__main__":
    cli()
