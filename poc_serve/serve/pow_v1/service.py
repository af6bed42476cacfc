"""The PoC v1 round: state machine, its ledger (valid nonces and distances), validation; generation
runs on the shared loop (:mod:`poc_serve.serve.core.loop`).

Knows nothing of HTTP or Ray: it computes through an injected ``compute`` coroutine (in the
service, a call to the engine deployment's handle) so that tests can drive it directly.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable

from poc_serve.engine.protocol import PoCRound
from poc_serve.poc import NonceSequence, judge
from poc_serve.serve.core.callbacks import CallbackSender
from poc_serve.serve.core.engine_client import EngineReadiness
from poc_serve.serve.core.errors import ServiceError, logger
from poc_serve.serve.core.loop import GenerationLoop, GenerationSettings
from poc_serve.serve.core.metrics import PoCMetrics
from poc_serve.serve.pow_v1.protocol import (CallbackStats, PoCInitRequest, PoCStatus, ProofBatch, State,
                                             ValidatedBatch, ValidationStats)
from poc_serve.serve.core.store import Checkpointer, RoundJournal, RoundSnapshot

ComputeFn = Callable[[PoCRound, list[int]], Awaitable[list[float]]]


@dataclass
class GenerationStats:
    """Generation counters of one round (its generating time is the loop's)."""

    checked: int = 0
    valid_nonces: list[int] = field(default_factory=list)
    valid_distances: list[float] = field(default_factory=list)
    # Valid nonces handed to the callback sender, and those it settled (delivered or gave up):
    # a resumed round sends valid_nonces[settled:] again, nothing before.
    handed_over: int = 0
    settled: int = 0


class RoundManager:
    """Holds the node's round and drives generation and validation.

    ``settings`` size and pace the engine calls (v1 calls have no time bound: its
    ``call_timeout_s`` is not used), the sends and the progress lines. With a ``journal`` every
    change is checkpointed, and :meth:`resume` continues a round from it.
    """

    def __init__(self, compute: ComputeFn, callbacks: CallbackSender, settings: GenerationSettings,
                 max_seq_len: int, generation_conflict: Callable[[], str | None] = lambda: None,
                 metrics: PoCMetrics | None = None, journal: RoundJournal | None = None,
                 readiness: EngineReadiness | None = None):
        self._compute = compute
        self._readiness = readiness or EngineReadiness()
        # Why generation may not start now (another generation holds the engine), or None.
        self._generation_conflict = generation_conflict
        self._call_size = settings.call_size
        self.max_seq_len = max_seq_len
        self._callbacks = callbacks
        self._metrics = metrics
        self.state: State = "IDLE"
        self.request: PoCInitRequest | None = None
        self.gen = GenerationStats()
        self.val = ValidationStats()
        self._nonces: NonceSequence | None = None
        self._round_id = uuid.uuid4().hex
        self._checkpointer = Checkpointer(journal, self._snapshot) if journal else None
        self._loop = GenerationLoop(replace(settings, call_timeout_s=None), "PoC", self._send_found,
                                    lambda: self.gen.checked, self._progress_line,
                                    metrics.record_rate if metrics else None, self._checkpointer)
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- control

    async def init(self, req: PoCInitRequest) -> None:
        """Set the round's config; state IDLE, counters reset. 409 while generating."""
        async with self._lock:
            if self.state == "GENERATING":
                raise ServiceError(409, "a round is generating: POST /stop or /phase/validate first")
            self._configure(req, "IDLE")
            await self._saved()

    async def init_generate(self, req: PoCInitRequest) -> None:
        """Init and start generating; a repeat of the running round's config is a no-op."""
        error = req.node_assignment_error()
        if error:
            raise ServiceError(400, error)
        async with self._lock:
            if self.state == "GENERATING":
                if self.request is not None and self.request.round_key() == req.round_key():
                    return
                raise ServiceError(409, "another round is generating: POST /stop first to change its config")
            self._check_no_conflict()
            self._configure(req, "IDLE")
            self._start_generation()
            await self._saved()

    async def init_validate(self, req: PoCInitRequest) -> None:
        """Stop any generation (flushing found nonces), init, state VALIDATING."""
        async with self._lock:
            await self._stop_generation()
            self._configure(req, "VALIDATING")
            await self._saved()

    async def phase_generate(self) -> None:
        """Start (or resume) generating with the stored config."""
        async with self._lock:
            req = self._require_round()
            error = req.node_assignment_error()
            if error:
                raise ServiceError(400, error)
            if self.state != "GENERATING":
                self._check_no_conflict()
                self._start_generation()
            await self._saved()

    async def phase_validate(self) -> None:
        """Stop generating; state VALIDATING."""
        async with self._lock:
            self._require_round()
            await self._stop_generation()
            self._set_state("VALIDATING")
            await self._saved()

    async def stop(self) -> None:
        """Stop everything; state STOPPED. Idempotent."""
        async with self._lock:
            await self._stop_generation()
            self._set_state("STOPPED")
            await self._saved()

    async def shutdown(self, stop_timeout: float, flush_timeout: float) -> None:
        """The ingress is going away (serve shutdown, SIGTERM of serve run, a redeploy): stop
        generating (batches in flight get ``stop_timeout`` s: the engines may be going away too),
        send what was found within ``flush_timeout`` s, and save the round as it stood. A
        GENERATING round stays GENERATING in the store, so the replica that follows resumes it
        and sends only what the receiver did not take."""
        async with self._lock:
            await self._stop_generation(stop_timeout)
            await self._callbacks.close(flush_timeout)
            await self._saved()

    # ---------------------------------------------------------------- queries

    def status(self, offset: int = 0, limit: int | None = None) -> PoCStatus:
        """The node's state and the round's results: the valid nonces (and their distances) from
        ``offset`` on, at most ``limit`` of them (None: all; 0: none). A generating round finds
        hundreds of valid nonces a second, so callers that poll often page or omit the lists."""
        req = self.request
        end = None if limit is None else offset + limit
        elapsed, rate = self._loop.elapsed(), self._loop.rate()
        round_fields = {} if req is None else dict(
            r_target=req.r_target, block_hash=req.block_hash, block_height=req.block_height,
            public_key=req.public_key, node_id=req.node_id, node_count=req.node_count,
            seq_len=req.seq_len, randomization=req.randomization)
        return PoCStatus(
            state=self.state, is_model_initialized=self._readiness.ready,
            engine_error=None if self._readiness.ready else self._readiness.error,
            valid_nonces=self.gen.valid_nonces[offset:end], valid_distances=self.gen.valid_distances[offset:end],
            total_checked=self.gen.checked, total_valid=len(self.gen.valid_nonces),
            elapsed_seconds=elapsed, rate_per_second=rate, validation=self.val.model_copy(),
            callbacks=CallbackStats(**self._callbacks.stats()), **round_fields)

    async def validate(self, batch: ProofBatch) -> ValidatedBatch:
        """Recompute a ProofBatch with the round's parameters and judge it."""
        req = self._require_round()
        if batch.block_hash != req.block_hash:
            raise ServiceError(409, f"block_hash {batch.block_hash!r} is not the round's ({req.block_hash!r})")
        round_ = _poc_round(req, batch.public_key)
        size = self._call_size(req.seq_len)
        chunks = [batch.nonces[i:i + size] for i in range(0, len(batch.nonces), size)]
        results = await asyncio.gather(*(self._compute(round_, chunk) for chunk in chunks))
        recomputed = [d for chunk in results for d in chunk]
        verdict = judge(batch.dist, recomputed, req.r_target, req.fraud_threshold)
        self.val.batches += 1
        self.val.nonces += len(batch.nonces)
        self.val.fraud_detected += int(verdict.fraud_detected)
        self._changed()
        if self._metrics:
            self._metrics.record_validation(len(batch.nonces), verdict.fraud_detected)
        validated = ValidatedBatch(
            **batch.model_dump(exclude={"dist", "r_target"}), received_dist=batch.dist, dist=recomputed,
            r_target=req.r_target, fraud_threshold=req.fraud_threshold, n_invalid=verdict.n_invalid,
            probability_honest=verdict.probability_honest, fraud_detected=verdict.fraud_detected,
            computed_distances=recomputed)
        if req.callback_url:
            self._callbacks.enqueue_validated(validated.model_dump(mode="json"), req.callback_url)
        return validated

    # ---------------------------------------------------------------- internals

    def _require_round(self) -> PoCInitRequest:
        if self.request is None:
            raise ServiceError(400, "no round configured: POST /init, /init/generate or /init/validate first")
        return self.request

    def _check_no_conflict(self) -> None:
        conflict = self._generation_conflict()
        if conflict:
            raise ServiceError(409, conflict)

    def _configure(self, req: PoCInitRequest, state: State) -> None:
        if req.seq_len > self.max_seq_len:
            raise ServiceError(400, f"seq_len {req.seq_len} exceeds the engine's max_model_len {self.max_seq_len}")
        self.request = req
        self.gen = GenerationStats()
        self._loop.reset()
        self.val = ValidationStats()
        self._round_id = uuid.uuid4().hex
        self._nonces = NonceSequence(req.node_id, req.node_count) if req.has_node_assignment() else None
        self._set_state(state)

    def _set_state(self, state: State) -> None:
        self.state = state
        if self._metrics:
            self._metrics.record_state(state)
        self._changed()

    def _start_generation(self) -> None:
        req, gen = self.request, self.gen
        if self._nonces is None:
            self._nonces = NonceSequence(req.node_id, req.node_count)
        self._set_state("GENERATING")
        round_, nonces = _poc_round(req, req.public_key), self._nonces
        self._loop.start(lambda batch: self._compute(round_, batch), nonces, req.seq_len,
                         lambda batch, distances: self._record(req, gen, nonces, batch, distances))

    async def _stop_generation(self, timeout: float | None = None) -> None:
        """Let in-flight batches finish (their nonces count), save them, then send what was found.
        After ``timeout`` s the batches still in flight are abandoned (they stay open in the nonce
        sequence, so a resumed round computes them)."""
        await self._loop.stop(timeout)

    def _record(self, req: PoCInitRequest, stats: GenerationStats, nonces: NonceSequence, batch: list[int],
                distances: list[float]) -> None:
        found = [(n, d) for n, d in zip(batch, distances) if d < req.r_target]
        stats.checked += len(batch)
        for n, d in found:
            stats.valid_nonces.append(n)
            stats.valid_distances.append(d)
        nonces.computed(batch)
        if self._metrics:
            self._metrics.record_batch(len(batch), len(found))
        self._changed()

    def _send_found(self) -> None:
        """Hand the valid nonces found since the last call to the callback sender: with a
        journal only those already saved, so a crash cannot make a resumed round send them twice."""
        req, gen = self.request, self.gen
        end = self._checkpointer.saved_valid(self._round_id) if self._checkpointer else len(gen.valid_nonces)
        if req is None or end <= gen.handed_over:
            return
        start, gen.handed_over = gen.handed_over, end
        if not req.callback_url:
            gen.settled = end
            return
        self._callbacks.enqueue_generated(dict(
            public_key=req.public_key, block_hash=req.block_hash, block_height=req.block_height,
            nonces=gen.valid_nonces[start:end], dist=gen.valid_distances[start:end], node_id=req.node_id,
            r_target=req.r_target), req.callback_url, on_settled=lambda: self._settled(gen, end))

    def _settled(self, gen: GenerationStats, end: int) -> None:
        gen.settled = max(gen.settled, end)
        if gen is self.gen:
            self._changed()

    # ---------------------------------------------------------------- checkpoint

    def _changed(self) -> None:
        self._loop.changed()

    async def _saved(self) -> None:
        """Wait until the store holds every change: a control call answers only what a new
        replica would resume (a /stop answered, then a crash, must not come back GENERATING)."""
        await self._loop.saved()

    def _snapshot(self) -> RoundSnapshot:
        gen, req = self.gen, self.request
        head = dict(round_id=self._round_id, state=self.state, request=req and req.model_dump(mode="json"),
                    valid=len(gen.valid_nonces), checked=gen.checked, generating_seconds=self._loop.elapsed(),
                    settled=gen.settled, validation=self.val.model_dump(mode="json"),
                    sequence=self._nonces.position() if self._nonces else None)
        return RoundSnapshot(head, gen.valid_nonces, gen.valid_distances)

    def resume(self, snapshot: RoundSnapshot) -> None:
        """Continue the checkpointed round (a new ingress replica after the last one died): its
        config, state, counters and results; a GENERATING round goes on generating where its nonce
        sequence stood, and the valid nonces its receiver had not settled are sent again. Call
        on the event loop, before any request."""
        head = snapshot.head
        if head["request"] is None:
            return
        req = PoCInitRequest.model_validate(head["request"])
        self.request, self._round_id = req, head["round_id"]
        self.gen = GenerationStats(checked=head["checked"], valid_nonces=snapshot.valid_nonces,
                                   valid_distances=snapshot.valid_distances, handed_over=head["settled"],
                                   settled=head["settled"])
        self._loop.reset(head["generating_seconds"])
        self.val = ValidationStats.model_validate(head["validation"])
        self._nonces = NonceSequence(req.node_id, req.node_count) if head["sequence"] else None
        if self._nonces:
            self._nonces.restore(head["sequence"])
        self._checkpointer.restored(self._round_id, head["valid"])
        logger.info("resuming the round of block %d in state %s: %d checked, %d valid, %d not yet settled "
                    "by the receiver", req.block_height, head["state"], self.gen.checked, head["valid"],
                    head["valid"] - head["settled"])
        if head["state"] == "GENERATING":
            self._start_generation()
        else:
            self._set_state(head["state"])
            self._send_found()

    def _progress_line(self, elapsed_s: float, rate: float) -> str:
        valid, checked = len(self.gen.valid_nonces), self.gen.checked
        minutes = max(elapsed_s / 60, 1e-9)
        one_in = f"{checked / valid:.0f}" if valid else "inf"
        return (f"Generated: {valid} / {checked} (1 in {one_in}) Time: {minutes:.2f}min "
                f"({valid / minutes:.2f} valid/min, {checked / minutes:.2f} raw/min)")


def _poc_round(req: PoCInitRequest, public_key: str) -> PoCRound:
    """The engine's view of the round for ``public_key`` (the node's own, or a validated node's)."""
    return PoCRound(block_hash=req.block_hash, public_key=public_key, seq_len=req.seq_len,
                    randomization=req.randomization)
