"""In-order, retrying delivery of the /generated and /validated callbacks (v1 spec section 4,
v2 spec section 4.2).

The reference dropped callbacks that failed or came late; here every callback is queued and sent
FIFO by one background task, retried with exponential backoff until it is delivered, the sender
gives up on it (v2: ``max_attempts``, a 4xx other than 408/429) or the sender is closed or
cleared. Pending /generated batches are merged and capped so an unreachable receiver cannot make
memory grow without bound. Nothing is lost silently: every dropped callback and every dropped
nonce or artifact is counted and logged at error.
"""

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

# A child of Serve's logger, so retry warnings and drops land in the replica log and the dashboard.
logger = logging.getLogger("ray.serve.poc_serve")

GENERATED = "generated"
VALIDATED = "validated"
# The lists of a /generated body: v1 sends nonces with their distances, v2 artifacts.
_V1_LISTS = ("nonces", "dist")
_V2_LISTS = ("artifacts",)
# Client errors that a later attempt may cure; any other 4xx is final.
_RETRIED_CLIENT_ERRORS = (408, 429)


@dataclass(eq=False)  # deque.remove() must remove this very item, not an equal one
class _Item:
    """One pending POST: its target URL, kind and JSON body."""

    url: str
    kind: str
    body: dict[str, Any]
    # The body's lists that merge and count against the cap; () for a callback sent as it is.
    lists: tuple[str, ...] = ()
    # Called once the item is settled (delivered or given up); merged items keep every hook.
    on_settled: list[Callable[[], None]] = field(default_factory=list)

    def merge_key(self) -> tuple[str, dict[str, Any]] | None:
        """What must be equal for two /generated batches to become one (all but the lists)."""
        if not self.lists:
            return None
        return self.url, {k: v for k, v in self.body.items() if k not in self.lists}

    def size(self) -> int:
        """Nonces (v1) or artifacts (v2) this item holds, counted against max_pending_nonces."""
        return len(self.body[self.lists[0]]) if self.lists else 0


class CallbackSender:
    """Sends callbacks one at a time, in order, retrying failures until delivered or closed.

    Not thread-safe: call every method from the event loop that runs the sender. The
    background task starts on the first enqueue (or `start()`) on the running loop.

    Memory is bounded: a /generated batch is merged into the last pending item when that item is
    a /generated batch for the same URL and round fields (block_hash, public_key, ...) and is not
    the one being sent. At most `max_pending_nonces` /generated nonces wait in the queue (the
    batch being sent comes on top); beyond that the OLDEST pending nonces are dropped and an
    error is logged, so a long outage loses the earliest work rather than the newest.

    ``max_attempts`` (None: until delivered) and ``retry_client_errors`` (False: a 4xx other than
    408/429 is final) set when a callback is given up; ``on_outcome(kind, "sent" | "dropped",
    items)`` observes every delivered or dropped callback, ``on_attempt_failed(kind)`` every
    failed POST and ``on_backlog(callbacks, items)`` what is not delivered yet after each change
    (for metrics).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        max_pending_nonces: int = 1_000_000,
        max_attempts: int | None = None,
        retry_client_errors: bool = True,
        on_outcome: Callable[[str, str, int], None] | None = None,
        on_attempt_failed: Callable[[str], None] | None = None,
        on_backlog: Callable[[int, int], None] | None = None,
    ) -> None:
        """`base_url` is the default for enqueues that name none; times are in seconds."""
        self._base_url = base_url
        self._timeout = timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_pending_nonces = max_pending_nonces
        self._max_attempts = max_attempts
        self._retry_client_errors = retry_client_errors
        self._on_outcome = on_outcome
        self._on_attempt_failed = on_attempt_failed
        self._on_backlog = on_backlog
        self._dropped = 0
        self._failed_attempts = 0
        self._last_error: str | None = None  # of the last failed POST, cleared by a delivery
        self._dropped_items = 0
        # Set while clear() gives every pending callback its last attempt.
        self._last_attempt = asyncio.Event()
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

    @property
    def dropped_count(self) -> int:
        """Callbacks given up (attempts spent, final error, cleared or closed undelivered)."""
        return self._dropped

    @property
    def dropped_items(self) -> int:
        """Nonces or artifacts of /generated callbacks that were dropped (by the cap too)."""
        return self._dropped_items

    def stats(self) -> dict[str, Any]:
        """The sender's state for /status: backlog, deliveries, failures and drops so far."""
        return dict(pending_callbacks=self.pending,
                    pending_items=self._queued_nonces + (self._current.size() if self._current else 0),
                    delivered_callbacks=self._sent, failed_attempts=self._failed_attempts,
                    dropped_callbacks=self._dropped, dropped_items=self._dropped_items, last_error=self._last_error)

    def start(self) -> None:
        """Start the background task on the running loop, if it is not running already."""
        if self._closed:
            raise RuntimeError("CallbackSender is closed")
        if self._task is None or self._task.done():
            self._client = self._client or httpx.AsyncClient(timeout=self._timeout)
            self._task = asyncio.get_running_loop().create_task(self._run())

    def enqueue_generated(self, batch: dict[str, Any], base_url: str | None = None,
                          on_settled: Callable[[], None] | None = None) -> None:
        """Queue a ProofBatch dict of valid nonces (with r_target) for `{base_url}/generated`;
        ``on_settled()`` runs once they are delivered or given up (not when the sender closes
        with them undelivered: a resumed round sends them again)."""
        self._enqueue_merged(batch, base_url, _V1_LISTS, on_settled)

    def enqueue_artifacts(self, body: dict[str, Any], base_url: str | None = None,
                          on_settled: Callable[[], None] | None = None) -> None:
        """Queue a v2 generation loop's /generated body (its ``artifacts`` merge like v1's nonces);
        ``on_settled`` as for :meth:`enqueue_generated`."""
        self._enqueue_merged(body, base_url, _V2_LISTS, on_settled)

    def _enqueue_merged(self, body: dict[str, Any], base_url: str | None, lists: tuple[str, ...],
                        on_settled: Callable[[], None] | None = None) -> None:
        self.start()
        item = _Item(self._url(base_url, GENERATED), GENERATED, dict(body), lists, [on_settled] if on_settled else [])
        for key in lists:
            item.body[key] = list(body[key])
        if not item.size():
            return
        last = self._queue[-1] if self._queue else None
        if last is not None and last.merge_key() == item.merge_key():
            for key in lists:
                last.body[key].extend(item.body[key])
            last.on_settled.extend(item.on_settled)
        else:
            self._queue.append(item)
        self._queued_nonces += item.size()
        self._drop_oldest_over_cap()
        self._notify()

    def enqueue_validated(self, batch: dict[str, Any], base_url: str | None = None) -> None:
        """Queue a ValidatedBatch dict for `{base_url}/validated`."""
        self.enqueue_whole(VALIDATED, batch, base_url)

    def enqueue_whole(self, kind: str, body: dict[str, Any], base_url: str | None = None,
                      on_settled: Callable[[], None] | None = None) -> None:
        """Queue a callback for `{base_url}/{kind}` that is sent as it is, never merged nor cut
        (a v1 /validated batch, a v2 job's result); ``on_settled`` as for :meth:`enqueue_generated`."""
        self.start()
        self._queue.append(_Item(self._url(base_url, kind), kind, dict(body), (), [on_settled] if on_settled else []))
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

    async def clear(self, timeout: float) -> int:
        """Give every pending callback one last attempt within ``timeout`` s, then drop what is
        left (counted and logged); returns the callbacks dropped. The sender stays usable."""
        dropped_before = self._dropped
        if self.pending:
            self._last_attempt.set()
            if not await self.flush(timeout):
                await self._cancel_task()
                for item in [*([self._current] if self._current else []), *self._queue]:
                    self._drop(item, "not delivered before the clear's deadline")
                self._queue.clear()
                self._current, self._queued_nonces = None, 0
                self._idle.set()
                self._report_backlog()
            self._last_attempt.clear()
        return self._dropped - dropped_before

    async def close(self, timeout: float | None = None) -> bool:
        """Flush for up to `timeout` s, then stop; returns whether everything was delivered."""
        if self._closed:
            return not self.pending
        delivered = await self.flush(timeout)
        self._closed = True
        await self._cancel_task()
        if self._client is not None:
            await self._client.aclose()
        if not delivered:
            lost = self._queued_nonces + (self._current.size() if self._current else 0)
            logger.error("closing with %d callbacks undelivered (%d generated nonces lost)",
                         self.pending, lost)
            self._dropped += self.pending
            self._dropped_items += lost
        return delivered

    async def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _drop(self, item: _Item, why: str) -> None:
        self._dropped += 1
        self._dropped_items += item.size()
        logger.error("dropping callback to %s (%d items): %s", item.url, item.size(), why)
        if self._on_outcome:
            self._on_outcome(item.kind, "dropped", item.size())
        self._settle(item)

    @staticmethod
    def _settle(item: _Item) -> None:
        for hook in item.on_settled:
            hook()

    def _url(self, base_url: str | None, kind: str) -> str:
        base = base_url or self._base_url
        if not base:
            raise ValueError("no callback base_url given")
        return f"{base.rstrip('/')}/{kind}"

    def _notify(self) -> None:
        self._idle.clear()
        self._wakeup.set()
        self._report_backlog()

    def _report_backlog(self) -> None:
        if self._on_backlog:
            items = self._queued_nonces + (self._current.size() if self._current else 0)
            self._on_backlog(self.pending, items)

    def _drop_oldest_over_cap(self) -> None:
        excess = self._queued_nonces - self._max_pending_nonces
        if excess <= 0:
            return
        self._queued_nonces -= excess
        self._dropped_items += excess
        logger.error("callback queue over max_pending_nonces=%d: dropping the %d oldest "
                     "pending generated nonces", self._max_pending_nonces, excess)
        for item in list(self._queue):
            if excess == 0:
                break
            if item.kind != GENERATED:
                continue
            cut = min(excess, item.size())
            for key in item.lists:
                del item.body[key][:cut]
            excess -= cut
            if not item.size():
                self._queue.remove(item)
                self._settle(item)

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
            self._report_backlog()

    async def _deliver(self, item: _Item) -> None:
        try:
            content = json.dumps(item.body).encode()
        except (TypeError, ValueError) as exc:
            # Could never succeed; retrying would block every later callback forever.
            self._drop(item, f"body is not JSON-serialisable: {exc}")
            return
        assert self._client is not None
        headers = {"Content-Type": "application/json"}
        delay, attempt = self._backoff_base, 1
        while True:
            try:
                response = await self._client.post(item.url, content=content, headers=headers)
                if response.is_success:
                    self._sent += 1
                    self._last_error = None
                    if self._on_outcome:
                        self._on_outcome(item.kind, "sent", item.size())
                    self._settle(item)
                    return
                error = f"HTTP {response.status_code}"
                final = (not self._retry_client_errors and 400 <= response.status_code < 500
                         and response.status_code not in _RETRIED_CLIENT_ERRORS)
            except httpx.HTTPError as exc:
                error, final = f"{type(exc).__name__}: {exc}", False
            self._failed_attempts += 1
            self._last_error = f"{item.url}: {error}"
            if self._on_attempt_failed:
                self._on_attempt_failed(item.kind)
            if final or self._last_attempt.is_set() or attempt == self._max_attempts:
                self._drop(item, f"attempt {attempt} failed: {error}")
                return
            logger.warning("callback to %s failed (attempt %d): %s; retrying in %.2f s",
                           item.url, attempt, error, delay)
            try:  # the backoff ends early when clear() asks for a last attempt
                await asyncio.wait_for(self._last_attempt.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay, attempt = min(delay * 2, self._backoff_cap), attempt + 1
