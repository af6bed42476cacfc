"""In-order, retrying delivery of the /generated and /validated callbacks (spec section 4).

The reference dropped callbacks that failed or came late; here every callback is queued and sent
FIFO by one background task, retried with exponential backoff until it is delivered or the sender
is closed. Pending /generated batches are merged and capped so an unreachable receiver cannot
make memory grow without bound.
"""

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx

logger = logging.getLogger(__name__)

GENERATED = "generated"
VALIDATED = "validated"


@dataclass(eq=False)  # deque.remove() must remove this very item, not an equal one
class _Item:
    """One pending POST: its target URL, kind and JSON body."""

    url: str
    kind: str
    body: dict[str, Any]

    def merge_key(self) -> tuple[str, dict[str, Any]] | None:
        """What must be equal for two /generated batches to become one (all but the lists)."""
        if self.kind != GENERATED:
            return None
        return self.url, {k: v for k, v in self.body.items() if k not in ("nonces", "dist")}

    def size(self) -> int:
        """Nonces this item holds (counted against max_pending_nonces when /generated)."""
        return len(self.body["nonces"]) if self.kind == GENERATED else 0


class CallbackSender:
    """Sends callbacks one at a time, in order, retrying failures until delivered or closed.

    Not thread-safe: call every method from the event loop that runs the sender. The
    background task starts on the first enqueue (or `start()`) on the running loop.

    Memory is bounded: a /generated batch is merged into the last pending item when that item is
    a /generated batch for the same URL and round fields (block_hash, public_key, ...) and is not
    the one being sent. At most `max_pending_nonces` /generated nonces wait in the queue (the
    batch being sent comes on top); beyond that the OLDEST pending nonces are dropped and an
    error is logged, so a long outage loses the earliest work rather than the newest.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        max_pending_nonces: int = 1_000_000,
    ) -> None:
        """`base_url` is the default for enqueues that name none; times are in seconds."""
        self._base_url = base_url
        self._timeout = timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_pending_nonces = max_pending_nonces
        self._queue: deque[_Item] = deque()
        self._queued_nonces = 0
        self._current: _Item | None = None
        self._sent = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Callbacks not yet delivered, the one being sent included."""
        return len(self._queue) + (self._current is not None)

    @property
    def sent_count(self) -> int:
        """Callbacks delivered (answered 2xx) so far."""
        return self._sent

    def start(self) -> None:
        """Start the background task on the running loop, if it is not running already."""
        if self._closed:
            raise RuntimeError("CallbackSender is closed")
        if self._task is None or self._task.done():
            self._client = self._client or httpx.AsyncClient(timeout=self._timeout)
            self._task = asyncio.get_running_loop().create_task(self._run())

    def enqueue_generated(self, batch: dict[str, Any], base_url: str | None = None) -> None:
        """Queue a ProofBatch dict of valid nonces (with r_target) for `{base_url}/generated`."""
        self.start()
        item = _Item(self._url(base_url, GENERATED), GENERATED, dict(batch))
        item.body["nonces"] = list(batch["nonces"])
        item.body["dist"] = list(batch["dist"])
        if not item.body["nonces"]:
            return
        last = self._queue[-1] if self._queue else None
        if last is not None and last.merge_key() == item.merge_key():
            last.body["nonces"].extend(item.body["nonces"])
            last.body["dist"].extend(item.body["dist"])
        else:
            self._queue.append(item)
        self._queued_nonces += item.size()
        self._drop_oldest_over_cap()
        self._notify()

    def enqueue_validated(self, batch: dict[str, Any], base_url: str | None = None) -> None:
        """Queue a ValidatedBatch dict for `{base_url}/validated`."""
        self.start()
        self._queue.append(_Item(self._url(base_url, VALIDATED), VALIDATED, dict(batch)))
        self._notify()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued callback is delivered: True, or False after `timeout` s."""
        if not self.pending:
            return True
        self.start()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float | None = None) -> bool:
        """Flush for up to `timeout` s, then stop; returns whether everything was delivered."""
        if self._closed:
            return not self.pending
        delivered = await self.flush(timeout)
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._client is not None:
            await self._client.aclose()
        if not delivered:
            lost = self._queued_nonces + (self._current.size() if self._current else 0)
            logger.error("closing with %d callbacks undelivered (%d generated nonces lost)",
                         self.pending, lost)
        return delivered

    def _url(self, base_url: str | None, kind: str) -> str:
        base = base_url or self._base_url
        if not base:
            raise ValueError("no callback base_url given")
        return f"{base.rstrip('/')}/{kind}"

    def _notify(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    def _drop_oldest_over_cap(self) -> None:
        excess = self._queued_nonces - self._max_pending_nonces
        if excess <= 0:
            return
        self._queued_nonces -= excess
        logger.error("callback queue over max_pending_nonces=%d: dropping the %d oldest "
                     "pending generated nonces", self._max_pending_nonces, excess)
        for item in list(self._queue):
            if excess == 0:
                break
            if item.kind != GENERATED:
                continue
            cut = min(excess, item.size())
            del item.body["nonces"][:cut]
            del item.body["dist"][:cut]
            excess -= cut
            if not item.body["nonces"]:
                self._queue.remove(item)

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
            # Popped before sending so later enqueues never merge into a batch in flight.
            self._current = self._queue.popleft()
            self._queued_nonces -= self._current.size()
            await self._deliver(self._current)
            self._current = None

    async def _deliver(self, item: _Item) -> None:
        try:
            content = json.dumps(item.body).encode()
        except (TypeError, ValueError):
            # Could never succeed; retrying would block every later callback forever.
            logger.exception("dropping callback to %s: body is not JSON-serialisable", item.url)
            return
        assert self._client is not None
        headers = {"Content-Type": "application/json"}
        delay, attempt = self._backoff_base, 1
        while True:
            try:
                response = await self._client.post(item.url, content=content, headers=headers)
                if response.is_success:
                    self._sent += 1
                    return
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            logger.warning("callback to %s failed (attempt %d): %s; retrying in %.2f s",
                           item.url, attempt, error, delay)
            await asyncio.sleep(delay)
            delay, attempt = min(delay * 2, self._backoff_cap), attempt + 1
