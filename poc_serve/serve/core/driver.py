"""The one generation driver of v1 rounds, v2 generation and v2 jobs: it hands nonce batches out to
the engine replicas, keeps a fixed number of engine calls in flight, and re-runs a failed batch
with the same nonces so that nonces stay dense and none is computed twice.

Knows nothing of HTTP, Ray or what a batch computes: the engine call is an injected coroutine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, Sequence

from poc_serve.serve.core.errors import logger

# After a failed batch (replica died, restarting) wait before handing batches out again.
RETRY_DELAY_S = 1.0


class BatchSource(Protocol):
    """Where batches come from: :class:`poc_serve.poc.nonces.NonceSequence` or ``NonceList``."""

    def take(self, count: int) -> list[int]:
        """The next batch; [] when the source is used up."""
        ...

    def put_back(self, nonces: list[int]) -> None:
        """Give back a batch that was not computed."""
        ...


@dataclass
class Every:
    """An action the driver runs every ``interval_s`` seconds while it runs (first at its start),
    whether or not a batch ended in between."""

    interval_s: float
    action: Callable[[], None]
    _next: float = 0.0

    def due_in(self, now: float) -> float:
        """Seconds until the action is due (0 when it is)."""
        return max(0.0, self._next - now)

    def poll(self, now: float) -> None:
        """Run the action when it is due."""
        if now >= self._next:
            self.action()
            self._next = now + self.interval_s


class BatchFailed(RuntimeError):
    """A batch failed ``max_attempts`` times; the driver gave up on the whole run. ``timed_out``:
    the last attempt ran past the call timeout (rather than raising)."""

    def __init__(self, message: str, timed_out: bool):
        super().__init__(message)
        self.timed_out = timed_out


async def drive_batches(compute: Callable[[list[int]], Awaitable[Any]], source: BatchSource, call_size: int,
                        in_flight_limit: int, record: Callable[[list[int], Any], None],
                        stop: asyncio.Event | None = None, periodic: Sequence[Every] = (),
                        call_timeout_s: float | None = None, max_attempts: int | None = None,
                        retry_delay_s: float | None = None) -> None:
    """Compute every batch of ``source`` (until ``stop`` is set, for an endless one) with at most
    ``in_flight_limit`` calls of ``compute`` at once, passing each result to ``record``.

    After ``stop`` the calls in flight finish and are recorded, and a batch that failed gets one
    more attempt, so the computed nonces stay dense up to the last one. A call that raises or
    takes longer than ``call_timeout_s`` is retried with the same nonces; after ``max_attempts``
    failures of one batch (None: never) :class:`BatchFailed` is raised. Batches left uncomputed
    (cancellation, give-up, a failure after stop) go back to ``source``, so a later run resumes
    without a gap.
    """
    stop = stop or asyncio.Event()
    in_flight: dict[asyncio.Task, list[int]] = {}
    failures: dict[tuple[int, ...], int] = {}
    retry: list[list[int]] = []  # failed batches, handed out again before any new one
    retried_after_stop: set[tuple[int, ...]] = set()
    stop_wait = asyncio.create_task(stop.wait())

    async def call(batch: list[int]) -> Any:
        return await asyncio.wait_for(compute(batch), call_timeout_s)

    def next_batch() -> list[int]:
        if not stop.is_set():
            return retry.pop(0) if retry else source.take(call_size)
        while retry:  # after stop: each failed batch once more, no new nonces
            batch = retry.pop(0)
            if tuple(batch) not in retried_after_stop:
                retried_after_stop.add(tuple(batch))
                return batch
            source.put_back(batch)
        return []

    try:
        while True:
            while len(in_flight) < in_flight_limit:
                batch = next_batch()
                if not batch:
                    break
                in_flight[asyncio.create_task(call(batch))] = batch
            if not in_flight:
                return
            waiting = [*in_flight] if stop.is_set() else [*in_flight, stop_wait]
            # Woken when a periodic action is due too, so that callbacks go out on time however
            # long a batch takes (a CPU engine takes seconds per batch at seq_len 1024).
            due = min((every.due_in(time.monotonic()) for every in periodic), default=None)
            done, _ = await asyncio.wait(waiting, timeout=due, return_when=asyncio.FIRST_COMPLETED)
            failed = False
            for task in done:
                if task is stop_wait:
                    continue
                batch = in_flight.pop(task)
                try:
                    record(batch, task.result())
                except Exception as exc:  # a replica died or timed out: hand the batch out again
                    retry.append(batch)
                    failed = True
                    key = tuple(batch)
                    failures[key] = failures.get(key, 0) + 1
                    timed_out = isinstance(exc, asyncio.TimeoutError)
                    cause = f"no answer within {call_timeout_s} s" if timed_out else str(exc) or repr(exc)
                    if max_attempts is not None and failures[key] >= max_attempts:
                        raise BatchFailed(f"a batch of {len(batch)} nonces failed {failures[key]} times, "
                                          f"last: {cause}", timed_out) from exc
                    logger.warning("PoC batch of %d nonces failed, retrying it: %s", len(batch), cause)
            now = time.monotonic()
            for every in periodic:
                every.poll(now)
            if failed and not stop.is_set():
                await asyncio.sleep(RETRY_DELAY_S if retry_delay_s is None else retry_delay_s)
    finally:
        stop_wait.cancel()
        for task, batch in in_flight.items():  # on cancellation or give-up: keep them for a resume
            task.cancel()
            source.put_back(batch)
        for batch in retry:
            source.put_back(batch)
