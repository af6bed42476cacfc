"""The PoC v2 service alone (no Ray, no vLLM): a stand-in engine derives deterministic artifacts
from the nonces; callbacks go to a real HTTP receiver. Covers the generation loop's nonce
sequence over several in-flight calls with failures, the callbacks' bodies, the job queue, the
validation verdicts, stop and the policies between v1 and v2."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from poc_serve.engine.protocol import ArtifactRound, PoCRound
from poc_serve.poc.nonces import NonceSequence
from poc_serve.serve.pow_v2.service import ArtifactService
from poc_serve.serve.core import driver as generation
from poc_serve.serve.core.callbacks import CallbackSender
from poc_serve.serve.core.errors import ServiceError
from poc_serve.serve.core.loop import GenerationSettings
from poc_serve.serve.pow_v1.protocol import PoCInitRequest
from poc_serve.serve.pow_v1.service import RoundManager
from tests.support.fake_engine import artifact
from tests.support.flaky_engines import FlakyArtifactEngine
from tests.support.receiver import CallbackReceiver
from tests.support.services import PARAMS, URL_PATH, gen_request, init, service, wired


@pytest.fixture(autouse=True)
def _replicas_restart_fast(monkeypatch):
    """A failed engine call is handed out again after 0.05 s (the wait for a restarting replica,
    1 s in production)."""
    monkeypatch.setattr(generation, "RETRY_DELAY_S", 0.05)


async def job_state(svc: ArtifactService, request_id: str) -> dict:
    return svc.job_state(request_id)


async def raises(status: int, coro) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        await coro
    assert info.value.status_code == status, info.value.detail
    return info.value


def test_nonce_sequence_v2_formula_and_v1_identity():
    seq = NonceSequence(node_id=2, node_count=5, group_id=1, n_groups=3)
    assert seq.take(4) == [2 + 1 * 5 + x * 15 for x in range(4)]
    v1 = NonceSequence(2, 5)
    assert v1.take(3) == [2, 7, 12] and (v1.first, v1.stride) == (2, 5)
    for bad in [(0, 1, 1, 1), (0, 1, -1, 2), (0, 1, 0, 0)]:
        with pytest.raises(ValueError):
            NonceSequence(*bad)


def test_generation_is_dense_and_every_artifact_is_delivered_once(caplog):
    """Failed calls re-run with the same nonces; the receiver is down for a part of the round."""

    async def run(url):
        engine = FlakyArtifactEngine(fail_every=4, nonfinite=frozenset({1 + 3 * 7}), fail_retries=False)
        svc = service(engine)
        answer = await svc.init_generate(init(url=url, n_groups=2, group_id=1))
        assert answer.model_dump() == {
            "status": "OK", "backends": 2, "n_groups": 2, "results": [{"port": 0, "status": "OK"}] * 2,
            "errors": None, "pow_status": {"status": "GENERATING"}}
        assert svc.status().status == "GENERATING"
        await asyncio.sleep(0.2)
        receiver.stop()
        await asyncio.sleep(0.2)
        receiver.start()
        while svc.generation.total < 300:
            await asyncio.sleep(0.01)
        stopped = await svc.stop()
        assert stopped.model_dump() == {"status": "OK", "results": [{"port": 0, "status": "stopped"}] * 2,
                                        "errors": None, "pow_status": {"status": "STOPPED"}}
        return engine, svc

    with CallbackReceiver() as receiver, caplog.at_level(logging.INFO, logger="ray.serve.poc_serve"):
        engine, svc = asyncio.run(run(receiver.url + URL_PATH))
        bodies = receiver.bodies(URL_PATH.replace("%25", "%") + "/generated")  # aiohttp decodes one level
    assert engine.calls > 20
    assert sorted(engine.computed) == sorted(set(engine.computed))
    x_count = len(engine.computed)
    expected = [1 + 1 * 3 + x * 6 for x in range(x_count)]
    assert sorted(engine.computed) == expected  # dense: nothing skipped, nothing twice
    sent = [a["nonce"] for body in bodies for a in body["artifacts"]]
    assert sorted(sent) == [n for n in expected if n != 22] and len(sent) == len(set(sent))
    assert svc.generation.nonfinite == 1 and svc.status().nonfinite_nonces == 1
    assert set(bodies[0]) == {"public_key", "block_hash", "block_height", "node_id", "artifacts", "encoding"}
    assert bodies[0]["encoding"] == {"dtype": "f16", "k_dim": 12, "endian": "le"}
    assert (bodies[0]["block_height"], bodies[0]["node_id"]) == (9, 1)
    round_ = ArtifactRound(block_hash="bh", public_key="pk", seq_len=16)
    assert all(a["vector_b64"] == artifact(round_, a["nonce"]) for body in bodies for a in body["artifacts"])
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Generated: ")]
    assert progress and progress[-1].startswith(f"Generated: {len(sent)} nonces (") and progress[-1].endswith("/min)")
    status = svc.status().model_dump()
    assert status["status"] == "IDLE" and len(status["backends"]) == 2
    backend = status["backends"][0]
    assert backend["config"]["group_id"] == 1 and backend["stats"]["total_processed"] == len(sent)


def test_init_generate_checks_ids_params_and_repeats():
    async def run():
        svc = service(FlakyArtifactEngine())
        await raises(400, svc.init_generate(init(node_id=3)))
        await raises(400, svc.init_generate(init(group_id=2, n_groups=2)))
        err = await raises(409, svc.init_generate(init(params={**PARAMS, "model": "other"})))
        assert err.detail["error"] == "params mismatch" and err.detail["fields"] == ["model"]
        assert err.detail["requested"] == {"model": "other", "seq_len": 16, "k_dim": 12}
        err = await raises(409, svc.init_generate(init(params={"model": "org/model", "seq_len": 129, "k_dim": 65})))
        assert err.detail["fields"] == ["seq_len", "k_dim"] and err.detail["deployed"]["max_seq_len"] == 128
        for name in ("/models/org-model", "served-name"):
            await svc.generate(gen_request([1], wait=True, params={**PARAMS, "model": name}))
        await svc.init_generate(init())
        await svc.init_generate(init(batch_size=7))  # identical but for the hint: a no-op
        await raises(409, svc.init_generate(init(block_height=10)))
        await svc.stop()
        await svc.stop()  # idempotent

    asyncio.run(run())


def test_queue_runs_fifo_after_generation_and_forgets_results():
    async def run():
        engine = FlakyArtifactEngine()
        svc = service(engine, max_queued_nonces=10, result_keep_s=0.3)
        await svc.init_generate(init())
        first = await svc.generate(gen_request(range(100, 106)))
        assert first["status"] == "queued" and first["queued_count"] == 6
        second = await svc.generate(gen_request([200, 201]))
        err = await raises(429, svc.generate(gen_request([1, 2, 3])))
        assert err.detail == "Queue full: 8 nonces queued, limit is 10"
        await asyncio.sleep(0.1)
        assert svc.job_state(first["request_id"])["status"] == "queued"  # generation holds the engine
        assert svc.status().queued_nonces == 8
        await svc.generation.stop()
        while svc.job_state(second["request_id"])["status"] != "completed":
            await asyncio.sleep(0.01)
        done = svc.job_state("8080:" + first["request_id"])
        assert set(done) == {"status", "request_id", "artifacts", "encoding"}
        assert [a["nonce"] for a in done["artifacts"]] == list(range(100, 106))
        assert engine.computed[-8:] == [100, 101, 102, 103, 104, 105, 200, 201]  # FIFO
        await asyncio.sleep(0.4)
        await raises(404, job_state(svc, first["request_id"]))

    asyncio.run(run())


def validation(nonces, forged=(), bad_b64=(), k=12) -> dict:
    round_ = ArtifactRound(block_hash="bh", public_key="pk", seq_len=16, k_dim=k)
    artifacts = []
    for n in nonces:
        vector = artifact(round_, n + 1_000_000) if n in forged else artifact(round_, n)
        artifacts.append({"nonce": n, "vector_b64": "not base64!" if n in bad_b64 else vector})
    return {"artifacts": artifacts[::-1]}  # any order: matched by nonce


def test_validation_verdicts_with_the_networks_thresholds():
    """200 nonces at 0.2 / 0.1 / 0.01: fraud needs >= 31 mismatches."""
    nonces = list(range(0, 400, 2))
    network = {"dist_threshold": 0.2, "p_mismatch": 0.1, "fraud_threshold": 0.01, "p_value_threshold": 0.05}

    async def run():
        svc = service(FlakyArtifactEngine(nonfinite=frozenset({398})))
        honest = await svc.generate(gen_request(nonces, wait=True, validation=validation(nonces), stat_test=network))
        assert set(honest) == {"status", "request_id", "n_total", "n_mismatch", "mismatch_nonces", "p_value",
                               "fraud_detected", "fraud_threshold", "skipped_nonces"}
        assert (honest["n_total"], honest["n_mismatch"], honest["fraud_detected"]) == (200, 0, False)
        assert honest["skipped_nonces"] == [398] and honest["p_value"] == 1.0
        verdicts = []
        for forged in (nonces[:30], nonces[:31]):
            body = validation(nonces, forged=forged[1:], bad_b64=forged[:1])
            verdicts.append(await svc.generate(gen_request(nonces, wait=True, validation=body, stat_test=network)))
        assert [v["n_mismatch"] for v in verdicts] == [30, 31]
        assert [v["fraud_detected"] for v in verdicts] == [False, True]
        assert verdicts[1]["mismatch_nonces"] == nonces[:31] and verdicts[1]["fraud_threshold"] == 0.01
        # Defaults (0.02 / 0.001 / 0.01) for missing stat_test fields: 3 of 200 is fraud.
        body = validation(nonces, forged=nonces[:3])
        assert (await svc.generate(gen_request(nonces, wait=True, validation=body,
                                               stat_test={"dist_threshold": 0.02})))["fraud_detected"] is True
        for bad, message in [(validation(nonces[1:]), "validation.artifacts nonces must match nonces field"),
                             ({"artifacts": validation(nonces)["artifacts"] + [{"nonce": 0, "vector_b64": ""}]},
                              "validation.artifacts nonces must not repeat")]:
            err = await raises(400, svc.generate(gen_request(nonces, wait=True, validation=bad)))
            assert err.detail == message
        await raises(400, svc.generate(gen_request([1, 1], wait=True)))

    asyncio.run(run())


def test_p_value_threshold_switch():
    nonces = list(range(200))
    network = {"dist_threshold": 0.2, "p_mismatch": 0.1, "p_value_threshold": 0.05}

    async def run():
        svc = service(FlakyArtifactEngine(), p_value_threshold_as_fraud_threshold=True)
        body = validation(nonces, forged=nonces[:28])
        verdict = await svc.generate(gen_request(nonces, wait=True, validation=body, stat_test=network))
        assert (verdict["fraud_threshold"], verdict["fraud_detected"]) == (0.05, True)

    asyncio.run(run())


def test_queued_jobs_send_their_callbacks_exactly_as_the_spec_says():
    async def run(url):
        svc = service(FlakyArtifactEngine())
        gen = await svc.generate(gen_request([5, 6], url=url))
        val = await svc.generate(gen_request([5, 6], url=url, validation=validation([5, 6], forged=[6])))
        await svc.generate(gen_request([7], url=url, wait=True))  # wait=true sends none
        for job in (gen, val):
            while svc.job_state(job["request_id"])["status"] != "completed":
                await asyncio.sleep(0.01)
        while svc.status().callbacks["sent"] < 2:
            await asyncio.sleep(0.01)
        return gen, val

    with CallbackReceiver() as receiver:
        gen, val = asyncio.run(run(receiver.url))
        generated, validated = receiver.bodies("/generated"), receiver.bodies("/validated")
    assert len(generated) == len(validated) == 1
    assert generated[0] == {"request_id": gen["request_id"], "block_hash": "bh", "block_height": 9,
                            "public_key": "pk", "node_id": 1, "encoding": {"dtype": "f16", "k_dim": 12, "endian": "le"},
                            "artifacts": generated[0]["artifacts"]}
    assert [a["nonce"] for a in generated[0]["artifacts"]] == [5, 6]
    assert set(validated[0]) == {"request_id", "block_hash", "block_height", "public_key", "node_id", "n_total",
                                 "n_mismatch", "mismatch_nonces", "p_value", "fraud_detected"}
    assert (validated[0]["request_id"], validated[0]["mismatch_nonces"]) == (val["request_id"], [6])


def test_waited_request_waits_for_generation_then_answers_503():
    async def run():
        svc = service(FlakyArtifactEngine(), call_timeout_s=0.3)
        await svc.init_generate(init())
        started = time.monotonic()
        err = await raises(503, svc.generate(gen_request([1], wait=True)))
        assert time.monotonic() - started >= 0.3 and "generation" in err.detail
        await svc.stop()
        slow = service(FlakyArtifactEngine(delay=1.0), call_timeout_s=0.1)
        err = await raises(503, slow.generate(gen_request([1], wait=True)))
        assert "within 0.1 s" in err.detail

    asyncio.run(run())


def test_stop_cancels_jobs_flushes_once_and_counts_what_it_drops():
    async def run(url):
        svc = service(FlakyArtifactEngine())
        await svc.init_generate(init(url=url))
        queued = await svc.generate(gen_request([1, 2], url=url))
        await asyncio.sleep(0.1)
        receiver.stop()
        await asyncio.sleep(0.2)  # artifacts pile up for the dead receiver
        waited = asyncio.create_task(svc.generate(gen_request([3], wait=True)))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await svc.stop()
        assert time.monotonic() - started < 11
        assert (await waited)["status"] == "completed"  # it waited for the engine; stop freed it
        await raises(404, job_state(svc, queued["request_id"]))
        status = svc.status()
        assert status.queued_nonces == 0 and status.jobs == {"queued": 0, "running": 0, "completed": 0, "failed": 0}
        assert status.callbacks["dropped"] >= 1 and status.callbacks["dropped_artifacts"] > 0
        assert status.callbacks["pending"] == 0
        generated = svc.generation.total
        return generated, status.callbacks["dropped_artifacts"]

    with CallbackReceiver() as receiver:
        generated, dropped = asyncio.run(run(receiver.url))
        delivered = {a["nonce"] for b in receiver.bodies("/generated") for a in b["artifacts"]}
    # Nothing lost silently. (>=: a POST cut off by the outage after the receiver took it counts
    # as failed, and may be retried and dropped.)
    assert len(delivered) + dropped >= generated and len(delivered) <= generated


def test_policies_between_v1_and_v2():
    async def run():
        svc, policies = wired(FlakyArtifactEngine(), lambda: v1.state)
        sender = CallbackSender()

        async def compute(round: PoCRound, nonces: list[int]) -> list[float]:
            await asyncio.sleep(0.01)
            return [1.5] * len(nonces)

        v1 = RoundManager(compute=compute, callbacks=sender,
                          settings=GenerationSettings(call_size=lambda s: 8, batches_in_flight=2), max_seq_len=128,
                          generation_conflict=policies.v1_generation_conflict)
        v1_round = PoCInitRequest(block_hash="b", block_height=1, public_key="k", r_target=1.4, node_id=0,
                                  node_count=1, seq_len=16)
        assert policies.inference_busy_reason() is None
        await svc.init_generate(init())
        assert "v2 generation is running" in policies.inference_busy_reason()
        err = await raises(409, v1.init_generate(v1_round))
        assert "PoC v2 generation is running" in err.detail and v1.state == "IDLE"
        await v1.init(v1_round)
        await raises(409, v1.phase_generate())
        await svc.stop()
        await v1.init_generate(v1_round)
        err = await raises(409, svc.init_generate(init()))
        assert "PoC v1 round is generating" in err.detail
        assert not policies.jobs_may_run() and "state GENERATING" in policies.inference_busy_reason()
        await v1.stop()
        assert policies.jobs_may_run() and policies.inference_busy_reason() is None
        await svc.generate(gen_request([1], wait=True))  # jobs never block inference
        await sender.close(1)

    asyncio.run(run())


def test_a_job_whose_engine_keeps_failing_fails_and_the_queue_goes_on():
    async def run():
        engine = FlakyArtifactEngine(fail_every=1)  # every call fails
        svc = service(engine)
        err = await raises(502, svc.generate(gen_request([1, 2], wait=True)))
        assert "failed 3 times" in err.detail and "replica died" in err.detail
        job = await svc.generate(gen_request([1, 2]))
        while svc.job_state(job["request_id"])["status"] in ("queued", "running"):
            await asyncio.sleep(0.01)
        failed = svc.job_state(job["request_id"])
        assert failed["status"] == "failed" and "replica died" in failed["error"]
        engine.fail_every = 0
        done = await svc.generate(gen_request([3]))
        while svc.job_state(done["request_id"])["status"] != "completed":
            await asyncio.sleep(0.01)
        assert svc.status().jobs == {"queued": 0, "running": 0, "completed": 1, "failed": 1}

    asyncio.run(run())
