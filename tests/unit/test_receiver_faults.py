"""A v1 round whose receiver misbehaves for a long stretch, in every way a real one can: 5xx, 4xx,
connections reset, answers slower than the sender's timeout. The round keeps generating, the
backlog stays one merged callback, /status shows it, and once the receiver behaves every valid
nonce reaches it exactly once."""

from __future__ import annotations

import asyncio

from poc_serve.serve.core.callbacks import CallbackSender
from poc_serve.serve.core.loop import GenerationSettings
from poc_serve.serve.pow_v1.service import RoundManager
from tests.support.receiver import CallbackReceiver
from tests.support.flaky_engines import FlakyDistanceEngine
from tests.support.services import v1_request

FAULTS = [("500", 12), ("404", 12), ("reset", 12), ("slow", 3)]


def test_a_misbehaving_receiver_delays_callbacks_and_loses_nothing():
    async def run(receiver):
        sender = CallbackSender(timeout=0.3, backoff_base=0.02, backoff_cap=0.03)
        settings = GenerationSettings(call_size=lambda seq_len: 8, batches_in_flight=3, callback_interval_s=0.05,
                                      log_interval_s=1.0)
        mgr = RoundManager(compute=FlakyDistanceEngine().compute, callbacks=sender, settings=settings, max_seq_len=128)
        await mgr.init_generate(v1_request(r_target=2.0, callback_url=receiver.url))
        seen = []
        for fault, count in FAULTS:
            receiver.fail_next(count, fault, slow_s=0.5)
            while receiver.failures < sum(c for _, c in FAULTS[:FAULTS.index((fault, count)) + 1]):
                seen.append(mgr.status().callbacks)
                await asyncio.sleep(0.02)
        checked_during_faults = mgr.gen.checked
        await mgr.stop()
        assert await sender.flush(10)
        return mgr, seen, checked_during_faults

    with CallbackReceiver() as receiver:
        mgr, seen, checked = asyncio.run(run(receiver))
        sent = [n for body in receiver.bodies("/generated") for n in body["nonces"]]
    assert checked > 100  # generation went on through the outage
    assert sorted(sent) == sorted(mgr.gen.valid_nonces) and len(sent) == len(set(sent))
    assert max(s.pending_callbacks for s in seen) <= 2  # merged: one pending, one on the wire
    assert max(s.pending_items for s in seen) > 0
    errors = {s.last_error.split(": ", 1)[1].split(":")[0] for s in seen if s.last_error}
    assert {"HTTP 500", "HTTP 404", "RemoteProtocolError", "ReadTimeout"} <= errors, errors
    final = mgr.status().callbacks
    assert final.failed_attempts >= sum(c for _, c in FAULTS) and final.last_error is None
    assert (final.pending_callbacks, final.dropped_items) == (0, 0)
