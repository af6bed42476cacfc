"""Independent reference of the per-nonce computation: transformers forward + spec post-processing."""

from __future__ import annotations

import torch
from transformers import AutoModel

from poc_serve.poc import (
    input_embeddings,
    layer_householder,
    layer_reflection,
    layer_transform,
    nonce_artifacts,
    nonce_distances,
)


def load_reference_model(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """The checkpoint's decoder stack (``AutoModel``) with eager sdpa attention."""
    return AutoModel.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").eval()


@torch.inference_mode()
def reference_last_hidden(model, block_hash: str, public_key: str, nonces: list[int], seq_len: int,
                          randomization: str = "sign_flips") -> torch.Tensor:
    """Final-norm hidden state at the last position, ``[B, H]`` float32."""
    param = next(model.parameters())
    emb = input_embeddings(block_hash, public_key, nonces, seq_len, model.config.hidden_size, param.device, param.dtype)
    if randomization == "sign_flips":
        return model(inputs_embeds=emb).last_hidden_state[:, -1].float()
    return layer_hooks_forward(model, emb, block_hash)[:, -1].float()


def layer_hooks_forward(model, emb: torch.Tensor, block_hash: str) -> torch.Tensor:
    """Final-norm hidden states ``[B, S, H]`` of a transformers decoder in the layer_hooks mode."""
    # Written out layer by layer with vLLM's split of a layer's output into the MLP output
    # ("hidden states") and the running residual, both of which the layer_hooks mode transforms.
    batch, seq_len, hidden_size = emb.shape
    positions = torch.arange(seq_len, device=emb.device)[None].expand(batch, -1)
    rotary = model.rotary_emb(emb, positions)
    hidden, residual = emb, None
    for index, layer in enumerate(model.layers):
        residual = hidden if residual is None else hidden + residual
        h = layer.input_layernorm(residual)
        h = layer.self_attn(hidden_states=h, position_embeddings=rotary, attention_mask=None)[0]
        residual = h + residual
        h = layer.mlp(layer.post_attention_layernorm(residual))
        v = layer_householder(block_hash, index, hidden_size, emb.device)
        hidden, residual = layer_transform(h, v), layer_transform(residual, v)
    return model.norm(hidden + residual)


def reference_distances(model, block_hash: str, public_key: str, nonces: list[int], seq_len: int,
                        randomization: str = "sign_flips") -> list[float]:
    """Distances of ``nonces`` by the reference path."""
    last = reference_last_hidden(model, block_hash, public_key, nonces, seq_len, randomization)
    return nonce_distances(last, block_hash, public_key, nonces, randomization).tolist()


@torch.inference_mode()
def reference_artifacts(model, block_hash: str, public_key: str, nonces: list[int], seq_len: int, k: int = 12,
                        stronger_rng: bool = False) -> torch.Tensor:
    """PoC v2 artifacts ``[B, k]`` float16 by the reference path (poc-v2.md section 1): every
    transformers decoder layer's output (the residual stream) reflected with ``v_i``, the
    final-norm state at the last position, then the artifact maths."""
    param = next(model.parameters())
    hidden_size = model.config.hidden_size
    emb = input_embeddings(block_hash, public_key, nonces, seq_len, hidden_size, param.device, param.dtype,
                           stronger_rng=stronger_rng)

    def hook_for(index: int):
        v = layer_householder(block_hash, index, hidden_size, param.device)

        def hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            reflected = layer_reflection(hidden, v)
            return (reflected, *output[1:]) if isinstance(output, tuple) else reflected

        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(model.layers)]
    try:
        last = model(inputs_embeds=emb).last_hidden_state[:, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    artifacts, finite = nonce_artifacts(last, block_hash, public_key, nonces, k)
    assert bool(finite.all())
    return artifacts
