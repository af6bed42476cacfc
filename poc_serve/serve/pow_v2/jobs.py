"""The queue of PoC v2 generate jobs (``wait`` false, poc-v2.md sections 4 and 4.1): FIFO, one at a
time and only while no generation loop runs, bounded by the nonces it holds, results kept for a
while after a job ends. With a journal an accepted job is saved before it is answered and kept
until it is done with, so the replica after this one runs it again (results are deterministic).

Knows nothing of HTTP, Ray or what a job computes: ``run`` is an injected coroutine.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from poc_serve.serve.pow_v2.protocol import GenerateRequest, JobStatus
from poc_serve.serve.core.errors import ServiceError, logger
from poc_serve.serve.core.store import JobJournal

MAX_QUEUED_NONCES = 100_000
RESULT_KEEP_S = 300.0
# What the ML node puts before a backend's request ids.
_PORT_PREFIX = re.compile(r"^\d+:")
# How often a job waiting for a generation loop to end checks again.
_WAIT_POLL_S = 0.2


@dataclass
class Job:
    """One queued generate request and what became of it."""

    request: GenerateRequest
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: JobStatus = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    finished_at: float | None = None

    def answer(self) -> dict[str, Any]:
        """GET generate/{request_id}: the state, plus the result when completed or the error when failed."""
        if self.status == "completed":
            return self.result
        answer = {"status": self.status, "request_id": self.request_id}
        if self.status == "failed":
            answer["error"] = self.error
        return answer


class JobQueue:
    """Runs queued jobs one at a time, in order, whenever ``may_run()`` says the engine is free.

    ``run(request, request_id)`` computes a job's result (a dict); ``on_done(job)`` hears of every completed or
    failed job (callbacks, metrics).
    """

    def __init__(self, run: Callable[[GenerateRequest, str], Awaitable[dict[str, Any]]], may_run: Callable[[], bool],
                 on_done: Callable[[Job], None], max_queued_nonces: int = MAX_QUEUED_NONCES,
                 keep_s: float = RESULT_KEEP_S, journal: JobJournal | None = None):
        self._run = run
        self._may_run = may_run
        self._on_done = on_done
        self._max_queued_nonces = max_queued_nonces
        self._keep_s = keep_s
        self._journal = journal
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._worker: asyncio.Task | None = None

    @property
    def queued_nonces(self) -> int:
        """Nonces of the jobs that wait (the running one excluded)."""
        return sum(len(job.request.nonces) for job in self._queue)

    def counts(self) -> dict[str, int]:
        """Jobs held now, by status."""
        self._forget_expired()
        counts = {"queued": 0, "running": 0, "completed": 0, "failed": 0}
        for job in self._jobs.values():
            counts[job.status] = counts.get(job.status, 0) + 1
        return counts

    async def submit(self, request: GenerateRequest) -> Job:
        """Queue a job, saved first; 429 when its nonces do not fit under the limit."""
        queued = self.queued_nonces
        if queued + len(request.nonces) > self._max_queued_nonces:
            raise ServiceError(429, f"Queue full: {queued} nonces queued, limit is {self._max_queued_nonces}")
        job = Job(request)
        if self._journal:
            try:
                await asyncio.to_thread(self._journal.add, job.request_id, request.model_dump_json().encode())
            except Exception as exc:  # not accepted: nothing may be lost that was answered "queued"
                raise ServiceError(503, f"the job could not be saved ({type(exc).__name__}: {exc}); retry") from exc
        self._enqueue(job)
        return job

    def resume(self) -> int:
        """Queue again the jobs a replica before this one accepted and did not finish with, under
        their request ids; returns how many. Call on the event loop, before any request."""
        saved = self._journal.load() if self._journal else []
        for request_id, request in saved:
            self._enqueue(Job(GenerateRequest.model_validate_json(request), request_id))
        return len(saved)

    def done_with(self, job: Job) -> None:
        """The job needs no resume any more (its result is delivered, or there is none to send)."""
        if self._journal:
            asyncio.get_running_loop().run_in_executor(None, self._journal.remove, job.request_id)

    def _enqueue(self, job: Job) -> None:
        self._forget_expired()
        self._jobs[job.request_id] = job
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return job

    def get(self, request_id: str) -> Job | None:
        """A job by id (with or without the ML node's ``"<port>:"`` prefix); None when unknown or expired."""
        self._forget_expired()
        return self._jobs.get(_PORT_PREFIX.sub("", request_id))

    async def clear(self) -> None:
        """Cancel the running job, drop the queue and every kept result (stop)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        self._queue.clear()
        self._jobs.clear()
        if self._journal:
            await asyncio.to_thread(self._journal.clear)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for request_id in [i for i, j in self._jobs.items() if j.finished_at and now - j.finished_at > self._keep_s]:
            del self._jobs[request_id]

    async def _work(self) -> None:
        while self._queue:
            while not self._may_run():
                await asyncio.sleep(_WAIT_POLL_S)
            job = self._queue.popleft()
            job.status = "running"
            try:
                job.result = await self._run(job.request, job.request_id)
                job.status = "completed"
            except Exception as exc:  # the job fails, the queue goes on
                job.status, job.error = "failed", str(exc) or type(exc).__name__
                logger.error("PoC v2 job %s (%d nonces) failed: %s", job.request_id, len(job.request.nonces),
                             job.error)
            job.finished_at = time.monotonic()
            self._on_done(job)
