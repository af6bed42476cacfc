"""Engine faults answered over HTTP: a PoC call that fails on the engine, and no engine at all.

Real Ray Serve and real HTTP; the engines are stand-ins injected through the engine deployment's
``engine_factory``, because neither fault can be caused on purpose with a healthy vLLM engine: one
(the stand-in node's, on the round that orders it) raises what vLLM's workers raised before the PoC
forward ran in vLLM's forward context; of the others, one never finishes starting and one fails to.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from poc_serve.engine.protocol import PoCRound
from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.engine_deployment import PoCEngineDeployment
from tests.support.fake_engine import FAILING_FORWARD, FORWARD_CONTEXT_ERROR, ScriptedEngine
from tests.support.local_serve import STAND_IN_ENGINE_ENV, launch
from tests.support.waits import wait_until

ROUND = dict(block_hash="err_block", block_height=1, public_key="err_key", seq_len=16, r_target=1.4)
PROOF = dict(block_hash="err_block", block_height=1, public_key="err_key", nonces=[1, 2], dist=[1.3, 1.35])


async def engine_that_never_starts(config):
    await asyncio.sleep(3600)


async def engine_that_fails_to_start(config):
    raise ValueError("engine config refused: max_model_len 99999 exceeds the model's 1024")


@pytest.fixture(scope="module")
def base_url(serve_url):
    """Serve's base URL with the module's applications launched at once, each at /<name> (their
    replicas start side by side; each test waits for what it needs of its own)."""
    for name, factory in (("starting", engine_that_never_starts), ("broken", engine_that_fails_to_start)):
        launch(PoCAppArgs(model="stand-in", engine_num_cpus=0, engine_env=STAND_IN_ENGINE_ENV,
                          engine=dict(max_model_len=256, max_num_batched_tokens=1024)), factory, name, f"/{name}")
    return serve_url


def test_no_engine_answers_503_within_seconds(base_url):
    """While no engine replica is ready, /validate answers 503 with a reason and Retry-After
    within 2 s (plus HTTP overhead) instead of waiting for a replica that may never come, and
    /status says the model is not initialised."""
    with httpx.Client(base_url=f"{base_url}/starting/api/v1/pow", timeout=60) as client:
        def status() -> dict | None:
            answer = client.get("/status")
            return answer.json() if answer.status_code == 200 else None

        # the ingress comes up; the engine never does
        assert wait_until("the ingress answering /status", status, timeout=120, interval=0.2,
                          ignore=(httpx.TransportError,))["is_model_initialized"] is False
        assert client.post("/init/validate", json=ROUND).status_code == 200
        started = time.monotonic()
        answer = client.post("/validate", json=PROOF)
        took = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert "no engine replica is ready" in answer.json()["detail"]
        assert "PoCEngineDeployment UPDATING" in answer.json()["detail"]  # the deployment and its state are named
        assert "no engine replica is ready" in client.get("/status").json()["engine_error"]
        assert int(answer.headers["retry-after"]) > 0
        assert took < 4, f"503 took {took:.1f}s"


def test_failed_engine_deployment_is_named_in_status_and_503s(base_url):
    """An engine deployment whose replicas fail to start: /status says so (is_model_initialized
    false and engine_error with Serve's state and the constructor's error), and every call that
    needs the engine (v1 validation, OpenAI inference) answers 503 within seconds naming it."""
    with httpx.Client(base_url=f"{base_url}/broken", timeout=60) as client:
        def named() -> dict | None:
            answer = client.get("/api/v1/pow/status")
            body = answer.json() if answer.status_code == 200 else {}
            return body if "engine config refused" in (body.get("engine_error") or "") else None

        status = wait_until("the engine's start error in /status", named, timeout=120, interval=0.2,
                            ignore=(httpx.TransportError,))
        assert status["is_model_initialized"] is False and "PoCEngineDeployment" in status["engine_error"]
        started = time.monotonic()
        completion = client.post("/v1/completions", json={"model": "stand-in", "prompt": "hi"})
        assert completion.status_code == 503 and int(completion.headers["retry-after"]) > 0
        assert completion.json()["error"]["type"] == "ServiceUnavailableError"
        assert "engine config refused" in completion.json()["error"]["message"]
        assert client.post("/api/v1/pow/init/validate", json=ROUND).status_code == 200
        answer = client.post("/api/v1/pow/validate", json=PROOF)
        assert answer.status_code == 503 and "engine config refused" in answer.json()["detail"]
        assert time.monotonic() - started < 8


def test_failing_poc_call_answers_json_naming_the_cause(node_url):
    """/validate answers 502 with ``{"detail": "PoC forward failed on the engine: <cause>"}``, not a
    bare Internal Server Error; the node keeps answering afterwards."""
    failing = {"block_hash": FAILING_FORWARD}
    with httpx.Client(base_url=f"{node_url}/api/v1/pow", timeout=60) as client:
        assert client.post("/init/validate", json={**ROUND, **failing}).status_code == 200
        answer = client.post("/validate", json={**PROOF, **failing})
        assert answer.status_code == 502, answer.text
        assert answer.headers["content-type"] == "application/json"
        detail = answer.json()["detail"]
        assert detail.startswith("PoC forward failed on the engine: ")
        assert FORWARD_CONTEXT_ERROR in detail
        assert client.get("/status").status_code == 200


def test_engine_failure_is_logged_once_with_model_and_shape(caplog):
    """The engine deployment logs the cause once, naming the model and the call's shape, and
    raises PoCComputeError carrying the message callers see."""
    from poc_serve.engine.protocol import PoCComputeError

    deployment = PoCEngineDeployment.func_or_class.__new__(PoCEngineDeployment.func_or_class)
    args = PoCAppArgs(model="stand-in-model", engine=dict(max_model_len=256, max_num_batched_tokens=1024))
    deployment.serving, deployment.engine = args.serving(), ScriptedEngine("stand-in-model")
    with caplog.at_level(logging.ERROR, logger="ray.serve.poc_serve"):
        with pytest.raises(PoCComputeError) as raised:
            asyncio.run(deployment.compute(PoCRound(block_hash=FAILING_FORWARD, public_key="k", seq_len=16),
                                           [1, 2, 3]))
    assert raised.value.reason.startswith("PoC forward failed on the engine: ")
    assert FORWARD_CONTEXT_ERROR in raised.value.reason
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "stand-in-model" in message and "3 nonces" in message and "seq_len 16" in message
    assert "64 nonces per forward" in message
