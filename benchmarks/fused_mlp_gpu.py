"""Experiment: the gate/up GEMM with SiLU-and-mul in its epilogue, as one Triton kernel, against
what the PoC forward runs now (cuBLAS GEMM, then vLLM's ``silu_and_mul``), on the MLP shapes of a
Qwen3-0.6B-shaped model.

The PoC forward is bound by the bytes its non-GEMM kernels move (docs/benchmarks.md, "Speed
targets not met"): SiLU-and-mul alone takes 10.6 ms per 1024 nonces at seq_len 64, reading the
gate/up GEMM's 2 x 3072 outputs per token and writing 3072. In the GEMM's epilogue it would write
only the 3072. Whether that wins depends on a Triton GEMM coming close to cuBLAS on these shapes
(K = 1024): this script measures exactly that before any of it goes near the engine.

Result (2026-11-27, one H100, Triton 3.6, 32,768 tokens; docs/benchmarks.md): the fused kernel
takes 0.838 ms (492 TFLOP/s) against 0.579 ms for cuBLAS's GEMM alone plus 0.189 ms for vLLM's
SiLU-and-mul (profile): 9% slower. A plain Triton GEMM is too far behind cuBLAS here for the
fusion to pay; a faster GEMM (TMA, persistent, warp-specialised) is the next thing to try.

    python benchmarks/fused_mlp_gpu.py --tokens 32768         # on a GPU: times, TFLOP/s, max error
    python benchmarks/fused_mlp_gpu.py --interpret            # on a CPU: the kernel's maths only

Prints ``RESULT {json}`` and appends it to $OUT/fused_mlp_gpu.jsonl. Skips (exit 0) without CUDA
unless ``--interpret``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if "--interpret" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported

import torch
import triton
import triton.language as tl

OUT = os.environ.get("OUT", ".")
CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=w, num_stages=s)
           for m, n, w, s in ((128, 128, 8, 3), (128, 128, 8, 4), (128, 64, 4, 4), (64, 128, 4, 4),
                              (128, 256, 8, 3), (256, 64, 8, 3))]


@triton.jit
def _gate_up_silu_mul(x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """out[m, n] = silu(g) * u with g = x[m] . w[n], u = x[m] . w[N + n]: vLLM's merged gate/up
    weight holds the gate rows, then the up rows. g and u are rounded to the activation dtype
    before the SiLU, as the unfused path stores them."""
    pid = tl.program_id(0)
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    # Grouped tile order: GROUP_M row blocks share each weight tile while it is in L2.
    group = GROUP_M * grid_n
    first_m = (pid // group) * GROUP_M
    rows = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % rows
    pid_n = (pid % group) // rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    w_gate = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BLOCK_K, BLOCK_N] of w^T
    w_up = w_gate + N * stride_wn
    row_ok = offs_m[:, None] < M
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):  # K is a multiple of BLOCK_K (checked by the caller)
        a = tl.load(x, mask=row_ok, other=0.0)
        acc_gate = tl.dot(a, tl.load(w_gate), acc_gate)
        acc_up = tl.dot(a, tl.load(w_up), acc_up)
        x += BLOCK_K
        w_gate += BLOCK_K
        w_up += BLOCK_K
    dtype = out_ptr.dtype.element_ty
    gate = acc_gate.to(dtype).to(tl.float32)
    up = acc_up.to(dtype).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], out.to(dtype), mask=row_ok)


_tuned = triton.autotune(configs=CONFIGS, key=["M", "N", "K"])(_gate_up_silu_mul)


def gate_up_silu_mul(x: torch.Tensor, w: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """``silu(x @ w[:N].T) * (x @ w[N:].T)`` for a merged gate/up weight ``w`` of ``2N`` rows, in one
    kernel; autotuned unless ``config`` (a dict with the BLOCK_* / GROUP_M / num_warps / num_stages keys)."""
    M, K = x.shape
    N = w.shape[0] // 2
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if config is None:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        _tuned[grid](x, w, out, M, N, K, x.stride(0), w.stride(0), out.stride(0))
        return out
    meta = dict(config)
    assert K % meta["BLOCK_K"] == 0 and N % meta["BLOCK_N"] == 0, (K, N, meta)
    grid = (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    _gate_up_silu_mul[grid](x, w, out, M, N, K, x.stride(0), w.stride(0), out.stride(0), **meta)
    return out


def vllm_silu_and_mul() -> object | None:
    """vLLM's SiLU-and-mul CUDA op, or None where vLLM is not installed (then torch's ops stand in)."""
    try:
        import vllm._custom_ops  # noqa: F401  (registers torch.ops._C)

        return torch.ops._C.silu_and_mul
    except (ImportError, AttributeError, RuntimeError):
        return None


def unfused(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What the PoC forward runs now: the GEMM, then vLLM's SiLU-and-mul (torch's where vLLM is absent)."""
    gate_up = x @ w.t()
    n = w.shape[0] // 2
    op = vllm_silu_and_mul() if x.is_cuda else None
    if op is not None:
        out = torch.empty(x.shape[0], n, device=x.device, dtype=x.dtype)
        op(out, gate_up)
        return out
    g, u = gate_up[:, :n].float(), gate_up[:, n:].float()
    return (torch.nn.functional.silu(g) * u).to(x.dtype)


def emit(d: dict) -> None:
    line = json.dumps(d)
    print("RESULT " + line, flush=True)
    with open(os.path.join(OUT, "fused_mlp_gpu.jsonl"), "a") as f:
        f.write(line + "\n")


def check_interpreted() -> None:
    """The kernel's maths on a CPU (Triton's interpreter), small shapes, float32 and float16: the
    interpreter's ``tl.dot`` misreads bfloat16 (Triton 3.9), so bfloat16 is checked on the GPU run
    (``max_abs_err`` against the unfused path)."""
    torch.manual_seed(0)
    config = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
        x = torch.randn(40, 64).to(dtype)  # 40 rows: a partial row block
        w = (torch.randn(2 * 48, 64) * 0.1).to(dtype)
        got = gate_up_silu_mul(x, w, config).float()
        ref = unfused(x.float(), w.float())
        err = (got - ref).abs().max().item()
        emit({"phase": "interpret", "dtype": str(dtype), "max_abs_err": err})
        assert err < tol, (dtype, err)


def time_ms(fn, iters: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=32768, help="rows of one PoC forward (nonces x seq_len)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--interpret", action="store_true", help="check the kernel on a CPU with Triton's interpreter")
    a = p.parse_args()
    if a.interpret:
        return check_interpreted()
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return
    torch.manual_seed(0)
    x = torch.randn(a.tokens, a.hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * a.intermediate, a.hidden, device="cuda", dtype=torch.bfloat16) * 0.03
    fused_out, ref = gate_up_silu_mul(x, w), unfused(x, w)  # the first call autotunes
    flop = 2 * a.tokens * a.hidden * 2 * a.intermediate
    res = {"phase": "fused_mlp", "tokens": a.tokens, "hidden": a.hidden, "intermediate": a.intermediate,
           "device": torch.cuda.get_device_name(), "best_config": str(_tuned.best_config),
           "unfused_silu": "vllm" if vllm_silu_and_mul() is not None else "torch (vLLM not installed)",
           "max_abs_err": (fused_out.float() - ref.float()).abs().max().item(),
           "ref_abs_max": ref.float().abs().max().item()}
    for name, fn in (("gemm_only", lambda: x @ w.t()), ("unfused", lambda: unfused(x, w)),
                     ("fused", lambda: gate_up_silu_mul(x, w))):
        ms = time_ms(fn, a.iters)
        res[f"{name}_ms"] = round(ms, 4)
        res[f"{name}_tflops"] = round(flop / ms / 1e9, 1)
    res["fused_vs_unfused"] = round(res["unfused_ms"] / res["fused_ms"], 3)
    emit(res)


if __name__ == "__main__":
    main()
