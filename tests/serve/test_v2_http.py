"""The PoC v2 API over real HTTP and real Ray Serve, with two stand-in engine replicas injected
through the engine deployment's ``engine_factory`` (the stand-in node of tests/support) and a real callback
receiver: answer shapes and JSON types, the network client's habits, status codes, one nonce
counter over two replicas, and the v1/v2 policies."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.local_serve import STAND_IN_MODEL
from tests.support.receiver import CallbackReceiver

V2 = "/api/v1/inference/pow"
PARAMS = {"model": STAND_IN_MODEL, "seq_len": 16}
ROUND = {"block_hash": "http_bh", "block_height": 5, "public_key": "http_pk", "node_id": 0, "node_count": 2,
         "params": PARAMS}
V1_ROUND = {"block_hash": "b", "block_height": 1, "public_key": "k", "r_target": 1.4, "node_id": 0,
            "node_count": 1, "seq_len": 16}


@pytest.fixture
def client(node_url):
    with httpx.Client(base_url=node_url + V2, timeout=60) as c:
        yield c
        c.post("/stop")
        httpx.post(node_url + "/api/v1/pow/stop", timeout=60)


def test_generation_over_two_replicas_with_the_go_clients_habits(node_url, client):
    with CallbackReceiver() as receiver:
        # No Content-Type, a version segment in front of the path.
        raw = httpx.Request("POST", "http://x", json={**ROUND, "url": receiver.url + "/cb%252Fx"}).content
        r = httpx.post(f"{node_url}/v3.0.8{V2}/init/generate", content=raw, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "OK", "backends": 2, "n_groups": 1,
                            "results": [{"port": 0, "status": "OK"}] * 2, "errors": None,
                            "pow_status": {"status": "GENERATING"}}
        status = client.get("/status").json()
        assert status["status"] == "GENERATING" and len(status["backends"]) == 2
        assert status["backends"][0]["config"] == {
            "block_hash": "http_bh", "block_height": 5, "public_key": "http_pk", "node_id": 0, "node_count": 2,
            "group_id": 0, "n_groups": 1, "seq_len": 16, "k_dim": 12}
        # One generation at a time; inference waits.
        r = httpx.post(f"{node_url}/api/v1/pow/init/generate", json=V1_ROUND, timeout=60)
        assert r.status_code == 409 and "v2 generation is running" in r.json()["detail"]
        r = httpx.post(f"{node_url}/v1/completions", json={"model": STAND_IN_MODEL, "prompt": "hi"}, timeout=60)
        assert r.status_code == 503 and "v2" in r.json()["error"]["message"]
        time.sleep(2)
        r = httpx.post(f"{node_url}/v1{V2}/stop", timeout=60)  # empty body
        assert r.json() == {"status": "OK", "results": [{"port": 0, "status": "stopped"}] * 2, "errors": None,
                            "pow_status": {"status": "STOPPED"}}
        total = client.get("/status").json()["backends"][0]["stats"]["total_processed"]
        bodies = receiver.bodies("/cb%2Fx/generated")
    nonces = sorted(a["nonce"] for b in bodies for a in b["artifacts"])
    assert total > 32 and nonces == [2 * x for x in range(total)]  # dense, once each, both replicas
    assert {b["encoding"]["k_dim"] for b in bodies} == {12} and bodies[0]["block_height"] == 5


def test_bad_requests(client):
    assert client.post("/init/generate", json={**ROUND, "params": {**PARAMS, "k": 1}}).status_code == 422
    assert client.post("/init/generate", json={**ROUND, "node_id": 2}).status_code == 400
    r = client.post("/init/generate", json={**ROUND, "params": {"model": "other", "seq_len": 65}})
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert detail["error"] == "params mismatch" and detail["fields"] == ["model", "seq_len"]
    assert detail["requested"] == {"model": "other", "seq_len": 65, "k_dim": 12}
    r = client.post("/generate", json={**ROUND, "nonces": [1, 2], "validation": {"artifacts": []}})
    assert r.status_code == 400 and r.json()["detail"] == "validation.artifacts nonces must match nonces field"
    r = client.post("/generate", json={**ROUND, "nonces": list(range(100_001))})
    assert r.status_code == 429 and r.json()["detail"] == "Queue full: 0 nonces queued, limit is 100000"
    assert client.get("/generate/12:0b3c0c55-0000-4000-8000-000000000000").status_code == 404


def test_jobs_and_v1_policy(node_url, client):
    r = client.post("/generate", json={**ROUND, "nonces": [4, 6], "wait": True,
                                       "params": {**PARAMS, "model": "/nowhere/stand-in"}})
    assert r.status_code == 200 and [a["nonce"] for a in r.json()["artifacts"]] == [4, 6]
    done = r.json()
    body = {**ROUND, "nonces": [4, 6], "validation": {"artifacts": done["artifacts"]},
            "stat_test": {"dist_threshold": 0.2, "p_mismatch": 0.1}}
    queued = client.post("/generate", json=body).json()
    assert queued["status"] == "queued" and queued["queued_count"] == 2
    for _ in range(100):
        job = client.get(f"/generate/8000:{queued['request_id']}").json()
        if job["status"] == "completed":
            break
        time.sleep(0.1)
    assert job == {"status": "completed", "request_id": queued["request_id"], "n_total": 2, "n_mismatch": 0,
                   "mismatch_nonces": [], "p_value": 1.0, "fraud_detected": False, "fraud_threshold": 0.01,
                   "skipped_nonces": []}
    assert client.get("/status").json()["jobs"]["completed"] == 1
    # The job routes under v1's prefix too (no v1 route has their paths).
    copy = httpx.post(f"{node_url}/api/v1/pow/generate", json={**body, "wait": True}, timeout=60).json()
    assert copy == {**job, "request_id": copy["request_id"]}
    assert httpx.get(f"{node_url}/api/v1/pow/generate/{queued['request_id']}", timeout=60).json() == job
    assert httpx.post(f"{node_url}/api/v1/pow/init/generate", json=V1_ROUND, timeout=60).status_code == 200
    r = client.post("/init/generate", json=ROUND)
    assert r.status_code == 409 and "v1 round is generating" in r.json()["detail"]
    client.post("/stop")
    assert client.get(f"/generate/{queued['request_id']}").status_code == 404  # cleared by stop
