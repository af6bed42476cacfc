"""The one generation loop of v1 rounds and v2 generation: start the batch driver
(:mod:`poc_serve.serve.core.driver`) over an endless nonce sequence with its two periodic actions
(send what is new, log the progress line), stop it, and keep the time it generated.

Knows no contract: what a batch computes and records, what is sent, what the progress line says
and which metric takes the rate are injected. Each contract keeps only its ledger: v1 the valid
nonces and their distances, v2 the unsent artifacts and how many the receiver settled.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from poc_serve.serve.core.driver import BatchSource, Every, drive_batches
from poc_serve.serve.core.errors import logger
from poc_serve.serve.core.store import Checkpointer


@dataclass(frozen=True)
class GenerationSettings:
    """How the services drive the engine, shared by v1 rounds, v2 generation and v2 jobs."""

    call_size: Callable[[int], int]
    """Nonces per engine call for a seq_len."""
    batches_in_flight: int
    """Engine calls kept running at once (replicas x per-replica queue), so every replica stays busy."""
    callback_interval_s: float = 5.0
    """At most one send of what is new per this many seconds."""
    log_interval_s: float = 5.0
    """Seconds between progress lines."""
    call_timeout_s: float | None = 60.0
    """An engine call without an answer by then is retried with the same nonces; None: no bound."""


class GenerationLoop:
    """Runs at most one generation at a time and keeps its time; a contract owns one for life.

    Invariants:

    - At most one driver task runs: :meth:`start` while one runs is an error, :meth:`stop` when
      none runs is a no-op (and says so).
    - Time counts only while a task runs: :meth:`elapsed` is the seconds since the last
      :meth:`reset` (a new round, or the figure of a checkpoint) plus the running stretch, and
      :meth:`rate` is ``count() / elapsed()`` (0 before any time).
    - While running, ``send()`` and the progress line come at most every ``callback_interval_s``
      and ``log_interval_s`` seconds, after the batches recorded by then.
    - :meth:`stop` lets the batches in flight finish and be recorded; after its ``timeout`` those
      still in flight are abandoned, and the driver puts them back into the source (they stay
      open, so a resumed loop computes them). A loop that ended with an error is logged and
      stopped all the same.
    - After the task ended, in this order: the time is added, the change is marked and saved
      (the checkpoint holds every record), then ``send()`` runs (so a contract that sends only
      saved results sends all it found) and the progress line is logged.
    """

    def __init__(self, settings: GenerationSettings, name: str, send: Callable[[], None],
                 count: Callable[[], int], progress: Callable[[float, float], str],
                 record_rate: Callable[[float], None] | None = None, checkpointer: Checkpointer | None = None):
        """``name`` goes into the warnings; ``count()`` is what the rate counts; ``progress(elapsed_s,
        rate)`` is the progress line; ``record_rate(rate)`` sets its metric."""
        self.settings = settings
        self.checkpointer = checkpointer
        self._name = name
        self._send = send
        self._count = count
        self._progress = progress
        self._record_rate = record_rate
        self._seconds = 0.0
        self._since: float | None = None
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether a task runs (also while it finishes its last batches after a stop)."""
        return self._task is not None

    def reset(self, seconds: float = 0.0) -> None:
        """Count the time from ``seconds`` on (a new round: 0; a resumed one: its checkpoint's)."""
        assert self._task is None, "stop the running generation first"
        self._seconds = seconds

    def elapsed(self) -> float:
        """Seconds generated since the last reset, the running stretch included."""
        running = time.monotonic() - self._since if self._since is not None else 0.0
        return self._seconds + running

    def rate(self) -> float:
        """``count()`` per generating second."""
        elapsed = self.elapsed()
        return self._count() / elapsed if elapsed > 0 else 0.0

    def start(self, compute: Callable[[list[int]], Awaitable[Any]], source: BatchSource, seq_len: int,
              record: Callable[[list[int], Any], None]) -> None:
        """Drive ``source``'s batches (sized for ``seq_len``) through ``compute`` into ``record``
        until :meth:`stop`."""
        assert self._task is None, "stop the running generation first"
        s = self.settings
        self._since = time.monotonic()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(drive_batches(
            compute, source, s.call_size(seq_len), s.batches_in_flight, record, self._stop,
            periodic=[Every(s.callback_interval_s, self._send), Every(s.log_interval_s, self.log_progress)],
            call_timeout_s=s.call_timeout_s))

    async def stop(self, timeout: float | None = None) -> bool:
        """Stop the running task (see the class's invariants); False when none ran."""
        if self._task is None:
            return False
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, timeout)
        except asyncio.TimeoutError:
            logger.warning("abandoned the %s batches still in flight after %.0f s", self._name, timeout)
        except Exception:  # a bug, not an engine failure (those are retried): stop anyway, say why
            logger.exception("%s generation loop ended with an error", self._name)
        finally:
            self._task = None
            self._seconds = self.elapsed()
            self._since = None
            self.changed()
        await self.saved()
        self._send()
        self.log_progress()
        return True

    def log_progress(self) -> None:
        """The progress line (monitoring greps ``Generated: ``) and the rate metric."""
        rate = self.rate()
        if self._record_rate:
            self._record_rate(rate)
        logger.info(self._progress(self.elapsed(), rate))

    def changed(self) -> None:
        """The contract's state changed: checkpoint it soon (a no-op without a checkpointer)."""
        if self.checkpointer:
            self.checkpointer.mark()

    async def saved(self) -> None:
        """Wait until the store holds every change (a no-op without a checkpointer)."""
        if self.checkpointer:
            await self.checkpointer.flush()
