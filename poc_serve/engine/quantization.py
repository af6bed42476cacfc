"""Which quantised engines keep PoC deterministic.

A PoC result must not depend on the other nonces of its forward. Quantisation that takes one FP8
scale per activation TENSOR, on the fly, breaks that: the scale is the maximum over every token of
the forward, so a nonce's result moves with its neighbours (measured on one H200, 2026-12-01:
vLLM's online ``quantization: fp8`` gave a nonce other distances alone than inside a batch, at
seq_len 64, 256 and 1024, on a Qwen3-MoE and a dense Qwen3; docs/benchmarks.md). Per-token
(``fp8_per_channel``) and per-token-group (``fp8_per_block``, and block-quantised checkpoints
such as the network's Qwen3-235B-A22B-Instruct-2507-FP8) scales keep every row's result its own:
identical alone and in any batch, measured on the same runs. Static activation scales (fixed in
the checkpoint) are batch independent too.
"""

from __future__ import annotations

from typing import Any

# vLLM's online methods with one dynamic activation scale per tensor.
PER_TENSOR_ONLINE_METHODS = ("fp8", "fp8_per_tensor")
ALTERNATIVES = ("use engine_kwargs quantization 'fp8_per_channel' (per-token activation scales) or 'fp8_per_block' "
                "(per 128-value groups), or a block-quantized FP8 checkpoint")


class BatchDependentQuantizationError(ValueError):
    """The engine's quantisation would make a nonce's PoC result depend on its batch."""


def batch_dependence(method: str | None, checkpoint_config: dict[str, Any] | None) -> str | None:
    """Why quantisation ``method`` (vLLM's resolved ``quantization``) with the checkpoint's
    ``quantization_config`` (None for a 16-bit checkpoint) makes results batch dependent, or None
    when it does not."""
    if method is None:
        return None
    if checkpoint_config:  # the checkpoint decides how its layers are quantised
        per_tensor_dynamic = (checkpoint_config.get("quant_method") == "fp8"
                              and checkpoint_config.get("activation_scheme", "dynamic") == "dynamic"
                              and not checkpoint_config.get("weight_block_size"))
        return ("the checkpoint's FP8 layers take one dynamic activation scale per tensor (no weight_block_size)"
                if per_tensor_dynamic else None)
    if method in PER_TENSOR_ONLINE_METHODS:
        return f"online quantization {method!r} takes one dynamic activation scale per tensor"
    return None


def check_batch_independent(method: str | None, checkpoint_config: dict[str, Any] | None) -> None:
    """Raise :class:`BatchDependentQuantizationError`, naming what to use instead, when the
    quantisation would make a nonce's result depend on the other nonces of its forward."""
    reason = batch_dependence(method, checkpoint_config)
    if reason is not None:
        raise BatchDependentQuantizationError(
            f"{reason}, so a nonce's PoC result would depend on the other nonces in its forward and "
            f"honest proofs would fail validation; {ALTERNATIVES}")
