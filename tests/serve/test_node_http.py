"""The ML-node management routes over real HTTP, as the network's node software calls them
(tests/support/dapi.py: /v3.0.8 before every path, no Content-Type): state, stop, inference/up (the
switch, its idempotency, bad arguments, a load that fails, a second up while one loads), /health,
/v1/models, versions, GPU and model-cache routes. Real Ray Serve and ingress: the stand-in node,
whose engines' load the test can slow down or fail through vLLM arguments."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.dapi import Dapi
from tests.support.fake_engine import FAILING_LOAD, ROUND, SLOW_LOAD
from tests.support.local_serve import STAND_IN_MODEL, reset_node
from tests.support.receiver import CallbackReceiver

BASE_MODEL = STAND_IN_MODEL
OTHER_MODEL = "poc-tiny-llama"


@pytest.fixture
def dapi(node_url):
    """The DAPI of the node's model; after each test the node serves that model again, with no
    PoC running, whatever the test left (one failure must not spread)."""
    client = Dapi(node_url, BASE_MODEL)
    yield client
    client.close()
    reset_node(node_url)


def _wait_healthy(dapi: Dapi, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = dapi.get("/health")
        if answer.status_code == 200:
            return answer.json()
        time.sleep(0.2)
    raise TimeoutError(f"/health never 200: {answer.text}")


def test_first_contact_and_inference_phase_poll(dapi):
    _wait_healthy(dapi)
    state = dapi.get("/api/v1/state")
    assert state.status_code == 200
    body = state.json()
    assert body["state"] == "INFERENCE" and body["version"] and body["poc_validation_inference"] in (True, False)
    assert body["loaded_model"] == BASE_MODEL and body["inference_healthy"] is True and body["poc_status"] == "IDLE"
    assert dapi.poll().status == "INFERENCE"
    assert dapi.get("/v1/models").json()["data"][0]["id"] == BASE_MODEL
    versions = dapi.get("/api/v1/versions").json()
    assert versions["version"] == body["version"] and "vllm_version" in versions
    # The idempotency check passes: nothing is reloaded.
    generation = _wait_healthy(dapi)["generation"]
    assert dapi.inference_up_command([]) == ("no reload", None)
    assert _wait_healthy(dapi)["generation"] == generation


def test_stop_marks_inference_down_and_up_of_the_same_model_is_instant(dapi):
    generation = _wait_healthy(dapi)["generation"]
    assert dapi.post("/api/v1/stop").json() == {"status": "OK"}
    state = dapi.get("/api/v1/state").json()
    assert state["state"] == "STOPPED" and state["loaded_model"] is None
    health = dapi.get("/health")
    assert health.status_code == 503 and "inference is down" in health.json()["detail"]
    chat = dapi.post("/v1/completions", {"model": BASE_MODEL, "prompt": "hi", "max_tokens": 2})
    assert chat.status_code == 503
    assert dapi.poll().status == "STOPPED"
    up = dapi.post("/api/v1/inference/up", {"model": BASE_MODEL, "dtype": "auto", "additional_args": []})
    assert up.status_code == 200, up.text
    assert _wait_healthy(dapi, 1)["generation"] == generation  # nothing was loaded
    assert dapi.post("/v1/completions", {"model": BASE_MODEL, "prompt": "hi", "max_tokens": 2}).status_code == 200


def test_a_node_serving_the_wrong_model_is_switched(node_url, dapi):
    other = Dapi(node_url, OTHER_MODEL)
    try:
        generation = _wait_healthy(dapi)["generation"]
        assert other.poll().reason.startswith("Model mismatch")
        outcome, up = other.inference_up_command(["--max-model-len", "64"])
        assert outcome == "reloaded" and up.status_code == 200, up.text
        health = _wait_healthy(other, 1)
        assert health == {"status": "OK", "model": OTHER_MODEL, "generation": generation + 1}
        assert other.poll().status == "INFERENCE"
        assert other.get("/v1/models").json()["data"][0]["id"] == OTHER_MODEL
        assert other.inference_up_command(["--max-model-len", "64"]) == ("no reload", None)
        # v2 checks params against the new model; PoC runs on the switched engines
        init = {"block_hash": "sw", "block_height": 3, "public_key": "k", "node_id": 0, "node_count": 1,
                "params": {"model": OTHER_MODEL, "seq_len": 16}}
        assert other.start_poc(init, every_s=0.3) == 1
        assert other.poll().status == "POC"
    finally:
        other.post("/api/v1/inference/pow/stop", {})
        other.close()
    outcome, up = dapi.inference_up_command([])  # back to the deployment's model
    assert outcome == "reloaded" and up.status_code == 200, up.text
    assert _wait_healthy(dapi, 1)["model"] == BASE_MODEL


@pytest.mark.parametrize("args,named", [
    (["--no-such-flag", "1"], "--no-such-flag"), (["--tensor-parallel-size", "zero"], "--tensor-parallel-size"),
    (["--port", "5001"], "--port")])
def test_bad_arguments_are_refused_and_the_model_stays(dapi, args, named):
    before = _wait_healthy(dapi)
    up = dapi.post("/api/v1/inference/up", {"model": BASE_MODEL, "dtype": "auto", "additional_args": args})
    assert up.status_code == 400 and named in up.json()["detail"]
    assert _wait_healthy(dapi, 1) == before


def test_unknown_model_is_refused(dapi):
    before = _wait_healthy(dapi)
    up = dapi.post("/api/v1/inference/up", {"model": "nobody/no-such-model", "additional_args": []})
    assert up.status_code == 400 and "nobody/no-such-model" in up.json()["detail"]
    assert _wait_healthy(dapi, 1) == before


def test_state_and_health_tell_the_truth_while_a_load_runs_and_a_second_up_gets_409(dapi):
    generation = _wait_healthy(dapi)["generation"]
    answers = {}
    load = threading.Thread(target=lambda: answers.setdefault("up", dapi.post(
        "/api/v1/inference/up", {"model": BASE_MODEL, "additional_args": SLOW_LOAD})))
    load.start()
    seen = set()
    while load.is_alive():
        state, health = dapi.get("/api/v1/state"), dapi.get("/health")
        assert state.status_code == 200 and state.json()["state"] == "INFERENCE"
        if health.status_code == 503:
            seen.add(health.json()["detail"].split(":")[0])
            # The load's own arguments: a second up that comes just after the load ended (the load's
            # thread may not have seen its answer yet) finds them served and loads nothing.
            second = dapi.post("/api/v1/inference/up", {"model": BASE_MODEL, "additional_args": SLOW_LOAD})
            if dapi.get("/health").status_code == 503:  # the load ran before and after: the second up came during it
                assert second.status_code == 409, second.text
        time.sleep(0.2)
    load.join()
    assert answers["up"].status_code == 200, answers["up"].text
    assert seen == {f"loading {BASE_MODEL}"}
    assert _wait_healthy(dapi, 1)["generation"] == generation + 1


def test_a_load_that_fails_says_why_and_the_node_recovers(dapi):
    up = dapi.post("/api/v1/inference/up", {"model": BASE_MODEL, "additional_args": FAILING_LOAD})
    assert up.status_code == 500
    assert "injected" in up.json()["detail"]["cause"] and up.json()["detail"]["model"] == BASE_MODEL
    state = dapi.get("/api/v1/state").json()
    assert state["state"] == "STOPPED" and state["loaded_model"] is None
    health = dapi.get("/health")
    assert health.status_code == 503 and "injected" in health.json()["detail"]
    assert dapi.post("/api/v1/inference/pow/init/generate", {
        "block_hash": "f", "block_height": 1, "public_key": "k", "node_id": 0, "node_count": 1,
        "params": {"model": BASE_MODEL, "seq_len": 16}}).status_code == 503
    outcome, up = dapi.inference_up_command([])
    assert outcome == "reloaded" and up.status_code == 200
    assert dapi.poll().status == "INFERENCE"


def test_a_v1_round_is_pow_and_stop_ends_it(dapi):
    _wait_healthy(dapi)
    assert dapi.post("/api/v1/pow/init/generate", ROUND).status_code == 200
    assert dapi.get("/api/v1/state").json()["state"] == "POW"
    assert dapi.post("/api/v1/stop").status_code == 200
    assert dapi.get("/api/v1/pow/status").json()["state"] == "STOPPED"
    assert dapi.get("/api/v1/state").json()["state"] == "STOPPED"
    assert dapi.post("/api/v1/inference/up", {"model": BASE_MODEL}).status_code == 200


def test_gpu_and_model_cache_routes_on_a_cpu_node(dapi):
    assert dapi.get("/api/v1/gpu/devices").json() == {"devices": [], "count": 0}
    driver = dapi.get("/api/v1/gpu/driver")
    assert driver.status_code == 503 and "NVML" in driver.json()["detail"]
    status = dapi.post("/api/v1/models/status", {"hf_repo": BASE_MODEL, "hf_commit": None})
    assert status.status_code == 200 and status.json()["status"] == "DOWNLOADED"
    missing = dapi.post("/api/v1/models/status", {"hf_repo": "nobody/absent", "hf_commit": None}).json()
    assert missing["status"] == "NOT_FOUND"
    space = dapi.get("/api/v1/models/space").json()
    assert space["available_gb"] > 0 and space["cache_path"]
    assert dapi.get("/api/v1/models/list").status_code == 200
    bad = dapi.post("/api/v1/models/status", {"hf_repo": 7})
    assert bad.status_code == 422 and "hf_repo" in bad.text


def test_an_epoch_as_the_dapi_drives_it(dapi):
    """Spec 3.4 over one epoch: the inference-phase poll; PoC start re-sent until GENERATING and the
    first /generated callback's delay; the validation start (pow stop, then generate jobs with
    wait false and a url); the end of validation (the idempotency check passes, nothing reloads)."""
    generation = _wait_healthy(dapi)["generation"]
    assert dapi.poll().status == "INFERENCE"
    with CallbackReceiver() as receiver:
        init = {"block_hash": "epoch", "block_height": 40, "public_key": "pk", "node_id": 1, "node_count": 2,
                "params": {"model": BASE_MODEL, "seq_len": 16}, "url": receiver.url + "/v2/poc-batches/m%252Fx"}
        started = time.monotonic()
        assert dapi.start_poc(init, every_s=0.5) >= 1
        assert dapi.poll().status == "POC"
        generated = receiver.wait_for("/v2/poc-batches/m%2Fx/generated", 1, timeout=15)
        print(f"first /generated callback {time.monotonic() - started:.2f} s after init/generate")
        assert dapi.post("/api/v1/inference/pow/stop", {}).status_code == 200  # the validation start
        artifacts = generated[0]["artifacts"][:8]
        job = {**init, "node_id": 1, "node_count": 1, "nonces": [a["nonce"] for a in artifacts], "wait": False,
               "validation": {"artifacts": artifacts}}
        assert dapi.post("/api/v1/inference/pow/generate", job).json()["status"] == "queued"
        verdict = receiver.wait_for("/v2/poc-batches/m%2Fx/validated", 1, timeout=30)[0]
        assert verdict["fraud_detected"] is False and verdict["n_mismatch"] == 0
    assert dapi.inference_up_command([]) == ("no reload", None)  # the end of validation
    assert _wait_healthy(dapi, 1)["generation"] == generation
