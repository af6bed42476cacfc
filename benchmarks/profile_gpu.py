"""Where a PoC engine call spends its time on a GPU: the kernel table of one call in the workers
(with the GPU's idle gaps and the worker's unprofiled wall time per call), the engine's call round
trip, and optionally a per-layer trace of a layer_hooks call. Results: `RESULT {json}` lines in
$OUT/engine_gpu.jsonl and kernel tables in $OUT/profile_<engine>_<variant>_<seq_len>.txt. Skips
(exit 0) without CUDA.

    python benchmarks/profile_gpu.py --phases model,profile \
        --engine-kwargs '{"label": "eager", "enforce_eager": true}' \
        --variants '[{"label": "f32k_c16", "poc_forward_tokens": 32768, "poc_forwards_per_call": 16}]' \
        --profile-seq-lens 64,256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from poc_serve.testing.engine_checks import BLOCK_HASH as BH, PUBLIC_KEY as PK

from shared import OUT, add_model_args, emit, engine_under_test, main, phase_model, with_settings


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
    return (f"kernel span {(end - first) / 1000:.1f} ms, GPU idle {idle / 1000:.1f} ms in {len(gaps)} gaps; "
            f"longest: {top}")


def _rpc_noop(worker) -> None:
    """Runs INSIDE each vLLM worker: nothing (times the engine's call round trip)."""


def _trace_layer_hooks(worker, kwargs: dict) -> list:
    """Runs INSIDE each vLLM worker: a layer_hooks PoC call with pre-hooks recording, per decoder
    layer, the norms of the (hidden, residual) it receives at the last position of the first nonce
    (after the previous layer's transform they are ~1 each; raw layer outputs are far larger)."""
    from poc_serve.engine.vllm_compat import decoder_layers, decoder_stack, worker_model
    seen = []

    def pre(index):
        def hook(module, args):  # vLLM calls layer(positions, hidden_states, residual)
            hidden, residual = args[1], args[2]
            row = kwargs["seq_len"] - 1
            norms = [None if t is None else round(float(t[row].float().norm()), 5) for t in (hidden, residual)]
            seen.append([index] + norms)
        return hook

    handles = [layer.register_forward_pre_hook(pre(i))
               for i, layer in decoder_layers(decoder_stack(worker_model(worker)))]
    try:
        worker.poc_compute(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen


def phase_profile(a):
    # The functions above travel to the workers, which vLLM's engine core forwards only with this.
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    label, _, eng = engine_under_test(a)

    async def run():
        await eng.start()
        base = eng.config
        for variant in json.loads(a.variants):
            name = variant.pop("label")
            fwd = with_settings(base, variant)
            for seq_len in map(int, a.profile_seq_lens.split(",")):
                size = fwd.poc_forward_size(seq_len)
                kw = dict(block_hash=BH, public_key=PK, seq_len=seq_len, randomization="sign_flips",
                          nonces=list(range(fwd.poc_call_size(seq_len))), forward_size=size,
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
        if a.trace_layer_hooks:
            size = base.poc_forward_size(64)
            kw = dict(block_hash=BH, public_key=PK, seq_len=64, randomization="layer_hooks",
                      nonces=list(range(size)), forward_size=size, **base.poc_forward_options())
            emit({"phase": "trace_layer_hooks", "label": label,
                  "per_rank": await eng.llm.collective_rpc(_trace_layer_hooks, args=(kw,))})

    asyncio.run(run())
    eng.shutdown()


PHASES = {"model": phase_model, "profile": phase_profile}


def cli():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--phases", default="model,profile", help=",".join(PHASES))
    p.add_argument("--engine-kwargs", default="{}", help="JSON; may hold several configs as a list")
    p.add_argument("--variants", default='[{"label": "default"}]',
                   help="JSON list of PoC settings (EngineConfig poc_* fields), each profiled")
    p.add_argument("--profile-seq-lens", default="64", help="comma-separated seq_lens profiled")
    p.add_argument("--trace-layer-hooks", action="store_true", help="per-layer norms of a layer_hooks call")
    main(p, __file__, PHASES, "profile")


if __name__ == "__main__":
    cli()
