"""The PoC forward's attention swap (:func:`poc_serve.engine.forward.poc_attention`), on CPU.

The decoder here is a small stand-in with the structure and attribute names of vLLM's Llama/Qwen
models (``model.model.layers``, ``start_layer``/``end_layer``, decoder layers calling
``input_layernorm``/``self_attn``/``post_attention_layernorm``/``mlp`` with vLLM's residual
convention, an ``Attention`` module that cannot run without scheduler metadata). The expected
values come from plain causal attention written out with an explicit mask, so the test checks the
swap's masks, GQA, the last-position trimming of the final layer and the FlashAttention call's
arguments (against a plain-torch implementation of FlashAttention's varlen contract).
"""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from poc_serve.engine import forward, kernels

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, LAYERS = 4, 2, 8, 32, 3
BATCH, SEQ_LEN = 3, 5


class Attention(nn.Module):
    """Stands in for vLLM's Attention layer: unusable outside the scheduler."""

    def __init__(self):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_size = HEADS, KV_HEADS, HEAD_DIM
        self.impl = SimpleNamespace(scale=HEAD_DIM ** -0.5)

    def forward(self, q, k, v):
        raise RuntimeError("vLLM attention needs the scheduler's metadata")


def causal_attention(q, k, v, scale):
    """Reference: per sequence, softmax(q k^T * scale + causal mask) v, KV heads shared by groups."""
    q = q.view(BATCH, SEQ_LEN, HEADS, HEAD_DIM).transpose(1, 2)
    k = k.view(BATCH, SEQ_LEN, KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(HEADS // KV_HEADS, dim=1)
    v = v.view(BATCH, SEQ_LEN, KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(HEADS // KV_HEADS, dim=1)
    mask = torch.ones(SEQ_LEN, SEQ_LEN, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(BATCH * SEQ_LEN, HEADS * HEAD_DIM)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_size, self.kv_size = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
        self.qkv_proj = nn.Linear(HIDDEN, self.q_size + 2 * self.kv_size)
        self.o_proj = nn.Linear(self.q_size, HIDDEN)
        self.attn = Attention()
        self.reference = False  # True: run the reference attention instead of self.attn

    def forward(self, positions, hidden_states):
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        out = causal_attention(q, k, v, self.attn.impl.scale) if self.reference else self.attn(q, k, v)
        return self.o_proj(out)


class AddNorm(nn.Module):
    """vLLM's RMSNorm convention: ``norm(x)``, or ``(norm(x + residual), x + residual)`` written in
    place into ``x`` and ``residual``, which (as for vLLM's fused kernel) must be contiguous."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(HIDDEN))

    def norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    def forward(self, x, residual=None):
        if residual is None:
            return self.norm(x)
        assert x.is_contiguous() and residual.is_contiguous(), "fused add + RMSNorm needs contiguous rows"
        residual.add_(x)
        x.copy_(self.norm(residual))
        return x, residual


class Qwen3DecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = AddNorm(), AddNorm()
        self.self_attn = SelfAttention()
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 2 * HIDDEN), nn.SiLU(), nn.Linear(2 * HIDDEN, HIDDEN))

    def forward(self, positions, hidden_states, residual):  # vLLM's decoder layer, line for line
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class Decoder(nn.Module):
    def __init__(self, end_layer: int = LAYERS):
        super().__init__()
        self.layers = nn.ModuleList(Qwen3DecoderLayer() for _ in range(LAYERS))
        self.start_layer, self.end_layer = 0, end_layer
        self.norm = AddNorm()

    def forward(self, positions, hidden_states):
        residual = None
        for layer in self.layers[self.start_layer:self.end_layer]:
            hidden_states, residual = layer(positions, hidden_states, residual)
        return self.norm(hidden_states, residual)[0]


def torch_flash_attn_varlen(q, k, v, max_seqlen_q, cu_seqlens_q, max_seqlen_k, cu_seqlens_k, softmax_scale,
                            causal, fa_version):
    """FlashAttention's varlen contract in plain torch: rows ``cu_seqlens[i]:cu_seqlens[i+1]`` are
    sequence ``i``; the causal mask is aligned to the bottom right of each sequence's scores."""
    assert causal and fa_version == 3 and q.dim() == k.dim() == 3
    out = []
    for i in range(len(cu_seqlens_q) - 1):
        qi = q[cu_seqlens_q[i]:cu_seqlens_q[i + 1]].transpose(0, 1)
        ki = k[cu_seqlens_k[i]:cu_seqlens_k[i + 1]].transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, dim=0)
        vi = v[cu_seqlens_k[i]:cu_seqlens_k[i + 1]].transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, dim=0)
        lq, lk = qi.shape[1], ki.shape[1]
        assert lq <= max_seqlen_q and lk <= max_seqlen_k
        mask = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
        scores = (qi @ ki.transpose(-1, -2) * softmax_scale).masked_fill(~mask, -math.inf)
        out.append((scores.softmax(-1) @ vi).transpose(0, 1))
    return torch.cat(out)


def fa3_only(version: int) -> bool:
    """vLLM's ``is_fa_version_supported`` on a Hopper GPU whose build has FlashAttention 3."""
    return version == 3


def build(end_layer: int = LAYERS) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Module()
    model.model = Decoder(end_layer)
    return model


def run(model, dtype=torch.bfloat16, hooks=False, **options):
    """The decoder's output through the swap (``options`` as for ``poc_attention``). ``dtype`` is
    the model dtype the kernel choice sees; the stand-in computes in float32 for tight comparisons."""
    torch.manual_seed(1)
    embeds = torch.randn(BATCH * SEQ_LEN, HIDDEN)
    layer_hooks = (forward.householder_layer_hooks(model.model, "block", HIDDEN, "cpu") if hooks
                   else contextlib.nullcontext())
    with torch.no_grad(), forward.poc_attention(model, BATCH, SEQ_LEN, dtype, **options), layer_hooks:
        return model.model(torch.arange(SEQ_LEN).repeat(BATCH), embeds)


def reference(model):
    """The decoder's output with the reference attention, every position."""
    for block in model.modules():
        if isinstance(block, SelfAttention):
            block.reference = True
    torch.manual_seed(1)
    embeds = torch.randn(BATCH * SEQ_LEN, HIDDEN)
    with torch.no_grad():
        return model.model(torch.arange(SEQ_LEN).repeat(BATCH), embeds)


@pytest.fixture(params=["sdpa", "flash"])
def kernel(request, monkeypatch):
    """Every test using it runs twice: with torch SDPA and with (a stand-in of) FlashAttention."""
    flash = (torch_flash_attn_varlen, fa3_only) if request.param == "flash" else None
    monkeypatch.setattr(kernels, "flash_attention_varlen", lambda: flash)


def test_all_positions_match_plain_causal_attention(kernel):
    got = run(build(), last_position_only=False)
    assert got.shape == (BATCH * SEQ_LEN, HIDDEN)
    torch.testing.assert_close(got, reference(build()), atol=1e-5, rtol=1e-5)


def test_last_position_only_gives_the_last_rows_of_the_full_forward(kernel):
    full = run(build(), last_position_only=False).view(BATCH, SEQ_LEN, HIDDEN)
    got = run(build(), last_position_only=True)
    assert got.shape == (BATCH, HIDDEN)
    torch.testing.assert_close(got, full[:, -1], atol=1e-5, rtol=1e-5)
    # The comparison can fail: another position's row differs.
    assert not torch.allclose(got, full[:, -2], atol=1e-3)


def test_last_position_only_with_layer_hooks(kernel):
    """The hooks transform the final layer's (hidden, residual) rows, however many there are."""
    full = run(build(), hooks=True, last_position_only=False).view(BATCH, SEQ_LEN, HIDDEN)
    got = run(build(), hooks=True, last_position_only=True)
    torch.testing.assert_close(got, full[:, -1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, run(build(), last_position_only=True), atol=1e-3)  # the hooks acted


def test_an_unknown_final_layer_runs_every_position(kernel):
    model = build()
    model.model.layers[-1].__class__ = type("GemmaLikeDecoderLayer", (Qwen3DecoderLayer,), {})
    got = run(model, last_position_only=True)
    assert got.shape == (BATCH * SEQ_LEN, HIDDEN)
    torch.testing.assert_close(got, reference(build()), atol=1e-5, rtol=1e-5)


def test_flash_attention_only_for_16_bit_models_and_where_vllm_has_it(monkeypatch):
    monkeypatch.setattr(kernels, "flash_attention_varlen", lambda: (torch_flash_attn_varlen, fa3_only))
    assert kernels.attention_kernel(True, torch.bfloat16) == "fa3"
    assert kernels.attention_kernel(True, torch.float16) == "fa3"
    assert kernels.attention_kernel(True, torch.float32) == "sdpa"
    assert kernels.attention_kernel(False, torch.bfloat16) == "sdpa"
    # A float32 model runs SDPA even where FlashAttention exists (it takes 16-bit inputs only).
    torch.testing.assert_close(run(build(), dtype=torch.float32, last_position_only=False), reference(build()),
                               atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(kernels, "flash_attention_varlen", lambda: None)
    assert kernels.attention_kernel(True, torch.bfloat16) == "sdpa"


@pytest.mark.parametrize("supported, kernel", [((3, 2), "fa3"), ((2,), "fa2"), ((), "sdpa")])
def test_flash_attention_runs_the_newest_version_the_gpu_runs(monkeypatch, supported, kernel):
    monkeypatch.setattr(kernels, "flash_attention_varlen", lambda: (torch_flash_attn_varlen, supported.__contains__))
    assert kernels.attention_kernel(True, torch.bfloat16) == kernel


def test_a_pipeline_stage_without_the_final_layer_runs_every_position(kernel):
    got = run(build(end_layer=LAYERS - 1), last_position_only=True)
    assert got.shape == (BATCH * SEQ_LEN, HIDDEN)
    torch.testing.assert_close(got, reference(build(end_layer=LAYERS - 1)), atol=1e-5, rtol=1e-5)


def test_swaps_are_undone_also_when_the_forward_fails():
    model = build()
    with pytest.raises(RuntimeError, match="boom"):
        with forward.poc_attention(model, BATCH, SEQ_LEN, torch.bfloat16):
            assert "forward" in model.model.layers[-1].__dict__
            raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ for m in model.modules())
    with pytest.raises(RuntimeError, match="scheduler"):  # vLLM's own forward is back
        model.model.layers[0].self_attn.attn(None, None, None)


def test_a_model_without_vllm_attention_is_refused():
    with pytest.raises(RuntimeError, match="no vLLM Attention layer"):
        with forward.poc_attention(nn.Linear(2, 2), BATCH, SEQ_LEN, torch.bfloat16):
            pass
