"""Experiment: the gate/up GEMM with SiLU-and-mul in its epilogue, as one Triton kernel (two
variants: two accumulators, or gate/up weight rows interleaved and one accumulator), against
what the PoC forward runs now (cuBLAS GEMM, then vLLM's ``silu_and_mul``), on the MLP shapes of a
Qwen3-0.6B-shaped model.

The PoC forward is bound by the bytes its non-GEMM kernels move (docs/benchmarks.md, "Speed
targets not met"): SiLU-and-mul alone takes 10.6 ms per 1024 nonces at seq_len 64, reading the
gate/up GEMM's 2 x 3072 outputs per token and writing 3072. In the GEMM's epilogue it would write
only the 3072. Whether that wins depends on a Triton GEMM coming close to cuBLAS on these shapes
(K = 1024): this script measures exactly that before any of it goes near the engine.

Result (2026-11-27, one H100, Triton 3.6, 32,768 tokens; docs/benchmarks.md): the interleaved
kernel takes 0.784 ms (526 TFLOP/s) and the two-accumulator one 0.815 ms, against ~0.762 ms for
cuBLAS's GEMM (0.573 ms) plus vLLM's SiLU-and-mul (0.189 ms in the engine's profile): 3% and 7%
slower. Breaking even needs ~540 TFLOP/s; a persistent grid with TMA loads is the next try.

    python benchmarks/fused_mlp_gpu.py --tokens 32768         # on a GPU: times, TFLOP/s, max error
    python benchmarks/fused_mlp_gpu.py --interpret            # on a CPU: the kernels' maths only

Prints ``RESULT {json}`` and appends it to $OUT/fused_mlp_gpu.jsonl. Skips (exit 0) without CUDA
unless ``--interpret``.
"""

from __future__ import annotations

import argparse
import os
import sys

if "--interpret" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_gpu import emit  # noqa: E402

RESULTS = "fused_mlp_gpu.jsonl"
# Tile shapes tried by the autotuner: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages). Two
# float32 accumulators of 128 x 128 take 128 registers per thread at 8 warps.
TILES = ((128, 128, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4), (128, 128, 64, 16, 8, 4), (128, 128, 128, 8, 8, 3),
         (128, 64, 64, 8, 4, 4), (64, 128, 64, 8, 4, 4), (256, 64, 64, 8, 8, 3))
CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": g}, num_warps=w, num_stages=st)
           for m, n, k, g, w, st in TILES]


@triton.jit
def _tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped tile order: GROUP_M row blocks share each weight tile while it is in L2."""
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = GROUP_M * grid_n
    first_m = (pid // group) * GROUP_M
    rows = min(grid_m - first_m, GROUP_M)
    return first_m + (pid % group) % rows, (pid % group) // rows


@triton.jit
def _silu_mul_store(out_ptr, gate, up, offs_m, offs_n, M, stride_om):
    """Round gate and up to the output dtype, as the unfused path stores them, then SiLU(gate) * up."""
    dtype = out_ptr.dtype.element_ty
    gate = gate.to(dtype).to(tl.float32)
    up = up.to(dtype).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], out.to(dtype), mask=offs_m[:, None] < M)


@triton.jit
def _gate_up_silu_mul(x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """out[m, n] = silu(x[m] . w[n]) * (x[m] . w[N + n]): vLLM's merged gate/up weight holds the
    gate rows, then the up rows; two accumulators."""
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
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
    _silu_mul_store(out_ptr, acc_gate, acc_up, offs_m, offs_n, M, stride_om)


@triton.jit
def _interleaved_silu_mul(x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          GROUP_M: tl.constexpr):
    """The same output from a weight whose rows interleave gate and up (gate n at row 2n, up n at
    2n + 1, see :func:`interleave`): one dot of 2 x BLOCK_N columns per step, split in the epilogue."""
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = pid_n * 2 * BLOCK_N + tl.arange(0, 2 * BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    w = w_ptr + offs_w[None, :] * stride_wn + offs_k[:, None]
    row_ok = offs_m[:, None] < M
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):
        acc = tl.dot(tl.load(x, mask=row_ok, other=0.0), tl.load(w), acc)
        x += BLOCK_K
        w += BLOCK_K
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    _silu_mul_store(out_ptr, gate, up, offs_m, offs_n, M, stride_om)


KERNELS = {"dual": _gate_up_silu_mul, "interleaved": _interleaved_silu_mul}
TUNED = {name: triton.autotune(configs=CONFIGS, key=["M", "N", "K"])(kernel) for name, kernel in KERNELS.items()}


def interleave(w: torch.Tensor) -> torch.Tensor:
    """vLLM's merged gate/up weight ([gate rows; up rows]) with gate n at row 2n and up n at 2n + 1."""
    n = w.shape[0] // 2
    return torch.stack([w[:n], w[n:]], dim=1).reshape(w.shape)


def gate_up_silu_mul(x: torch.Tensor, w: torch.Tensor, kernel: str = "dual", config: dict | None = None) -> torch.Tensor:
    """``silu(x @ w[:N].T) * (x @ w[N:].T)`` for a merged gate/up weight ``w`` of ``2N`` rows
    (interleaved by :func:`interleave` for the "interleaved" kernel), in one kernel; autotuned
    unless ``config`` (a dict with the BLOCK_* / GROUP_M keys, and optionally num_warps / num_stages)."""
    M, K = x.shape
    N = w.shape[0] // 2
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    args = (x, w, out, M, N, K, x.stride(0), w.stride(0), out.stride(0))
    if config is None:
        TUNED[kernel][lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)](*args)
        return out
    assert K % config["BLOCK_K"] == 0 and N % config["BLOCK_N"] == 0, (K, N, config)
    KERNELS[kernel][(triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"]),)](*args, **config)
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


def check_interpreted() -> None:
    """Both kernels' maths on a CPU (Triton's interpreter), small shapes, float32 and float16: the
    interpreter's ``tl.dot`` misreads bfloat16 (Triton 3.9), so bfloat16 is checked on the GPU run
    (``max_abs_err`` against the unfused path)."""
    torch.manual_seed(0)
    config = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
        x = torch.randn(40, 64).to(dtype)  # 40 rows: a partial row block
        w = (torch.randn(2 * 48, 64) * 0.1).to(dtype)
        ref = unfused(x.float(), w.float())
        for kernel, weight in (("dual", w), ("interleaved", interleave(w))):
            err = (gate_up_silu_mul(x, weight, kernel, config).float() - ref).abs().max().item()
            emit({"phase": "interpret", "kernel": kernel, "dtype": str(dtype), "max_abs_err": err}, RESULTS)
            assert err < tol, (kernel, dtype, err)


def time_ms(fn, iters: int) -> float:
    """Mean GPU time of ``fn`` in ms over ``iters`` back-to-back calls, after one warm call."""
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
    p.add_argument("--interpret", action="store_true", help="check the kernels on a CPU with Triton's interpreter")
    a = p.parse_args()
    if a.interpret:
        return check_interpreted()
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return
    torch.manual_seed(0)
    x = torch.randn(a.tokens, a.hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * a.intermediate, a.hidden, device="cuda", dtype=torch.bfloat16) * 0.03
    w_interleaved = interleave(w)
    ref = unfused(x, w)
    flop = 2 * a.tokens * a.hidden * 2 * a.intermediate
    res = {"phase": "fused_mlp", "tokens": a.tokens, "hidden": a.hidden, "intermediate": a.intermediate,
           "device": torch.cuda.get_device_name(), "triton": triton.__version__,
           "unfused_silu": "vllm" if vllm_silu_and_mul() is not None else "torch (vLLM not installed)"}
    runs = {"gemm_only": lambda: x @ w.t(), "unfused": lambda: unfused(x, w),
            "dual": lambda: gate_up_silu_mul(x, w, "dual"),
            "interleaved": lambda: gate_up_silu_mul(x, w_interleaved, "interleaved")}
    for name, fn in runs.items():
        out = fn()  # the fused kernels autotune on their first call
        if name in KERNELS:
            res[f"{name}_max_abs_err"] = (out.float() - ref.float()).abs().max().item()
            res[f"{name}_best_config"] = str(TUNED[name].best_config)
        ms = time_ms(fn, a.iters)
        res[f"{name}_ms"] = round(ms, 4)
        res[f"{name}_tflops"] = round(flop / ms / 1e9, 1)
    emit(res, RESULTS)


if __name__ == "__main__":
    main()
