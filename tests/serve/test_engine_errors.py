"""Engine faults answered over HTTP: a PoC call that fails on the engine, and no engine at all.

Real Ray Serve and real HTTP; the engines are stand-ins injected through the engine deployment's
``engine_factory``, because neither fault can be caused on purpose with a healthy vLLM engine: one
raises what vLLM's workers raised before the PoC forward ran in vLLM's forward context, the other
never finishes starting.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from ray import serve
from ray.serve import api as serve_api

from poc_serve.engine.protocol import PoCBatchResult, PoCRound
from poc_serve.serve.config import PoCAppArgs
from poc_serve.app import assemble_app
from poc_serve.serve.engine_deployment import PoCEngineDeployment
from poc_serve.testing.stand_in import StandInEngine

ROUND = dict(block_hash="err_block", block_height=1, public_key="err_key", seq_len=16, r_target=1.4)
PROOF = dict(block_hash="err_block", block_height=1, public_key="err_key", nonces=[1, 2], dist=[1.3, 1.35])
CAUSE = "Forward context is not set. Please use `set_forward_context` to set the forward context."


class FailingEngine(StandInEngine):
    """Starts, then fails every PoC call as vLLM's fused-MoE layer did outside a forward context."""

    max_model_len = 256

    async def compute(self, round, nonces, return_hidden=False) -> PoCBatchResult:
        raise RuntimeError(f"Worker failed with error '{CAUSE}', please check the stack trace above")


async def engine_that_never_starts(config):
    await asyncio.sleep(3600)



def _app(factory):
    return assemble_app(PoCAppArgs(model="stand-in", engine_num_cpus=0,
                                engine=dict(max_model_len=256, max_num_batched_tokens=1024)), factory)


@pytest.fixture(scope="module")
def base_url(serve_url):
    return serve_url


def test_failing_poc_call_answers_json_naming_the_cause(base_url):
    """/validate answers 502 with ``{"detail": "PoC forward failed on the engine: <cause>"}``, not a
    bare Internal Server Error; the node keeps answering afterwards."""
    serve.run(_app(FailingEngine.factory), name="failing", route_prefix="/failing")
    with httpx.Client(base_url=f"{base_url}/failing/api/v1/pow", timeout=60) as client:
        assert client.post("/init/validate", json=ROUND).status_code == 200
        answer = client.post("/validate", json=PROOF)
        assert answer.status_code == 502, answer.text
        assert answer.headers["content-type"] == "application/json"
        detail = answer.json()["detail"]
        assert detail.startswith("PoC forward failed on the engine: ")
        assert CAUSE in detail
        assert client.get("/status").status_code == 200
    serve.delete("failing")


def test_no_engine_answers_503_within_seconds(base_url):
    """While no engine replica is ready, /validate answers 503 with a reason and Retry-After
    within 2 s (plus HTTP overhead) instead of waiting for a replica that may never come, and
    /status says the model is not initialised."""
    # serve.run would wait for the engine; its non-waiting form deploys and returns.
    serve_api._run(_app(engine_that_never_starts), name="starting", route_prefix="/starting",
                   _blocking=False)
    with httpx.Client(base_url=f"{base_url}/starting/api/v1/pow", timeout=60) as client:
        deadline = time.time() + 60  # the ingress comes up; the engine never does
        while time.time() < deadline:
            try:
                if client.get("/status").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        status = client.get("/status").json()
        assert status["is_model_initialized"] is False
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
    serve.delete("starting")


async def engine_that_fails_to_start(config):
    raise ValueError("engine config refused: max_model_len 99999 exceeds the model's 1024")


def test_failed_engine_deployment_is_named_in_status_and_503s(base_url):
    """An engine deployment whose replicas fail to start: /status says so (is_model_initialized
    false and engine_error with Serve's state and the constructor's error), and every call that
    needs the engine (v1 validation, OpenAI inference) answers 503 within seconds naming it."""
    serve_api._run(_app(engine_that_fails_to_start), name="broken", route_prefix="/broken",
                   _blocking=False)
    with httpx.Client(base_url=f"{base_url}/broken", timeout=60) as client:
        def named() -> dict | None:
            try:
                answer = client.get("/api/v1/pow/status")
            except httpx.TransportError:
                return None
            body = answer.json() if answer.status_code == 200 else {}
            return body if "engine config refused" in (body.get("engine_error") or "") else None

        deadline, status = time.time() + 120, None
        while status is None and time.time() < deadline:  # Serve retries the start a few times
            status = named()
            time.sleep(1)
        assert status, "the engine's start error never appeared in /status"
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
    serve.delete("broken")


def test_engine_failure_is_logged_once_with_model_and_shape(caplog):
    """The engine deployment logs the cause once, naming the model and the call's shape, and
    raises PoCComputeError carrying the message callers see."""
    from poc_serve.engine.protocol import PoCComputeError

    deployment = PoCEngineDeployment.func_or_class.__new__(PoCEngineDeployment.func_or_class)
    args = PoCAppArgs(model="stand-in-model", engine=dict(max_model_len=256, max_num_batched_tokens=1024))
    deployment.serving, deployment.engine = args.serving(), FailingEngine()
    with caplog.at_level(logging.ERROR, logger="ray.serve.poc_serve"):
        with pytest.raises(PoCComputeError) as raised:
            asyncio.run(deployment.compute(PoCRound(block_hash="b", public_key="k", seq_len=16), [1, 2, 3]))
    assert raised.value.reason.startswith("PoC forward failed on the engine: ") and CAUSE in raised.value.reason
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "stand-in-model" in message and "3 nonces" in message and "seq_len 16" in message
    assert "64 nonces per forward" in message
