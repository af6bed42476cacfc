"""The Serve application over real HTTP in seconds: real Ray Serve, real ingress, real callback
receiver; only the engines are stand-ins (the stand-in node of tests/support), injected through the
engine deployment's ``engine_factory`` with the deployment options the application builder gives it.

Covers a v1 round's control flow (generate, validate phase, resume, stop; callbacks; proofs
judged), a v2 job waiting for a v1 round, and the inference gate (503 while PoC runs, 200 after).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from poc_serve.engine.protocol import ArtifactRound, PoCRound
from tests.support.fake_engine import R_TARGET, ROUND, artifact, distance
from tests.support.local_serve import STAND_IN_MODEL
from tests.support.receiver import CallbackReceiver
from tests.support.waits import wait_checked

V1 = "/api/v1/pow"
V2 = "/api/v1/inference/pow"
COMPLETION = {"model": STAND_IN_MODEL, "prompt": "hi", "max_tokens": 3}


@pytest.fixture
def client(node_url):
    with httpx.Client(base_url=node_url, timeout=60) as c:
        yield c
        c.post(f"{V1}/stop")


def test_v1_round_generates_validates_resumes_and_delivers_every_valid_nonce_once(client):
    proof_round = PoCRound(block_hash=ROUND["block_hash"], public_key=ROUND["public_key"], seq_len=16)
    with CallbackReceiver() as receiver:
        r = client.post(f"{V1}/init/generate", json={**ROUND, "callback_url": receiver.url})
        assert r.status_code == 200 and r.json()["pow_status"]["state"] == "GENERATING"
        wait_checked(client, 41, status=f"{V1}/status")

        r = client.post("/v1/completions", json=COMPLETION)
        assert r.status_code == 503 and "Proof-of-Compute is running" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) > 0

        paused = client.post(f"{V1}/phase/validate").json()["pow_status"]
        assert paused["state"] == "VALIDATING"
        time.sleep(0.5)
        assert client.get(f"{V1}/status").json()["total_checked"] == paused["total_checked"]  # nothing runs
        assert client.post("/v1/completions", json=COMPLETION).status_code == 503  # not while validating

        # A proof is recomputed with the body's key: honest distances pass, invented ones are caught.
        honest = paused["valid_nonces"][:4]
        proof = dict(block_hash=ROUND["block_hash"], block_height=7, public_key=ROUND["public_key"], nonces=honest,
                     dist=[distance(proof_round, n) for n in honest])
        judged = client.post(f"{V1}/validate", json=proof).json()
        assert judged["dist"] == proof["dist"] and not judged["fraud_detected"]
        invalid = [n for n in range(1000, 1100) if distance(proof_round, n) >= R_TARGET][:4]
        judged = client.post(f"{V1}/validate", json={**proof, "nonces": invalid, "dist": [1.0] * 4}).json()
        assert judged["n_invalid"] == 4 and judged["fraud_detected"]

        assert client.post(f"{V1}/phase/generate").json()["pow_status"]["state"] == "GENERATING"
        wait_checked(client, paused["total_checked"] + 41, status=f"{V1}/status")
        final = client.post(f"{V1}/stop").json()["pow_status"]
        assert final["state"] == "STOPPED"
        assert client.post("/v1/completions", json=COMPLETION).json()["choices"][0]["text"] == "t0 t1 t2 "
        deadline = time.time() + 10
        while sum(len(b["nonces"]) for b in receiver.bodies("/generated")) < final["total_valid"] \
                and time.time() < deadline:
            time.sleep(0.1)
        delivered = sorted(n for body in receiver.bodies("/generated") for n in body["nonces"])

    # The node's nonces from node_id on, none skipped or checked twice across the pause.
    checked = [ROUND["node_id"] + k * ROUND["node_count"] for k in range(final["total_checked"])]
    expected = [n for n in checked if distance(proof_round, n) < R_TARGET]
    assert sorted(final["valid_nonces"]) == expected and final["total_valid"] == len(expected)
    assert delivered == expected
    assert final["validation"] == {"batches": 2, "nonces": 8, "fraud_detected": 1}


def test_v2_job_waits_for_a_generating_v1_round(client):
    """A waited v2 job does not use the engine while a v1 round generates; it is answered once
    the round stops, with the engine's artifacts of its nonces."""
    assert client.post(f"{V1}/init/generate", json=ROUND).status_code == 200
    job = {"block_hash": "job_bh", "block_height": 7, "public_key": "job_pk", "node_id": 0, "node_count": 1,
           "nonces": [5, 9, 2], "wait": True, "params": {"model": STAND_IN_MODEL, "seq_len": 16}}
    answers: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{client.base_url}{V2}/generate", json=job, timeout=60)))
    waiter.start()
    waiter.join(1.5)
    assert not answers, "the job ran beside a generating v1 round"
    client.post(f"{V1}/stop")
    waiter.join(30)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    job_round = ArtifactRound(block_hash="job_bh", public_key="job_pk", seq_len=16)
    assert [(a["nonce"], a["vector_b64"]) for a in answers[0].json()["artifacts"]] == [
        (n, artifact(job_round, n)) for n in (5, 9, 2)]
