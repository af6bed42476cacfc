"""The ML-node contract's standalone pieces (ml-node spec 2.4, 2.6, 2.7): vLLM arguments of
``inference/up`` read by vLLM's own parser, the Hugging Face cache logic of the model routes over
a temporary cache (huggingface_hub's real scan, no network), and NVML on a CPU node."""

from __future__ import annotations

import hashlib
import json
import stat
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from poc_serve.engine.config import EngineConfig
from poc_serve.engine.vllm_args import (InvalidArgumentError, ModelNotFoundError, ServingArgsError,
                                        check_model_available, parse_inference_up)
from poc_serve.serve.node.gpu import GpuUnavailableError, gpu_devices, gpu_driver
from poc_serve.serve.node.models_cache import ModelCache, ModelCacheError, download_status_code
from poc_serve.serve.node.protocol import GpuDevicesResponse, HFModel, InferenceUpRequest, StateResponse

pytestmark = pytest.mark.unit

# The chain's model args (spec 2.4) and a node's local args.
QWEN_ARGS = ["--max-model-len", "240000", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
KIMI_ARGS = ["--max-model-len", "240000", "--tool-call-parser", "kimi_k2", "--reasoning-parser", "kimi_k2"]
MINIMAX_ARGS = ["--enable-auto-tool-choice", "--max-model-len", "180000", "--kv-cache-dtype", "fp8",
                "--tool-call-parser", "minimax_m2", "--reasoning-parser", "minimax_m2_append_think"]
MODEL = "poc-tiny-qwen3"


# --- inference/up arguments ---


def test_chain_args_map_onto_the_engine_and_serving_options():
    base = EngineConfig(max_model_len=4096, poc_forward_tokens=4096, enforce_eager=True)
    qwen = parse_inference_up(MODEL, "auto", QWEN_ARGS + ["--tensor-parallel-size", "2"], base)
    assert qwen.engine.max_model_len == 240000 and qwen.engine.tensor_parallel_size == 2
    assert qwen.engine.dtype == base.dtype and qwen.engine.model == MODEL  # "auto": the deployment's dtype
    assert qwen.engine.enforce_eager and qwen.engine.poc_forward_tokens == 4096  # the base's, not named
    assert (qwen.tool_call_parser, qwen.enable_auto_tool_choice, qwen.reasoning_parser) == ("hermes", True, None)
    assert qwen.served_model_name == MODEL and qwen.served_model_aliases == []

    kimi = parse_inference_up(MODEL, "auto", KIMI_ARGS, base)
    assert (kimi.tool_call_parser, kimi.enable_auto_tool_choice, kimi.reasoning_parser) == ("kimi_k2", False, "kimi_k2")
    assert "reasoning_parser" not in kimi.engine.engine_kwargs  # a serving option only

    minimax = parse_inference_up(MODEL, "auto", MINIMAX_ARGS, base)
    assert minimax.engine.max_model_len == 180000 and minimax.engine.engine_kwargs == {"kv_cache_dtype": "fp8"}
    assert minimax.reasoning_parser == "minimax_m2_append_think" and minimax.enable_auto_tool_choice


def test_other_engine_args_and_their_spellings():
    request = parse_inference_up(MODEL, "bfloat16", ["-tp", "2", "--pipeline_parallel_size=2", "--quantization", "fp8",
                                                     "--max-num-seqs", "8", "--gpu-memory-utilization", "0.5",
                                                     "--max-num-batched-tokens", "16k", "--seed", "7",
                                                     "--no-enforce-eager", "--dtype", "half"],
                                 EngineConfig(engine_kwargs={"max_num_seqs": 4, "enable_prefix_caching": False}))
    engine = request.engine
    assert (engine.tensor_parallel_size, engine.pipeline_parallel_size) == (2, 2)
    assert (engine.gpu_memory_utilization, engine.max_num_batched_tokens, engine.seed) == (0.5, 16000, 7)
    assert engine.dtype == "float16" and not engine.enforce_eager  # the last --dtype wins, as in vLLM
    assert engine.engine_kwargs == {"quantization": "fp8", "max_num_seqs": 8, "enable_prefix_caching": False}


def test_served_model_name_and_key():
    named = parse_inference_up(MODEL, "auto", ["--served-model-name", "Qwen/Qwen3-0.6B", "alias"])
    assert named.served_model_name == "Qwen/Qwen3-0.6B" and named.served_model_aliases == ["alias"]
    plain = parse_inference_up(MODEL, "auto", ["--tensor-parallel-size", "2"])
    assert parse_inference_up(MODEL, "auto", ["-tp", "2"]).key() == plain.key()  # spelling does not count
    assert parse_inference_up(MODEL, "auto", ["-tp", "2", "--uvicorn-log-level", "debug"]).key() == plain.key()
    assert parse_inference_up(MODEL, "auto", []).key() != plain.key() != named.key()
    assert parse_inference_up("poc-tiny-llama", "auto", ["-tp", "2"]).key() != plain.key()


@pytest.mark.parametrize("args, named", [
    (["--tensor-parallel-size", "two"], "--tensor-parallel-size"),  # a bad value
    (["--kv-cache-dtype", "int3"], "--kv-cache-dtype"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),  # EngineConfig's bound
    (["--no-such-flag"], "--no-such-flag"),  # unknown
    (["--port", "9000"], "--port"),  # known to vLLM, not honoured
    (["--host", "0.0.0.0"], "--host"),
    (["--data-parallel-size", "2"], "--data-parallel-size"),
    (["--max-model-len", "auto"], "--max-model-len"),
    (["--tool-call-parser", "no_such_parser"], "--tool-call-parser"),
    (["--enable-auto-tool-choice"], "--enable-auto-tool-choice"),
    (["--help"], "--help"),
    (["--config", "/etc/passwd"], "--config"),
    (["--model", "other/model"], "--model"),
    (["other/model"], "other/model"),
])
def test_refused_args_name_the_argument_and_never_exit(args, named):
    with pytest.raises(InvalidArgumentError) as caught:  # a SystemExit would fail the test instead
        parse_inference_up(MODEL, "auto", args)
    assert caught.value.argument == named and named in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_model_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model in ("nobody/no-such-model-here", "poc-no-such-builtin", str(tmp_path / "missing"), "bad name!"):
        with pytest.raises(ModelNotFoundError) as caught:
            parse_inference_up(model, "auto", [])
        assert model in str(caught.value) and isinstance(caught.value, ServingArgsError)
    assert check_model_available(MODEL) == "builtin" and check_model_available(str(tmp_path)) == "local"
    cache = tmp_path / "hub"
    _cached_repo(cache, "org/cached", COMPLETE)
    assert check_model_available("org/cached", cache_dir=cache) == "cache"
    # vLLM's --download-dir is where the model is looked for
    request = parse_inference_up("org/cached", "auto", ["--download-dir", str(cache)])
    assert request.engine.engine_kwargs == {"download_dir": str(cache)}


# --- the Hugging Face cache ---

COMMIT = "a" * 40
COMPLETE = {"config.json": b"{}", "model-00001-of-00002.safetensors": b"w1", "model-00002-of-00002.safetensors": b"w2",
            "model.safetensors.index.json": json.dumps({"weight_map": {
                "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}).encode()}


def _cached_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT, ref: str | None = "main",
                 incomplete: bool = False) -> Path:
    """A model repo laid out as huggingface_hub caches it: blobs, refs and a snapshot of symlinks."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / blob.name)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    if incomplete:
        (repo / "blobs" / "f00.incomplete").write_bytes(b"x")
    return repo


def test_cache_status_list_space_delete(tmp_path):
    cache = tmp_path / "hub"
    _cached_repo(cache, "org/complete", COMPLETE)
    missing_shard = {k: v for k, v in COMPLETE.items() if k != "model-00002-of-00002.safetensors"}
    _cached_repo(cache, "org/partial", missing_shard)
    _cached_repo(cache, "org/interrupted", COMPLETE, incomplete=True)
    models = ModelCache(cache)
    try:
        def status(repo, commit=None):
            return models.status(HFModel(hf_repo=repo, hf_commit=commit)).status

        assert status("org/complete") == status("org/complete", COMMIT) == "DOWNLOADED"
        assert status("org/complete", "main") == "DOWNLOADED"
        assert status("org/complete", "b" * 40) == "NOT_FOUND"
        assert status("org/partial") == status("org/interrupted") == "PARTIAL"
        assert status("org/absent") == "NOT_FOUND"
        assert status(MODEL) == "DOWNLOADED"  # built-in random models count as downloaded

        listed = {(m.model.hf_repo, m.model.hf_commit): m.status for m in models.list().models}
        assert listed == {("org/complete", COMMIT): "DOWNLOADED", ("org/partial", COMMIT): "PARTIAL",
                          ("org/interrupted", COMMIT): "PARTIAL"}
        space = models.space()
        assert space.cache_path == str(cache) and space.available_gb > 0 and 0 <= space.cache_size_gb < 0.001

        done = models.download(HFModel(hf_repo="org/complete"))  # nothing to fetch: 200
        assert done.status == "DOWNLOADED" and download_status_code(done) == 200
        assert done.task_id == "org/complete:latest"

        # The three repos share COMMIT: deleting one repo's revision leaves the others' alone.
        assert models.delete(HFModel(hf_repo="org/partial", hf_commit=COMMIT)).status == "deleted"
        assert status("org/partial") == "NOT_FOUND"
        assert status("org/complete") == "DOWNLOADED" and status("org/interrupted") == "PARTIAL"
        assert models.delete(HFModel(hf_repo="org/complete")).status == "deleted"
        assert status("org/complete") == "NOT_FOUND"
        for model, code in ((HFModel(hf_repo="org/complete"), 404), (HFModel(hf_repo=MODEL), 400)):
            with pytest.raises(ModelCacheError) as caught:
                models.delete(model)
            assert caught.value.status_code == code
    finally:
        models.close()


def test_offline_download_fails_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = ModelCache(tmp_path / "hub")
    model = HFModel(hf_repo="org/not-cached", hf_commit=None)
    try:
        answer = models.download(model)
        assert (answer.status, answer.task_id, download_status_code(answer)) == (
            "DOWNLOADING", "org/not-cached:latest", 202)
        deadline = time.monotonic() + 60
        while (status := models.status(model)).status == "DOWNLOADING":
            assert status.progress is not None and status.progress.elapsed_seconds >= 0
            assert time.monotonic() < deadline, "an offline download must end, not hang"
            time.sleep(0.2)
        assert status.status == "NOT_FOUND" and "HF_HUB_OFFLINE" in status.error_message
        assert "org/not-cached" in status.error_message
    finally:
        models.close()


def test_download_conflicts_and_cancel(tmp_path):
    # A stand-in for the download child that runs until cancelled.
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(sleeper.stat().st_mode | stat.S_IEXEC)
    models = ModelCache(tmp_path / "hub", python=str(sleeper))
    try:
        for i in range(3):
            assert models.download(HFModel(hf_repo=f"org/m{i}")).status == "DOWNLOADING"
        with pytest.raises(ModelCacheError) as again:
            models.download(HFModel(hf_repo="org/m0"))
        assert again.value.status_code == 409
        with pytest.raises(ModelCacheError) as fourth:
            models.download(HFModel(hf_repo="org/m3"))
        assert fourth.value.status_code == 429
        assert models.download(HFModel(hf_repo=MODEL)).status == "DOWNLOADED"  # built-ins never count
        assert models.delete(HFModel(hf_repo="org/m0")).status == "cancelled"
        status = models.status(HFModel(hf_repo="org/m0"))
        assert status.status == "NOT_FOUND" and "cancelled" in status.error_message
        assert models.download(HFModel(hf_repo="org/m3")).status == "DOWNLOADING"  # a slot is free again
    finally:
        models.close()


# --- GPUs and protocol ---


def test_gpu_on_a_cpu_node():
    assert gpu_devices() == {"devices": [], "count": 0}
    assert GpuDevicesResponse.model_validate(gpu_devices()).count == 0
    with pytest.raises(GpuUnavailableError):
        gpu_driver()


def test_request_models_ignore_unknown_keys_and_check_types():
    up = InferenceUpRequest.model_validate({"model": "m", "additional_args": ["-tp", "2"], "new_key": 1})
    assert (up.dtype, up.additional_args) == ("auto", ["-tp", "2"])
    for body in ({"model": "m", "additional_args": ["-tp", 2]}, {"model": 3}, {"model": ""}):
        with pytest.raises(ValidationError):
            InferenceUpRequest.model_validate(body)
    assert HFModel.model_validate({"hf_repo": "Qwen/Qwen3-0.6B", "hf_commit": None, "x": 1}).task_id() == \
        "Qwen/Qwen3-0.6B:latest"
    for body in ({"hf_repo": "../etc"}, {"hf_repo": "a/b", "hf_commit": "../x"}, {"hf_repo": 5}):
        with pytest.raises(ValidationError):
            HFModel.model_validate(body)
    with pytest.raises(ValidationError):
        GpuDevicesResponse.model_validate({"devices": [], "count": 2**63})
    state = StateResponse(version="0.1.0", state="STOPPED")
    assert state.model_dump() == {"version": "0.1.0", "state": "STOPPED", "poc_status": None,
                                  "inference_healthy": None, "loaded_model": None, "poc_validation_inference": False}
