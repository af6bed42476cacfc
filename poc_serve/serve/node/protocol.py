"""Request and answer models of the ML-node management routes (ml-node spec sections 2.2-2.7, 4.1).

As with PoC v2, request bodies ignore unknown keys (the DAPI adds keys over time) but validate the
types of those they read (a number where a string belongs is a 422 naming the field). Every int is
bounded to int64, the Go client's type. Answer models carry exactly the spec's keys (the reference
ML node's shapes); the DAPI ignores keys it does not know, so the one addition here, a device's
``uuid``, is harmless.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from poc_serve.serve.http.bounds import Int64

NodeState = Literal["INFERENCE", "POW", "STOPPED"]
PocStatus = Literal["IDLE", "GENERATING", "VALIDATING", "MIXED", "NO_BACKENDS"]
ModelCacheStatus = Literal["DOWNLOADED", "DOWNLOADING", "NOT_FOUND", "PARTIAL"]
# A git revision: a commit hash, a branch or tag name, or refs/pr/N; never a path out of the cache.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-]{0,254}$")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- /api/v1/state, /api/v1/versions, /api/v1/stop, /api/v1/inference/up ---


class StateResponse(_Lenient):
    """``GET /api/v1/state``. The DAPI reads ``state``, ``version`` and ``poc_validation_inference``."""

    version: str = Field(description="The node's software version; keep it stable (a change is a chain transaction).")
    state: NodeState = Field(description="INFERENCE while a model is served (PoC v2 included), POW during a v1 "
                                         "round, STOPPED when nothing is served.")
    poc_status: PocStatus | None = Field(None, description="PoC v2 status of the backends; null when stopped.")
    inference_healthy: bool | None = Field(None, description="Whether inference answers; null when stopped.")
    loaded_model: str | None = Field(None, description="The served model name; null when stopped.")
    poc_validation_inference: bool = Field(False, description="Whether chat runs correctly while PoC v2 "
                                                              "validation jobs run (spec 4).")


class VersionsResponse(_Lenient):
    """``GET /api/v1/versions`` (spec 4.1): fails closed, ``poc_validation_inference`` false on any error."""

    version: str = Field(description="The node's software version, as in /api/v1/state.")
    vllm_version: str | None = Field(None, description="The vLLM version the engines run; null if unknown.")
    poc_validation_inference: bool = Field(False, description="As in /api/v1/state.")


class StatusOK(_Lenient):
    """``{"status": "OK"}``: the reference's answer to ``stop`` and to a successful ``inference/up``."""

    status: Literal["OK"] = "OK"


class InferenceUpRequest(_Lenient):
    """Body of ``POST /api/v1/inference/up`` (spec 2.4)."""

    model: str = Field(min_length=1, max_length=4096, description="The governance model id (or a local path, or "
                                                                  "a built-in random model).")
    dtype: str = Field("auto", max_length=64, description="vLLM --dtype; the DAPI sends \"auto\".")
    additional_args: list[str] = Field(default_factory=list, max_length=1024,
                                       description="vLLM command-line arguments: the chain's model args, then "
                                                   "the node config's.")

    @field_validator("additional_args")
    @classmethod
    def _bounded_args(cls, args: list[str]) -> list[str]:
        for arg in args:
            if len(arg) > 65536:
                raise ValueError(f"an argument is longer than 65536 characters: {arg[:40]!r}...")
        return args


# --- /api/v1/gpu/devices and /api/v1/gpu/driver (spec 2.6) ---


class GpuDevice(_Lenient):
    """One GPU. The DAPI groups available devices as ``"{name} | {total_memory_mb/1024}GB"``."""

    index: Int64 = Field(description="NVML index on its host.")
    name: str = Field(description="Product name, e.g. NVIDIA H200.")
    total_memory_mb: Int64 | None = Field(None, description="Total memory in MiB (stable).")
    free_memory_mb: Int64 | None = Field(None, description="Free memory in MiB now.")
    used_memory_mb: Int64 | None = Field(None, description="Used memory in MiB now.")
    utilization_percent: Int64 | None = Field(None, description="GPU utilisation over NVML's last sample period.")
    temperature_c: Int64 | None = Field(None, description="Core temperature in Celsius.")
    is_available: bool = Field(description="Whether NVML answered for the device.")
    error_message: str | None = Field(None, description="Why it is not available.")
    uuid: str | None = Field(None, description="NVML UUID (not in the spec: lets answers of several replicas "
                                               "on one host be merged without counting a GPU twice).")


class GpuDevicesResponse(_Lenient):
    """``GET /api/v1/gpu/devices``: an empty list (count 0) on a node without GPUs."""

    devices: list[GpuDevice] = Field(default_factory=list)
    count: Int64 = 0


class GpuDriverResponse(_Lenient):
    """``GET /api/v1/gpu/driver`` (503 where NVML is not available)."""

    driver_version: str
    cuda_driver_version: str
    nvml_version: str


# --- model cache routes (spec 2.7) ---


class HFModel(_Lenient):
    """A model in the Hugging Face cache: the spec's ``Model``, the body of status, download and DELETE."""

    hf_repo: str = Field(min_length=1, max_length=256, description="Repo id, e.g. Qwen/Qwen3-0.6B (or a built-in "
                                                                   "random model name).")
    hf_commit: str | None = Field(None, description="Commit hash, branch or tag; null: the latest (main).")

    @field_validator("hf_repo")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(value)
        except HFValidationError as exc:
            raise ValueError(f"not a Hugging Face repo id: {exc}") from None
        return value

    @field_validator("hf_commit")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and (not _REVISION.match(value) or ".." in value):
            raise ValueError("not a git revision (a commit hash, branch or tag name)")
        return value

    def task_id(self) -> str:
        """``<repo>:<commit|latest>``, the id of this model's download."""
        return f"{self.hf_repo}:{self.hf_commit or 'latest'}"


class DownloadProgress(_Lenient):
    start_time: float = Field(description="Unix time the download started.")
    elapsed_seconds: float = Field(description="Seconds since then.")


class ModelStatusResponse(_Lenient):
    """Answer of ``POST /api/v1/models/status``."""

    model: HFModel
    status: ModelCacheStatus
    progress: DownloadProgress | None = Field(None, description="While DOWNLOADING.")
    error_message: str | None = Field(None, description="Why the last download failed, if it did.")


class DownloadResponse(_Lenient):
    """Answer of ``POST /api/v1/models/download``: 202 while DOWNLOADING, 200 when already DOWNLOADED."""

    task_id: str
    status: ModelCacheStatus
    model: HFModel


class ModelListItem(_Lenient):
    model: HFModel
    status: Literal["DOWNLOADED", "PARTIAL"]


class ModelListResponse(_Lenient):
    """Answer of ``GET /api/v1/models/list``: every cached model revision."""

    models: list[ModelListItem] = Field(default_factory=list)


class DiskSpaceResponse(_Lenient):
    """Answer of ``GET /api/v1/models/space``."""

    cache_size_gb: float = Field(description="Size of the Hugging Face cache, GiB.")
    available_gb: float = Field(description="Free space on the cache's file system, GiB.")
    cache_path: str = Field(description="The cache directory.")


class DeleteResponse(_Lenient):
    """Answer of ``DELETE /api/v1/models``."""

    status: Literal["deleted", "cancelled"]
    model: HFModel
