"""Quantised engines: which keep PoC batch independent, the FP8 checkpoint converter, and an
engine that refuses a batch-dependent setting before loading any weight."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from poc_serve.engine.quantization import BatchDependentQuantizationError, batch_dependence, check_batch_independent
from poc_serve.models.fp8 import (
    BLOCK,
    QUANTIZATION_CONFIG,
    dequantize_block_fp8,
    is_quantised,
    quantize_block_fp8,
    quantize_checkpoint_fp8,
)
from poc_serve.models.tiny import resolve_model

BLOCK_CHECKPOINT = QUANTIZATION_CONFIG
PER_TENSOR_CHECKPOINT = {"quant_method": "fp8", "activation_scheme": "dynamic"}


@pytest.mark.parametrize("method,checkpoint,dependent", [
    (None, None, False),                         # 16-bit
    ("fp8", None, True),                         # online, one activation scale per tensor (measured)
    ("fp8_per_tensor", None, True),
    ("fp8_per_channel", None, False),            # per-token activation scales
    ("fp8_per_block", None, False),              # per 1x128 groups
    ("fp8", BLOCK_CHECKPOINT, False),            # the network's block-FP8 checkpoints
    ("fp8", PER_TENSOR_CHECKPOINT, True),
    ("fp8", {**PER_TENSOR_CHECKPOINT, "activation_scheme": "static"}, False),
])
def test_batch_dependence(method, checkpoint, dependent):
    assert (batch_dependence(method, checkpoint) is not None) is dependent


def test_refusal_names_the_alternatives():
    with pytest.raises(BatchDependentQuantizationError, match="fp8_per_channel.*fp8_per_block"):
        check_batch_independent("fp8", None)
    check_batch_independent("fp8_per_block", None)


@pytest.mark.parametrize("shape", [(300, 200), (128, 128), (64, 1000)])
def test_block_fp8_round_trip(shape):
    """One scale per 128 x 128 block (edge blocks smaller); dequantised weights within FP8's
    relative precision (3 mantissa bits: <= 1/16 per value, ~2.7% in norm for Gaussians)."""
    weight = torch.randn(*shape) * 0.05
    weight[:BLOCK, :BLOCK] *= 100  # a block of much larger values keeps its own scale
    quantised, scale_inv = quantize_block_fp8(weight)
    assert quantised.dtype == torch.float8_e4m3fn and quantised.shape == weight.shape
    assert scale_inv.shape == (-(-shape[0] // BLOCK), -(-shape[1] // BLOCK))
    restored = dequantize_block_fp8(quantised, scale_inv)
    # per value: half a step of 3 mantissa bits, or of the smallest subnormal (2^-9) near zero
    scale = scale_inv.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:shape[0], :shape[1]]
    assert ((restored - weight).abs() <= weight.abs() / 16 + scale * 2.0 ** -10 * 1.001).all()
    small = weight[BLOCK:, BLOCK:]
    if small.numel():
        assert ((restored[BLOCK:, BLOCK:] - small).norm() / small.norm()).item() < 0.04


def test_checkpoint_conversion(tmp_path):
    """The tiny MoE checkpoint converts: attention and expert weights in FP8 with their scales,
    router, norms and embeddings untouched, quantization_config in config.json."""
    from safetensors.torch import load_file

    source = resolve_model("poc-tiny-qwen3-moe")
    target = quantize_checkpoint_fp8(source, tmp_path / "fp8")
    before, after = load_file(f"{source}/model.safetensors"), load_file(f"{target}/model.safetensors")
    quantised = [name for name in before if is_quantised(name)]
    assert any(".experts." in n for n in quantised) and any("self_attn.q_proj" in n for n in quantised)
    for name, tensor in before.items():
        if name in quantised:
            assert after[name].dtype == torch.float8_e4m3fn
            assert after[name + "_scale_inv"].dtype == torch.float32
        else:
            assert torch.equal(after[name], tensor), name
    assert "model.layers.0.mlp.gate.weight" in before and "model.layers.0.mlp.gate.weight" not in quantised
    assert json.loads((target / "config.json").read_text())["quantization_config"] == QUANTIZATION_CONFIG
    assert (target / "tokenizer.json").exists()


def test_engine_refuses_per_tensor_online_fp8_before_loading():
    """A PoC engine asked for online per-tensor FP8 refuses at start, before vLLM loads weights."""
    pytest.importorskip("vllm")
    from poc_serve.engine.engine import PoCEngine
    from tests.support.engine_helpers import cpu_engine_config

    engine = PoCEngine(cpu_engine_config("poc-tiny-qwen3-moe", engine_kwargs={"quantization": "fp8"}))
    with pytest.raises(BatchDependentQuantizationError, match="online quantization 'fp8'"):
        asyncio.run(engine.start())
    assert engine.llm is None
