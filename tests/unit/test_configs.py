"""Config files and application arguments: every key must be one Serve or poc_serve knows."""

import glob

import pytest
import yaml
from pydantic import ValidationError

from poc_serve.app import engine_deployment_options
from poc_serve.engine.config import EngineConfig
from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.config_check import check_serve_config

CONFIGS = ["serve_config.yaml", *sorted(glob.glob("deploy/serve_config*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_serve_configs_are_strictly_valid(path):
    with open(path) as f:
        assert check_serve_config(yaml.safe_load(f)) == []


def test_checker_finds_misspelt_keys_everywhere():
    config = {"http_option": {}, "applications": [{
        "name": "poc", "import_path": "poc_serve.app:build_app", "num_replica": 2,
        "deployments": [{"name": "PoCIngress", "ray_actor_options": {"num_cpu": 1}}],
        "args": {"modle": "x", "engine": {"tensor_parallel": 2}}}]}
    errors = "\n".join(check_serve_config(config))
    for key in ("http_option", "num_replica", "num_cpu", "modle", "tensor_parallel"):
        assert key in errors


def test_model_is_a_top_level_key():
    args = PoCAppArgs(model="/models/x", engine={"tensor_parallel_size": 2})
    assert args.engine.model == "/models/x"
    with pytest.raises(ValidationError, match="top-level key"):
        PoCAppArgs(engine={"model": "y"})


def test_gpu_engine_replicas_reserve_their_gpus_in_a_placement_group():
    args = PoCAppArgs(accelerator="gpu", num_engine_replicas=3, engine_resources={"poc_gpu_node": 1},
                      engine={"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    opts = engine_deployment_options(args)
    assert opts["num_replicas"] == 3
    assert opts["ray_actor_options"]["num_gpus"] == 0
    assert opts["placement_group_bundles"] == [{"CPU": 1, "GPU": 1, "poc_gpu_node": 1}] + [{"GPU": 1}] * 3
    assert opts["placement_group_strategy"] == "STRICT_PACK"


def test_cpu_engine_replicas_take_a_cpu_and_custom_resources():
    opts = engine_deployment_options(PoCAppArgs(engine_resources={"worker": 1}))
    assert "placement_group_bundles" not in opts
    assert opts["ray_actor_options"]["resources"] == {"worker": 1}
    assert opts["ray_actor_options"]["num_cpus"] == 1


def test_inference_and_poc_calls_have_separate_bounds():
    """An engine replica admits its PoC calls plus max_inference_requests_per_replica inference
    requests (vLLM's scheduler batches those), not a shared handful."""
    opts = engine_deployment_options(PoCAppArgs(batches_in_flight_per_replica=3))
    assert opts["max_ongoing_requests"] == 3 + 256 + 2
    opts = engine_deployment_options(PoCAppArgs(max_inference_requests_per_replica=32))
    assert opts["max_ongoing_requests"] == 2 + 32 + 2


def test_poc_forward_and_call_sizes():
    """A forward holds poc_forward_tokens // seq_len nonces (default: max_num_batched_tokens), capped
    by max_poc_forward_size and at least 1; an engine call holds poc_forwards_per_call forwards."""
    engine = EngineConfig(max_num_batched_tokens=65536, poc_forward_tokens=16384, poc_forwards_per_call=4)
    assert [engine.poc_forward_size(s) for s in (8, 64, 256, 20000)] == [1024, 256, 64, 1]
    assert engine.poc_call_size(64) == 1024
    default = EngineConfig(max_num_batched_tokens=65536, poc_forwards_per_call=1)
    assert (default.poc_forward_size(64), default.poc_call_size(256)) == (1024, 256)


def test_a_renamed_size_key_fails_naming_its_new_name():
    with pytest.raises(ValidationError, match="`max_poc_batch_size` is now called `max_poc_forward_size`"):
        PoCAppArgs(engine={"max_poc_batch_size": 256})
    assert check_serve_config({"applications": [{"import_path": "poc_serve.app:build_app", "args": {
        "engine": {"max_poc_batch_size": 256}}}]}) != []


def test_poc_forward_may_not_exceed_the_profiled_tokens():
    with pytest.raises(ValidationError, match="poc_forward_tokens .*max_num_batched_tokens"):
        EngineConfig(max_num_batched_tokens=8192, poc_forward_tokens=8193)


def test_pipeline_parallel_engines_refuse_the_ray_executor_that_runs_steps_beside_rpcs(monkeypatch):
    from poc_serve.engine.engine import PoCEngine

    engine = PoCEngine(EngineConfig(distributed_executor_backend="ray", pipeline_parallel_size=2))
    assert engine._engine_args().pipeline_parallel_size == 2  # vLLM's default Ray executor
    monkeypatch.setenv("VLLM_USE_RAY_V2_EXECUTOR_BACKEND", "0")
    with pytest.raises(ValueError, match="VLLM_USE_RAY_V2_EXECUTOR_BACKEND"):
        engine._engine_args()
    engine.config = EngineConfig(distributed_executor_backend="ray", tensor_parallel_size=2)
    assert engine._engine_args().tensor_parallel_size == 2  # one batch in flight: steps and calls alternate
