"""The PoC forward pass, run inside each vLLM worker outside the scheduler.

A vLLM attention layer reads KV-cache slots and metadata that only the scheduler builds, so a
direct forward would read garbage. For the duration of one PoC call every ``Attention`` module
gets a forward that computes plain causal attention over the batch's own q, k, v; no KV block is
read or written, so live inference on the same engine is unaffected. A PoC distance reads one
hidden state per nonce (the last position's), so the final decoder layer can skip the rest of its
rows after keys and values. Everything is restored on exit, also when the call fails.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from poc_serve.engine.kernels import flash_kernel, fusable_blocks
from poc_serve.engine.vllm_compat import (
    LLAMA_STYLE_DECODER_LAYERS,
    attention_modules,
    attention_scale,
    decoder_layers,
    decoder_stack,
    final_decoder_layer,
    qk_norm_rope_arguments,
)
from poc_serve.poc import layer_householder, layer_transform

# A per-token map of a layer's output tensor ``t`` given the layer's Householder vector ``v``.
LayerMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _causal_attention_forward(attn: nn.Module, batch: int, seq_len: int, flash: tuple | None,
                              cu_seqlens: tuple[torch.Tensor, torch.Tensor] | None, last_only: bool):
    """Causal attention of each sequence over its own keys; with ``last_only``, for the last query
    of each sequence only (rows ``[batch, heads * head_size]``). ``flash``: vLLM's FlashAttention
    ``(varlen function, version)`` with ``cu_seqlens`` = (sequence starts in q, in k/v), or None for SDPA."""
    heads, kv_heads, head_size = attn.num_heads, attn.num_kv_heads, attn.head_size
    scale = attention_scale(attn)
    if flash is not None:
        varlen, version = flash
        cu_seqlens_q, cu_seqlens_k = cu_seqlens

        def flash_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            # k, v (and q for every position) are views of the qkv rows. FlashAttention aligns the
            # causal mask bottom-right, so one query per sequence sees all of that sequence's keys.
            if last_only:
                q = query.view(batch, seq_len, heads, head_size)[:, -1].contiguous()  # batch rows
            else:
                q = query.view(-1, heads, head_size)
            out = varlen(q, key.view(-1, kv_heads, head_size), value.view(-1, kv_heads, head_size),
                         max_seqlen_q=1 if last_only else seq_len, cu_seqlens_q=cu_seqlens_q,
                         max_seqlen_k=seq_len, cu_seqlens_k=cu_seqlens_k, softmax_scale=scale,
                         causal=True, fa_version=version)
            return out.view(-1, heads * head_size)

        return flash_forward

    def sdpa_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # Strided views, no copies: making q/k/v contiguous first cost 31 ms per 1024 nonces on H100.
        q = query.view(batch, seq_len, heads, head_size).transpose(1, 2)
        k = key.view(batch, seq_len, kv_heads, head_size).transpose(1, 2)
        v = value.view(batch, seq_len, kv_heads, head_size).transpose(1, 2)
        if last_only:
            q = q[:, :, -1:]  # SDPA aligns the causal mask top-left: the last query needs no mask
        # Grouped KV heads through SDPA's native GQA: copying the KV heads instead measured 12% slower
        # on an H100 (5,326 vs 6,024 nonces/s, docs/benchmarks.md).
        out = F.scaled_dot_product_attention(q, k, v, is_causal=not last_only, scale=scale,
                                             enable_gqa=kv_heads != heads)
        return out.transpose(1, 2).reshape(-1, heads * head_size)

    return sdpa_forward


def _last_position_layer_forward(layer: nn.Module, batch: int, seq_len: int):
    """The forward of vLLM's Llama/Qwen decoder layers, from the attention output on for each
    sequence's last position only (its attention returns just those rows)."""

    def forward(positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = layer.input_layernorm(hidden_states)
        else:
            hidden_states, residual = layer.input_layernorm(hidden_states, residual)
        hidden_states = layer.self_attn(positions=positions, hidden_states=hidden_states)
        # The fused add + norm writes its inputs in place: the selected rows get their own storage.
        residual = residual.view(batch, seq_len, -1)[:, -1].contiguous()
        hidden_states, residual = layer.post_attention_layernorm(hidden_states, residual)
        return layer.mlp(hidden_states), residual

    return forward


@contextlib.contextmanager
def _swapped_forwards(forwards: dict[nn.Module, Callable]) -> Iterator[None]:
    """Give each module its own ``forward`` (an instance attribute, which ``nn.Module.__call__``
    finds before the class's) for the duration; removed again on exit, also when the body fails."""
    try:
        for module, forward in forwards.items():
            module.forward = forward
        yield
    finally:
        for module in forwards:
            module.__dict__.pop("forward", None)


@contextlib.contextmanager
def poc_attention(model: nn.Module, batch: int, seq_len: int, dtype: torch.dtype, flash_attention: bool = True,
                  last_position_only: bool = True) -> Iterator[None]:
    """Give every attention layer of ``model`` a self-contained causal attention forward.

    ``flash_attention``: vLLM's FlashAttention varlen kernel (version 3 on Hopper) where the build
    has it and the model is 16-bit, else torch SDPA (:func:`poc_serve.engine.kernels.attention_kernel`
    says which).
    ``last_position_only``: the model's final decoder layer (where this pipeline stage has it and
    it is a Llama/Qwen-style layer) still computes keys and values for every position, but the
    attention output, o_proj and MLP only for each sequence's last position, the one hidden state
    the PoC distance reads; the model then returns ``[batch, hidden]`` rows instead of
    ``[batch * seq_len, hidden]``.
    """
    layers = attention_modules(model)
    if not layers:
        raise RuntimeError(f"no vLLM Attention layer found in {type(model).__name__}")
    final = final_decoder_layer(decoder_stack(model)) if last_position_only else None
    if type(final).__name__ not in LLAMA_STYLE_DECODER_LAYERS:
        final = None  # another layer forward: run it whole rather than guess its maths
    trimmed = set(attention_modules(final)) if final is not None else set()
    flash, cu_seqlens = flash_kernel(flash_attention, dtype), None
    if flash is not None:  # sequence starts, shared by all layers: one query per sequence, or all
        device = next(model.parameters()).device
        every = torch.arange(0, (batch + 1) * seq_len, seq_len, dtype=torch.int32, device=device)
        last = torch.arange(batch + 1, dtype=torch.int32, device=device)
    forwards: dict[nn.Module, Callable] = {}
    for attn in layers:
        if flash is not None:
            cu_seqlens = (last, every) if attn in trimmed else (every, every)
        forwards[attn] = _causal_attention_forward(attn, batch, seq_len, flash, cu_seqlens, attn in trimmed)
    if final is not None:
        forwards[final] = _last_position_layer_forward(final, batch, seq_len)
    with _swapped_forwards(forwards):
        yield


def _fused_qk_norm_rope_forward(block: nn.Module, kernel, dtype: torch.dtype):
    args = qk_norm_rope_arguments(block, dtype)
    splits = [block.q_size, block.kv_size, block.kv_size]

    def forward(positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = block.qkv_proj(hidden_states)
        kernel(qkv, args["num_heads_q"], args["num_heads_k"], args["num_heads_v"], args["head_dim"], args["eps"],
               args["q_weight"], args["k_weight"], args["cos_sin_cache"], args["is_neox"], positions.view(-1), -1)
        q, k, v = qkv.split(splits, dim=-1)
        output, _ = block.o_proj(block.attn(q, k, v))
        return output

    return forward


@contextlib.contextmanager
def fused_qk_norm_rope(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Run q/k RMSNorm and rotary of Qwen3-style attention blocks as ONE in-place CUDA kernel.

    vLLM's eager forward runs them as three kernels over strided per-head views, which cost more
    GPU time than the attention itself (26.7 + 15.0 of 154 ms per 1024 nonces on an H100,
    docs/benchmarks.md). Only on builds with the kernel, for 16-bit models whose blocks it
    recognises (:func:`poc_serve.engine.kernels.uses_fused_qk_norm_rope`); everything is restored on exit.
    """
    kernel, blocks = fusable_blocks(model, dtype)
    with _swapped_forwards({block: _fused_qk_norm_rope_forward(block, kernel, dtype) for block in blocks}):
        yield


@contextlib.contextmanager
def householder_layer_hooks(decoder: nn.Module, block_hash: str, hidden_size: int, device: torch.device,
                            transform: LayerMap = layer_transform) -> Iterator[None]:
    """Transform every decoder layer's output with its layer's Householder vector ``v_i``
    (``layer_householder``, global index ``i``): both tensors a vLLM layer outputs (hidden states
    and residual) become ``transform(t, v_i)`` per token.

    ``transform``: v1's ``layer_hooks`` mode normalises then reflects (``layer_transform``, the
    default); v2 reflects only (``layer_reflection``), which, being linear, reflects the layer's
    sum as the spec says."""
    handles = []

    def hook_for(index: int):
        v = layer_householder(block_hash, index, hidden_size, device)

        def hook(module: nn.Module, inputs: tuple, output: tuple[torch.Tensor, torch.Tensor]):
            hidden, residual = output
            return transform(hidden, v), transform(residual, v)

        return hook

    try:
        for index, layer in decoder_layers(decoder):
            handles.append(layer.register_forward_hook(hook_for(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()
