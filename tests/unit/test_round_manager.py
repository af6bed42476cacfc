"""The round manager alone, with the real math on the CPU standing in for an engine: batch hand-out
over several in-flight calls, a failing replica (a fault the CPU suite cannot cause on demand),
stop semantics and callbacks to a real receiver."""

from __future__ import annotations

import asyncio

import pytest

from poc_serve.poc import NonceSequence
from poc_serve.serve.core import driver as generation
from poc_serve.serve.core.callbacks import CallbackSender
from poc_serve.serve.core.errors import ServiceError
from poc_serve.serve.core.loop import GenerationLoop, GenerationSettings
from poc_serve.serve.core.store import Checkpointer, MemoryStore, RoundJournal, RoundSnapshot
from poc_serve.serve.pow_v1.service import RoundManager
from tests.support.flaky_engines import FlakyDistanceEngine
from tests.support.receiver import CallbackReceiver
from tests.support.services import v1_request


def _manager(engine, callbacks, in_flight=3) -> RoundManager:
    settings = GenerationSettings(call_size=lambda seq_len: 8, batches_in_flight=in_flight, callback_interval_s=0.05,
                                  log_interval_s=0.05)
    return RoundManager(compute=engine.compute, callbacks=callbacks, settings=settings, max_seq_len=128)


def test_failed_batches_are_recomputed_and_no_nonce_is_lost_or_repeated(monkeypatch):
    monkeypatch.setattr(generation, "RETRY_DELAY_S", 0.05)  # the wait for a restarting replica

    async def run():
        engine = FlakyDistanceEngine(fail_every=3)
        mgr = _manager(engine, CallbackSender())
        await mgr.init_generate(v1_request(r_target=2.0))
        while mgr.gen.checked < 200:
            await asyncio.sleep(0.01)
        await mgr.stop()
        return engine, mgr

    engine, mgr = asyncio.run(run())
    assert engine.calls > 30  # failures happened and were retried
    assert sorted(engine.computed) == sorted(set(engine.computed))
    assert sorted(mgr.gen.valid_nonces) == [1 + 2 * i for i in range(mgr.gen.checked)]
    assert mgr.state == "STOPPED"


def test_stop_counts_in_flight_batches_and_flushes_them_to_the_receiver():
    async def run(url):
        engine = FlakyDistanceEngine()
        sender = CallbackSender(backoff_base=0.05, backoff_cap=0.1)
        mgr = _manager(engine, sender, in_flight=4)
        await mgr.init_generate(v1_request(callback_url=url))
        await asyncio.sleep(0.3)
        await mgr.phase_validate()  # stops generating; everything computed is counted
        assert mgr.gen.checked == len(engine.computed)
        await mgr.phase_generate()  # resumes the same nonce sequence
        await asyncio.sleep(0.2)
        await mgr.stop()
        assert await sender.flush(timeout=10)
        return engine, mgr

    with CallbackReceiver() as receiver:
        engine, mgr = asyncio.run(run(receiver.url))
        sent = [n for body in receiver.bodies("/generated") for n in body["nonces"]]
    assert sorted(engine.computed) == sorted(set(engine.computed))
    assert sorted(sent) == sorted(mgr.gen.valid_nonces) and len(sent) == len(set(sent)) > 0
    assert all(d < 1.41 for d in mgr.gen.valid_distances)


def test_state_rules():
    async def run():
        mgr = _manager(FlakyDistanceEngine(), CallbackSender())
        with pytest.raises(ServiceError) as e:
            await mgr.phase_generate()
        assert e.value.status_code == 400
        with pytest.raises(ServiceError) as e:
            await mgr.init(v1_request(seq_len=129))
        assert e.value.status_code == 400 and "max_model_len" in str(e.value)
        await mgr.init_generate(v1_request())
        await mgr.init_generate(v1_request())  # identical: no-op
        assert mgr.state == "GENERATING"
        for call in (mgr.init(v1_request()), mgr.init_generate(v1_request(block_height=2))):
            with pytest.raises(ServiceError) as e:
                await call
            assert e.value.status_code == 409
        await mgr.init_validate(v1_request(node_id=-1, node_count=-1))
        assert mgr.state == "VALIDATING" and mgr.gen.checked == 0
        await mgr.stop()
        await mgr.stop()  # idempotent
        assert mgr.state == "STOPPED"

    asyncio.run(run())


def test_status_pages_or_omits_the_valid_nonces():
    """The default status lists every valid nonce (the protocol's answer); offset/limit page the
    lists in step with each other, limit 0 omits them, and the totals stay whole either way."""
    async def run():
        mgr = _manager(FlakyDistanceEngine(), CallbackSender())
        await mgr.init_generate(v1_request(r_target=2.0))  # every nonce valid
        while mgr.gen.checked < 40:
            await asyncio.sleep(0.01)
        await mgr.stop()
        return mgr

    mgr = asyncio.run(run())
    whole = mgr.status()
    assert whole.total_valid == len(whole.valid_nonces) == whole.total_checked >= 40
    page = mgr.status(offset=10, limit=5)
    assert page.valid_nonces == whole.valid_nonces[10:15]
    assert page.valid_distances == whole.valid_distances[10:15]
    assert page.total_valid == whole.total_valid and page.total_checked == whole.total_checked
    assert mgr.status(limit=0).valid_nonces == [] and mgr.status(limit=0).total_valid == whole.total_valid
    assert mgr.status(offset=whole.total_valid).valid_nonces == []


def test_a_batch_failing_as_the_round_stops_is_computed_before_the_driver_ends():
    """The shared generation driver (v1 and v2): a batch whose call fails just as stop is set is
    still computed (one more attempt), so the computed nonces have no hole; a batch that fails
    again after stop goes back to the nonce sequence for a resume instead of looping."""
    from poc_serve.poc.nonces import NonceSequence
    from poc_serve.serve.core.driver import drive_batches

    async def run(fail_again: bool):
        stop, computed, calls = asyncio.Event(), [], [0]

        async def compute(batch):
            calls[0] += 1
            call = calls[0]
            await asyncio.sleep(0.001)
            if call == 3 or (fail_again and stop.is_set()):
                stop.set()  # the round stops as this batch fails
                raise RuntimeError("replica died")
            return batch

        seq = NonceSequence(0, 1)
        await drive_batches(compute, seq, 4, 2, lambda batch, result: computed.extend(result), stop,
                            retry_delay_s=0)
        return computed, seq

    computed, _ = asyncio.run(run(fail_again=False))
    assert sorted(computed) == list(range(len(computed))) and len(computed) >= 12
    computed, seq = asyncio.run(run(fail_again=True))
    # calls 3 and 4 failed, and again after stop; calls 1 and 2 run at once and finish in either order
    assert sorted(computed) == list(range(8))
    assert sorted(seq.take(4) + seq.take(4)) == list(range(8, 16))  # given back, first in line for a resume


def test_the_shared_generation_loop_saves_before_its_last_send_and_abandons_late_batches():
    """The loop both contracts run: time counts only while it runs, a stop after its timeout puts
    the batches in flight back into the sequence, and the last send comes after the save."""
    async def run():
        checkpointer = Checkpointer(RoundJournal(MemoryStore(), "k"),
                                    lambda: RoundSnapshot({"round_id": "r", "valid": 0}, [], []))
        calls, recorded, saved_at_send, lines = [], [], [], []

        async def compute(batch):
            calls.append(batch)
            if len(calls) > 4:
                await asyncio.Event().wait()  # the engine went away
            return batch

        loop = GenerationLoop(GenerationSettings(lambda seq_len: 4, 2, callback_interval_s=60, log_interval_s=60),
                              "test", lambda: saved_at_send.append(checkpointer._clean.is_set()),
                              lambda: len(recorded), lambda elapsed_s, rate: lines.append(rate) or "Generated: ",
                              checkpointer=checkpointer)
        assert await loop.stop() is False and loop.elapsed() == 0 and loop.rate() == 0
        nonces = NonceSequence(0, 1)
        loop.start(compute, nonces, 16, lambda batch, result: recorded.extend(result))
        while len(calls) < 6:
            await asyncio.sleep(0.01)
        assert await loop.stop(timeout=0.1) is True
        elapsed = loop.elapsed()
        await asyncio.sleep(0.05)
        assert not loop.running and loop.elapsed() == elapsed > 0
        assert saved_at_send[-1] is True and lines[-1] == loop.rate() == len(recorded) / elapsed
        return recorded, calls, nonces

    recorded, calls, nonces = asyncio.run(run())
    assert sorted(recorded) == list(range(16))
    assert sorted([nonces.take(4), nonces.take(4)]) == sorted(calls[4:6])  # abandoned, handed out again


def test_periodic_actions_run_on_time_while_a_batch_takes_longer():
    """Callbacks go out every interval even when one engine call takes several intervals (a CPU
    engine at seq_len 1024): the driver wakes for a due action, not only when a batch ends."""
    async def main() -> list[float]:
        ticks: list[float] = []
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def slow(batch: list[int]) -> list[float]:
            await asyncio.sleep(0.5)
            return [1.0] * len(batch)

        every = generation.Every(0.1, lambda: ticks.append(loop.time()))
        run = asyncio.create_task(generation.drive_batches(slow, NonceSequence(0, 1), 4, 1, lambda b, r: None, stop,
                                                           periodic=[every]))
        await asyncio.sleep(1.2)
        stop.set()
        await run
        return ticks

    ticks = asyncio.run(main())
    # About 12 ticks at 0.1 s over 1.2 s; polled only when a batch ends there would be 3 or 4.
    assert len(ticks) >= 8
