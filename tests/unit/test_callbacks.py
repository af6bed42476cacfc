"""CallbackSender against a real local HTTP receiver: order, outages, retries, bounded memory."""

import asyncio
import logging

import pytest
from tests.support.receiver import CallbackReceiver

from poc_serve.serve.core.callbacks import CallbackSender

FAST = {"backoff_base": 0.05, "backoff_cap": 0.2}


@pytest.fixture
def receiver():
    with CallbackReceiver() as r:
        yield r


def generated(nonces, block_hash="bh", public_key="pk"):
    return {"public_key": public_key, "block_hash": block_hash, "block_height": 7,
            "nonces": list(nonces), "dist": [n / 1000 for n in nonces], "r_target": 1.4,
            "node_id": 0}


def all_nonces(bodies):
    return [n for body in bodies for n in body["nonces"]]


def check_pairs(bodies):
    # Merging and dropping must keep every dist beside its own nonce.
    for body in bodies:
        assert body["dist"] == [n / 1000 for n in body["nonces"]]


def test_batches_arrive_in_order(receiver):
    async def main():
        sender = CallbackSender(receiver.url + "/", **FAST)
        for i in range(5):
            sender.enqueue_generated(generated(range(10 * i, 10 * i + 3)))
            sender.enqueue_validated({"batch": i})
        assert await sender.flush(5)
        assert (sender.pending, sender.sent_count) == (0, 10)
        await sender.close(1)

    asyncio.run(main())
    assert [path for path, _ in receiver.requests()] == ["/generated", "/validated"] * 5
    assert [body["batch"] for body in receiver.bodies("/validated")] == list(range(5))
    assert all_nonces(receiver.bodies("/generated")) == [
        10 * i + k for i in range(5) for k in range(3)]


def test_outage_delivers_every_nonce_once_in_order(receiver):
    async def main():
        sender = CallbackSender(receiver.url, **FAST)
        receiver.stop()
        sender.enqueue_generated(generated(range(0, 5)))
        await asyncio.sleep(0.1)  # the first batch is now in flight, failing
        for start in range(5, 50, 5):
            sender.enqueue_generated(generated(range(start, start + 5)))
            await asyncio.sleep(0.03)
        assert sender.pending == 2  # the batch in flight + everything else merged into one
        await asyncio.sleep(0.4)
        assert sender.sent_count == 0
        receiver.start()
        assert await sender.flush(5)
        await sender.close(1)

    asyncio.run(main())
    bodies = receiver.bodies("/generated")
    assert all_nonces(bodies) == list(range(50))
    assert len(bodies) == 2
    check_pairs(bodies)


def test_server_errors_are_retried(receiver, caplog):
    receiver.fail_next(3)

    async def main():
        sender = CallbackSender(receiver.url, **FAST)
        sender.enqueue_validated({"batch": 1})
        sender.enqueue_generated(generated([1, 2]))
        assert await sender.flush(5)
        await sender.close(1)

    with caplog.at_level(logging.WARNING, logger="ray.serve.poc_serve"):
        asyncio.run(main())
    assert receiver.failures == 3
    assert receiver.bodies("/validated") == [{"batch": 1}]
    assert all_nonces(receiver.bodies("/generated")) == [1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert f"{receiver.url}/validated" in warnings[0] and "attempt 3" in warnings[2]
    assert "HTTP 500" in warnings[0]


def test_merge_keeps_memory_bounded_and_loses_nothing(receiver):
    async def main():
        sender = CallbackSender(receiver.url, **FAST)
        receiver.stop()
        for i in range(1000):
            sender.enqueue_generated(generated([2 * i, 2 * i + 1]))
        assert sender.pending == 1  # nothing was in flight yet: all merged into one item
        await asyncio.sleep(0.2)
        sender.enqueue_generated(generated([2000]))
        sender.enqueue_generated(generated([2001], block_hash="other"))  # another round
        assert sender.pending == 3
        receiver.start()
        assert await sender.flush(5)
        await sender.close(1)

    asyncio.run(main())
    bodies = receiver.bodies("/generated")
    assert [len(b["nonces"]) for b in bodies] == [2000, 1, 1]
    assert all_nonces(bodies) == list(range(2002))
    assert [b["block_hash"] for b in bodies] == ["bh", "bh", "other"]
    check_pairs(bodies)


def test_validated_items_are_not_merged_across(receiver):
    async def main():
        sender = CallbackSender(receiver.url, **FAST)
        receiver.stop()
        sender.enqueue_generated(generated([1]))
        sender.enqueue_validated({"batch": 1})
        sender.enqueue_generated(generated([2]))
        sender.enqueue_generated(generated([3]))
        assert sender.pending == 3
        receiver.start()
        assert await sender.flush(5)
        await sender.close(1)

    asyncio.run(main())
    assert [(p, b.get("nonces")) for p, b in receiver.requests()] == [
        ("/generated", [1]), ("/validated", None), ("/generated", [2, 3])]


def test_only_batches_of_the_same_round_and_url_merge(receiver):
    other_url = receiver.url.replace("127.0.0.1", "localhost")  # same server, another URL

    async def main():
        sender = CallbackSender(receiver.url, **FAST)
        receiver.stop()
        sender.enqueue_generated(generated([0]))
        await asyncio.sleep(0.1)  # in flight
        sender.enqueue_generated(generated([1]))
        sender.enqueue_generated(generated([2]), base_url=receiver.url + "/")  # same URL
        sender.enqueue_generated(generated([3], public_key="pk2"))
        sender.enqueue_generated({**generated([4], public_key="pk2"), "r_target": 1.3})
        sender.enqueue_generated({**generated([5], public_key="pk2"), "r_target": 1.3},
                                 base_url=other_url)
        assert sender.pending == 5
        receiver.start()
        assert await sender.flush(5)
        await sender.close(1)

    asyncio.run(main())
    bodies = receiver.bodies("/generated")
    assert [b["nonces"] for b in bodies] == [[0], [1, 2], [3], [4], [5]]
    assert [(b["public_key"], b["r_target"]) for b in bodies[2:]] == [
        ("pk2", 1.4), ("pk2", 1.3), ("pk2", 1.3)]


def test_max_pending_nonces_drops_the_oldest(receiver, caplog):
    async def main():
        sender = CallbackSender(receiver.url, max_pending_nonces=10, **FAST)
        receiver.stop()
        sender.enqueue_generated(generated(range(0, 5)))
        await asyncio.sleep(0.1)  # in flight: not subject to the cap
        sender.enqueue_generated(generated(range(5, 12), block_hash="bh2"))
        sender.enqueue_validated({"batch": 1})
        for start in range(12, 20, 4):
            sender.enqueue_generated(generated(range(start, start + 4), block_hash="bh2"))
        receiver.start()
        assert await sender.flush(5)
        await sender.close(1)

    with caplog.at_level(logging.ERROR, logger="ray.serve.poc_serve"):
        asyncio.run(main())
    # 15 nonces queued behind the one in flight: the 5 oldest (5..9) went, the batch 5..11 kept
    # its newest two, and the validated callback kept its place.
    assert [(p, b.get("nonces")) for p, b in receiver.requests()] == [
        ("/generated", [0, 1, 2, 3, 4]), ("/generated", [10, 11]), ("/validated", None),
        ("/generated", list(range(12, 20)))]
    check_pairs(receiver.bodies("/generated"))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "max_pending_nonces=10" in errors[0]


def test_max_pending_nonces_removes_emptied_batches(receiver):
    async def main():
        sender = CallbackSender(receiver.url, max_pending_nonces=3, **FAST)
        receiver.stop()
        sender.enqueue_generated(generated([0]))
        await asyncio.sleep(0.1)
        sender.enqueue_generated(generated([1, 2], block_hash="a"))
        sender.enqueue_generated(generated([3, 4, 5], block_hash="b"))
        assert sender.pending == 2  # the batch in flight and b; a was dropped entirely
        receiver.start()
        assert await sender.flush(5)
        await sender.close(1)

    asyncio.run(main())
    assert all_nonces(receiver.bodies("/generated")) == [0, 3, 4, 5]


def test_flush_times_out_while_down_and_succeeds_after(receiver):
    async def main():
        sender = CallbackSender(receiver.url, **FAST)
        assert await sender.flush(0.1)  # nothing pending
        receiver.stop()
        sender.enqueue_generated(generated([1, 2, 3]))
        assert not await sender.flush(0.3)
        assert sender.pending == 1
        receiver.start()
        assert await sender.flush(5)
        assert sender.pending == 0
        await sender.close(1)

    asyncio.run(main())
    assert all_nonces(receiver.bodies("/generated")) == [1, 2, 3]


def test_close_gives_up_on_undeliverable_callbacks(receiver, caplog):
    async def main():
        sender = CallbackSender(receiver.url, **FAST)
        receiver.stop()
        sender.enqueue_generated(generated([1, 2, 3]))
        with caplog.at_level(logging.ERROR, logger="ray.serve.poc_serve"):
            assert not await sender.close(0.2)
        with pytest.raises(RuntimeError):
            sender.enqueue_validated({"batch": 1})

    asyncio.run(main())
    assert "3 generated nonces lost" in caplog.text


def test_validated_bodies_arrive_intact(receiver):
    body = {"public_key": "pk", "block_hash": "bh", "block_height": 7, "nonces": [3, 9, 2**40],
            "dist": [0.1234567890123, 1.5, 1e-300], "received_dist": [0.1234567890123, 1.5, 0.0],
            "r_target": 1.4, "fraud_threshold": 0.01, "n_invalid": 1,
            "probability_honest": 0.0014989, "fraud_detected": False, "node_id": None,
            "computed_distances": [0.1234567890123, 1.5, 1e-300], "note": "ünïcode"}

    async def main():
        sender = CallbackSender(**FAST)
        sender.enqueue_validated(body, base_url=receiver.url)
        assert await sender.flush(5)
        await sender.close(1)

    asyncio.run(main())
    assert receiver.bodies("/validated") == [body]


def test_enqueue_needs_a_url():
    async def main():
        sender = CallbackSender()
        with pytest.raises(ValueError):
            sender.enqueue_validated({"batch": 1})
        await sender.close(1)

    asyncio.run(main())
