"""CallbackSender with v2's delivery rules (poc-v2.md section 4.2): at most 10 attempts, a 4xx
other than 408/429 is final, a clear gives each pending callback one last attempt; every dropped
callback and artifact is counted and reported."""

import asyncio
import logging

import httpx

from poc_serve.serve.core.callbacks import CallbackSender
from tests.support.receiver import CallbackReceiver

FAST = {"backoff_base": 0.01, "backoff_cap": 0.02}


def body(nonces, request_id=None):
    extra = {"request_id": request_id} if request_id else {}
    return {**extra, "public_key": "pk", "block_hash": "bh", "block_height": 3, "node_id": 0,
            "artifacts": [{"nonce": n, "vector_b64": "AAAA"} for n in nonces],
            "encoding": {"dtype": "f16", "k_dim": 2, "endian": "le"}}


def answering(statuses: list[int]):
    """A sender whose POSTs are answered with ``statuses`` in turn (the last one repeats)."""
    seen: list[tuple[str, int]] = []
    outcomes: list[tuple[str, str, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append((request.url.raw_path.decode(), status))
        return httpx.Response(status)

    sender = CallbackSender(max_attempts=10, retry_client_errors=False,
                            on_outcome=lambda *o: outcomes.append(o), **FAST)
    sender._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return sender, seen, outcomes


def test_ten_attempts_then_dropped_and_counted(caplog):
    async def main():
        sender, seen, outcomes = answering([503])
        sender.enqueue_artifacts(body([1, 2, 3]), "http://dapi/v2/poc-batches/a%252Fb")
        sender.enqueue_validated({"n_total": 1}, "http://dapi/x")
        assert await sender.flush(5)
        return sender, seen, outcomes

    with caplog.at_level(logging.ERROR, logger="ray.serve.poc_serve"):
        sender, seen, outcomes = asyncio.run(main())
    assert [p for p, _ in seen] == ["/v2/poc-batches/a%252Fb/generated"] * 10 + ["/x/validated"] * 10
    assert (sender.dropped_count, sender.dropped_items, sender.sent_count) == (2, 3, 0)
    assert outcomes == [("generated", "dropped", 3), ("validated", "dropped", 0)]
    assert "attempt 10 failed: HTTP 503" in caplog.text


def test_client_errors_are_final_but_408_and_429_are_retried():
    async def main():
        sender, seen, outcomes = answering([429, 408, 200, 400])
        sender.enqueue_artifacts(body([1]), "http://dapi")
        sender.enqueue_artifacts(body([2], request_id="job"), "http://dapi")
        assert await sender.flush(5)
        return sender, seen, outcomes

    sender, seen, outcomes = asyncio.run(main())
    assert [s for _, s in seen] == [429, 408, 200, 400]
    assert outcomes == [("generated", "sent", 1), ("generated", "dropped", 1)]


def test_job_bodies_never_merge_nor_shrink_and_stream_bodies_merge():
    async def main(url):
        sender = CallbackSender(max_pending_nonces=2, **FAST)
        receiver.stop()
        sender.enqueue_artifacts(body([0]), url)
        await asyncio.sleep(0.05)  # in flight
        for nonces, request_id in [([1], None), ([2], None), ([3, 4, 5], "a"), ([], "b"), ([5], None)]:
            if request_id:
                sender.enqueue_whole("generated", body(nonces, request_id), url)
            else:
                sender.enqueue_artifacts(body(nonces), url)
        receiver.start()
        assert await sender.flush(5)
        await sender.close(1)

    with CallbackReceiver() as receiver:
        asyncio.run(main(receiver.url))
        bodies = receiver.bodies("/generated")
    # The cap of 2 pending artifacts cut the stream's oldest (1) and never a job's result.
    assert [[a["nonce"] for a in b["artifacts"]] for b in bodies] == [[0], [2], [3, 4, 5], [], [5]]
    assert [b.get("request_id") for b in bodies] == [None, None, "a", "b", None]


def test_clear_gives_one_last_attempt_then_drops_the_rest():
    async def main(url):
        sender = CallbackSender(max_attempts=10, **{"backoff_base": 5.0, "backoff_cap": 5.0})
        receiver.stop()
        sender.enqueue_artifacts(body([1, 2]), url)
        await asyncio.sleep(0.1)  # failed once, now in a 5 s backoff
        sender.enqueue_validated({"n_total": 2}, url)
        receiver.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await sender.clear(2) == 0  # both delivered by their last attempt, at once
        assert loop.time() - started < 1
        receiver.stop()
        sender.enqueue_artifacts(body([3]), url)
        assert await sender.clear(2) == 1
        assert (sender.pending, sender.dropped_count, sender.dropped_items) == (0, 1, 1)
        receiver.start()
        sender.enqueue_artifacts(body([4]), url)  # still usable
        assert await sender.flush(5)
        await sender.close(1)

    with CallbackReceiver() as receiver:
        asyncio.run(main(receiver.url))
        nonces = [a["nonce"] for b in receiver.bodies("/generated") for a in b["artifacts"]]
    assert nonces == [1, 2, 4]


def test_the_dapis_stage_refusal_is_final_and_every_callback_is_json(caplog):
    """The DAPI's callback server answers 415 without Content-Type: application/json and 400
    "block_height is not the active PoC stage" to a payload of another stage (spec ml-node.md 6.2):
    every POST carries the type, and that 400 is final for its payload, logged and counted."""
    types: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        types.append(request.headers.get("content-type"))
        return httpx.Response(400, text="block_height is not the active PoC stage")

    async def main():
        outcomes: list[tuple] = []
        sender = CallbackSender(max_attempts=10, retry_client_errors=False, on_outcome=lambda *o: outcomes.append(o),
                                **FAST)
        sender._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        sender.enqueue_artifacts(body([1, 2]), "http://api:9100/v2/poc-batches/Qwen%252FQwen3")
        assert await sender.flush(5)
        return sender, outcomes

    with caplog.at_level(logging.ERROR, logger="ray.serve.poc_serve"):
        sender, outcomes = asyncio.run(main())
    assert types == ["application/json"]  # one attempt: final
    assert outcomes == [("generated", "dropped", 2)] and sender.dropped_count == 1
    assert "HTTP 400" in caplog.text
