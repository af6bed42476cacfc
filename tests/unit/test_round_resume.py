"""A v1 round outliving its ingress: the round manager checkpoints into a store, a crash throws
the manager away mid-round (tasks cancelled, nothing flushed), and a new manager over the same
store resumes it. The store is in memory here; tests/e2e/test_service_e2e.py kills the real
ingress replica of a Serve app, whose store is Ray's GCS."""

from __future__ import annotations

import asyncio
import time

from poc_serve.serve.core import store as round_store
from poc_serve.serve.core.callbacks import CallbackSender
from poc_serve.serve.core.loop import GenerationLoop, GenerationSettings
from poc_serve.serve.pow_v1.service import RoundManager
from poc_serve.serve.core.store import MemoryStore, RoundJournal, RoundSnapshot
from tests.support.receiver import CallbackReceiver
from tests.support.flaky_engines import FlakyArtifactEngine, FlakyDistanceEngine
from tests.support.services import URL_PATH, gen_request, init, v1_request, wired

IN_FLIGHT = 3
BATCH = 8


def _manager(engine: FlakyDistanceEngine, store: MemoryStore) -> RoundManager:
    settings = GenerationSettings(call_size=lambda seq_len: BATCH, batches_in_flight=IN_FLIGHT,
                                  callback_interval_s=0.05, log_interval_s=1.0)
    return RoundManager(compute=engine.compute, callbacks=CallbackSender(backoff_base=0.02, backoff_cap=0.05),
                        settings=settings, max_seq_len=128, journal=RoundJournal(store, "app/v1-round"))


async def _crash(loop: GenerationLoop, sender: CallbackSender) -> None:
    """Throw a generation loop away as a killed process would: its tasks stop, nothing is flushed.
    Waits first until no callback is on the wire and the store holds every change, since a kill
    between a receiver's 200 and the checkpoint of that delivery (milliseconds) sends it again."""
    checkpointer = loop.checkpointer
    while sender.pending or not checkpointer._clean.is_set():
        await sender.flush()
        await checkpointer.flush()
    for task in (loop._task, sender._task, checkpointer._task):
        task.cancel()
    await asyncio.sleep(0)


def test_a_round_resumes_after_a_crash_and_every_valid_nonce_reaches_the_receiver_once(monkeypatch):
    monkeypatch.setattr(round_store, "MIN_WRITE_INTERVAL_S", 0.0)

    async def run(url):
        store, engine = MemoryStore(), FlakyDistanceEngine()
        first = _manager(engine, store)
        await first.init_generate(v1_request(r_target=2.0, callback_url=url))
        while first.gen.settled < 20:
            await asyncio.sleep(0.01)
        await _crash(first._loop, first._callbacks)
        checked_at_crash, valid_at_crash = first.gen.checked, list(first.gen.valid_nonces)

        second = _manager(engine, store)
        snapshot = second._checkpointer.journal.load()
        second.resume(snapshot)
        assert second.state == "GENERATING" and second.request == first.request
        assert second.gen.checked == checked_at_crash and second.gen.valid_nonces == valid_at_crash
        while second.gen.checked < checked_at_crash + 200:
            await asyncio.sleep(0.01)
        await second.stop()
        await second._callbacks.flush(10)
        return engine, second

    with CallbackReceiver() as receiver:
        engine, mgr = asyncio.run(run(receiver.url))
        sent = [n for body in receiver.bodies("/generated") for n in body["nonces"]]
    assert sorted(sent) == sorted(mgr.gen.valid_nonces) and len(sent) == len(set(sent))  # each once
    checked = [1 + 2 * i for i in range(mgr.gen.checked)]  # the sequence went on without a hole
    assert sorted(set(engine.computed)) == checked
    assert mgr.status().total_valid == len(mgr.gen.valid_nonces) and mgr.state == "STOPPED"
    twice = len(engine.computed) - len(set(engine.computed))
    assert twice <= IN_FLIGHT * BATCH  # only the batches in flight at the crash


def test_a_validating_round_comes_back_with_its_results_and_does_not_generate():
    async def run():
        store, engine = MemoryStore(), FlakyDistanceEngine()
        first = _manager(engine, store)
        await first.init_generate(v1_request(r_target=2.0))
        while first.gen.checked < 50:
            await asyncio.sleep(0.01)
        await first.phase_validate()
        await first._checkpointer.flush()
        second = _manager(engine, store)
        second.resume(second._checkpointer.journal.load())
        await asyncio.sleep(0.1)
        return first, second, engine

    first, second, engine = asyncio.run(run())
    assert second.state == "VALIDATING" and not second._loop.running
    assert second.status().model_dump() == {**first.status().model_dump(), "is_model_initialized": False}


def test_the_journal_keeps_chunks_per_round_and_ignores_an_old_checkpoint(monkeypatch):
    monkeypatch.setattr(round_store, "CHUNK_NONCES", 3)
    store = MemoryStore()
    journal = RoundJournal(store, "k")
    nonces, dist = list(range(10)), [0.5 + i for i in range(10)]
    for count in (2, 7, 10):  # chunks fill across writes; full ones are written once
        journal.write(RoundSnapshot({"round_id": "a", "valid": count}, nonces, dist))
    loaded = RoundJournal(store, "k").load()
    assert (loaded.valid_nonces, loaded.valid_distances) == (nonces, dist)
    journal.write(RoundSnapshot({"round_id": "b", "valid": 1}, [42], [0.1]))
    assert sorted(store.data) == ["k/b/0", "k/head"]  # round a's chunks are gone
    assert RoundJournal(store, "k").load().valid_nonces == [42]
    assert RoundJournal(store, "k").load(max_age_s=-1) is None


def test_a_store_that_fails_briefly_delays_callbacks_and_loses_nothing(monkeypatch):
    monkeypatch.setattr(round_store, "WRITE_RETRY_S", 0.05)
    store = MemoryStore()
    put, failures = store.put, [2]

    def flaky_put(key, value):
        if failures[0] and key.endswith("/head"):
            failures[0] -= 1
            raise ConnectionError("GCS unavailable")
        put(key, value)

    store.put = flaky_put

    async def run(url):
        mgr = _manager(FlakyDistanceEngine(), store)
        await mgr.init_generate(v1_request(r_target=2.0, callback_url=url))
        deadline = time.monotonic() + 10
        while mgr.gen.checked < 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await mgr.stop()
        await mgr._callbacks.flush(10)
        return mgr

    with CallbackReceiver() as receiver:
        mgr = asyncio.run(run(receiver.url))
        sent = [n for body in receiver.bodies("/generated") for n in body["nonces"]]
    assert failures[0] == 0 and sorted(sent) == sorted(mgr.gen.valid_nonces)
    assert RoundJournal(store, "app/v1-round").load().head["state"] == "STOPPED"


def test_a_shutdown_sends_what_was_found_and_the_next_replica_goes_on_from_there():
    async def run(url):
        store, engine = MemoryStore(), FlakyDistanceEngine()
        first = _manager(engine, store)
        await first.init_generate(v1_request(r_target=2.0, callback_url=url))
        while first.gen.checked < 100:
            await asyncio.sleep(0.01)
        await first.shutdown(stop_timeout=5, flush_timeout=5)
        shut = list(first.gen.valid_nonces)
        sent_by_first = [n for body in receiver.bodies("/generated") for n in body["nonces"]]
        second = _manager(engine, store)
        snapshot = second._checkpointer.journal.load()
        assert snapshot.head["state"] == "GENERATING" and snapshot.head["settled"] == len(shut)
        second.resume(snapshot)
        while second.gen.checked < len(shut) + 100:
            await asyncio.sleep(0.01)
        await second.stop()
        await second._callbacks.flush(10)
        return shut, sent_by_first, second

    with CallbackReceiver() as receiver:
        shut, sent_by_first, second = asyncio.run(run(receiver.url))
        sent = [n for body in receiver.bodies("/generated") for n in body["nonces"]]
    assert sorted(sent_by_first) == sorted(shut)  # everything found went out before the shutdown ended
    assert sorted(sent) == sorted(second.gen.valid_nonces) and len(sent) == len(set(sent))
    assert sorted(second.gen.valid_nonces) == [1 + 2 * i for i in range(second.gen.checked)]


def test_a_v2_generation_resumes_after_a_crash_and_every_artifact_reaches_the_receiver_once(monkeypatch):
    """v2 keeps no artifact in the store: a batch stays open until the receiver has its artifacts,
    and the resumed loop computes the open batches again (artifacts are deterministic)."""

    monkeypatch.setattr(round_store, "MIN_WRITE_INTERVAL_S", 0.0)
    store = MemoryStore()

    def service(engine):
        return wired(engine, lambda: "IDLE", journal=RoundJournal(store, "app/v2-generation"))[0]

    async def run(url):
        engine = FlakyArtifactEngine()
        first = service(engine)
        await first.init_generate(init(url=url))
        while first.generation._settled < 40:
            await asyncio.sleep(0.01)
        await _crash(first.generation._loop, first._stream)
        second = service(engine)
        second.generation.resume(RoundJournal(store, "app/v2-generation").load())
        assert second.status().status == "GENERATING"
        while second.generation.total < first.generation.total + 100:
            await asyncio.sleep(0.01)
        await second.stop()
        assert RoundJournal(store, "app/v2-generation").load().head["resumable"] is False
        return second

    with CallbackReceiver() as receiver:
        second = asyncio.run(run(receiver.url + URL_PATH))
        bodies = receiver.bodies(URL_PATH.replace("%25", "%") + "/generated")
    sent = [a["nonce"] for body in bodies for a in body["artifacts"]]
    assert sorted(sent) == [1 + 3 * i for i in range(second.generation.total)] and len(sent) == len(set(sent))


def test_a_shutdown_abandons_batches_whose_engine_is_gone_and_the_next_replica_computes_them():
    """Serve stops the engine replicas with the ingress: calls in flight may never answer. The
    shutdown gives them its stop timeout, then saves them as open; the next replica computes them."""
    engine = FlakyDistanceEngine()
    gone = asyncio.Event()

    async def compute(round_, nonces):
        if gone.is_set():
            await asyncio.Event().wait()  # a replica that never answers
        return await engine.compute(round_, nonces)

    async def run():
        store = MemoryStore()
        first = _manager(engine, store)
        first._compute = compute
        await first.init_generate(v1_request(r_target=2.0))
        while first.gen.checked < 50:
            await asyncio.sleep(0.01)
        gone.set()
        started = time.monotonic()
        await first.shutdown(stop_timeout=0.5, flush_timeout=1)
        took = time.monotonic() - started
        second = _manager(engine, store)
        second.resume(second._checkpointer.journal.load())
        while second.gen.checked < first.gen.checked + 100:
            await asyncio.sleep(0.01)
        await second.stop()
        return took, second

    took, second = asyncio.run(run())
    assert took < 3
    assert sorted(second.gen.valid_nonces) == [1 + 2 * i for i in range(second.gen.checked)]


def test_accepted_v2_jobs_run_after_a_crash_under_their_ids():
    """A queued job is saved before it is answered; the replica after a crash runs the jobs not
    done with (queued, running, or their result not delivered) and sends their results."""
    from poc_serve.serve.core.store import JobJournal

    store = MemoryStore()

    def service(engine):
        return wired(engine, lambda: "IDLE", job_journal=JobJournal(store, "app/v2-jobs"))[0]

    async def run(url):
        engine = FlakyArtifactEngine(delay=0.05)
        first = service(engine)
        ids = [(await first.generate(gen_request(range(10 * i, 10 * i + 10), url=url)))["request_id"]
               for i in range(3)]
        await asyncio.sleep(0.02)
        first.jobs._worker.cancel()  # the crash: nothing finishes, nothing is sent
        await asyncio.sleep(0)
        second = service(engine)
        assert second.jobs.resume() == 3
        deadline = time.monotonic() + 10
        while any(second.job_state(i)["status"] != "completed" for i in ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await second._job_sender.flush(10)
        await asyncio.sleep(0.1)  # the journal's removals run in a thread
        return ids, second

    with CallbackReceiver() as receiver:
        ids, second = asyncio.run(run(receiver.url + URL_PATH))
        bodies = receiver.bodies(URL_PATH.replace("%25", "%") + "/generated")
    assert sorted(b["request_id"] for b in bodies) == sorted(ids)
    assert all(len(b["artifacts"]) == 10 for b in bodies)
    assert JobJournal(store, "app/v2-jobs").load() == []  # delivered: nothing left to resume


def test_a_v2_job_that_cannot_be_saved_is_refused_not_lost():
    from poc_serve.serve.core.errors import ServiceError
    from poc_serve.serve.core.store import JobJournal

    store = MemoryStore()

    def unavailable(key, value):
        raise ConnectionError("GCS unavailable")

    store.put = unavailable
    svc = wired(FlakyArtifactEngine(), lambda: "IDLE", job_journal=JobJournal(store, "app/v2-jobs"))[0]

    async def run():
        try:
            await svc.generate(gen_request([1, 2]))
        except ServiceError as exc:
            return exc

    error = asyncio.run(run())
    assert error.status_code == 503 and "could not be saved" in error.detail
    assert svc.jobs.counts() == {"queued": 0, "running": 0, "completed": 0, "failed": 0}


def test_a_checkpoint_that_cannot_be_read_leaves_a_new_replica_idle_and_working(caplog):
    from poc_serve.serve.ingress import _resume

    store = MemoryStore()
    RoundJournal(store, "app/v1-round").write(RoundSnapshot({"round_id": "a", "valid": 3}, [1, 2, 3], [0.1] * 3))
    del store.data["app/v1-round/a/0"]  # a chunk lost: the head counts nonces the store lacks

    async def run():
        mgr = _manager(FlakyDistanceEngine(), store)
        _resume("the v1 round", mgr.resume, mgr._checkpointer.journal)
        await mgr.init_generate(v1_request(r_target=2.0))  # the node works as a fresh one
        while mgr.gen.checked < 20:
            await asyncio.sleep(0.01)
        await mgr.stop()
        return mgr

    mgr = asyncio.run(run())
    assert "could not resume the v1 round from its checkpoint" in caplog.text
    assert mgr.state == "STOPPED" and RoundJournal(store, "app/v1-round").load().head["state"] == "STOPPED"


def test_a_snapshot_that_raises_is_logged_and_never_hangs_a_control_call(caplog):
    def broken() -> RoundSnapshot:
        raise KeyError("a bug in the snapshot")

    async def run():
        checkpointer = round_store.Checkpointer(RoundJournal(MemoryStore(), "k"), broken)
        checkpointer.mark()
        await asyncio.wait_for(checkpointer.flush(), 5)

    asyncio.run(run())
    assert "round checkpoint not taken" in caplog.text
