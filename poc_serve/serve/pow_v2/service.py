"""The PoC v2 service (poc-v2.md sections 4 and 5): what each route of /api/v1/inference/pow does.

It checks requests against the deployed model, starts and stops the generation loop, computes
waited requests, queues the others, judges validations and sends the callbacks. Knows nothing of
HTTP or Ray: the engine is reached through injected coroutines, and who may run while what runs
is asked of injected policy functions (:mod:`poc_serve.serve.core.policies`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from poc_serve.poc.artifacts import decode_artifact, judge_artifacts
from poc_serve.poc.nonces import NonceList
from poc_serve.serve.pow_v2.generation import ArtifactComputeFn, ArtifactGeneration, artifact_round, encoding
from poc_serve.serve.pow_v2.jobs import MAX_QUEUED_NONCES, RESULT_KEEP_S, Job, JobQueue
from poc_serve.serve.pow_v2.protocol import (
    ArtifactParams, BackendResult, BackendStatus, GeneratedResult, GenerateRequest, GenerationInit,
    InitGenerateAnswer, NodeStatus, PowStatus, QueuedAnswer, StatTest, StopAnswer, ValidatedResult,
)
from poc_serve.serve.core.callbacks import GENERATED, VALIDATED, CallbackSender
from poc_serve.serve.core.driver import BatchFailed, drive_batches
from poc_serve.serve.core.errors import ServiceError
from poc_serve.serve.core.loop import GenerationSettings
from poc_serve.serve.core.metrics import PoCMetrics
from poc_serve.serve.core.store import JobJournal, RoundJournal

# Engine replicas have no port of their own; the spec's JSON needs an int (docs/v2.md).
PORT = 0
# A job's batch may fail this often (a replica restarting) before the job fails.
JOB_BATCH_ATTEMPTS = 3
# Stop gives pending callbacks one last attempt for at most this long. (A new round needs no flush
# of its own: only stop ends a generation loop, and init/generate with another config is a 409.)
FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ArtifactSettings:
    """What the v2 contract answers and allows besides the generation settings."""

    replicas: int = 1
    """Engine replicas: the backends that the answers list."""
    served_model_name: str | None = None
    """A model name that requests may give besides the model's id and path."""
    p_value_threshold_as_fraud_threshold: bool = False
    """A validation's ``stat_test.p_value_threshold``, when given, is its fraud threshold."""
    max_queued_nonces: int = MAX_QUEUED_NONCES
    """Nonces the job queue may hold (429 beyond)."""
    result_keep_s: float = RESULT_KEEP_S
    """How long an ended job's result is kept."""


class ArtifactService:
    """The node's v2 state: the generation loop, the job queue and the two callback senders
    (``stream`` for the loop's artifacts, ``jobs`` for job results, so that a receiver refusing
    /validated never holds up /generated).

    ``generation`` sizes and paces the engine calls of the loop and the jobs; its
    ``call_timeout_s`` also bounds how long a waited request waits for a generation loop to end.
    """

    def __init__(self, compute: ArtifactComputeFn, model_info: Callable[[], Awaitable[dict[str, Any]]],
                 stream: CallbackSender, jobs: CallbackSender, generation_conflict: Callable[[], str | None],
                 jobs_may_run: Callable[[], bool], generation: GenerationSettings,
                 settings: ArtifactSettings = ArtifactSettings(), metrics: PoCMetrics | None = None,
                 journal: RoundJournal | None = None, job_journal: JobJournal | None = None):
        self._compute = compute
        self._model_info = model_info
        self._generation_settings = generation
        self._settings = settings
        self._stream, self._job_sender = stream, jobs
        self._generation_conflict = generation_conflict
        self._jobs_may_run = jobs_may_run
        self._metrics = metrics
        self.generation = ArtifactGeneration(compute, stream, generation, metrics, journal)
        self.jobs = JobQueue(self._run_job, jobs_may_run, self._job_done, settings.max_queued_nonces,
                             settings.result_keep_s, job_journal)
        self.nonfinite_in_jobs = 0
        self._deployed: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- routes

    async def init_generate(self, body: GenerationInit) -> InitGenerateAnswer:
        """Start the generation loop; a repeat of the running config (batch_size aside) is a no-op."""
        error = body.assignment_error()
        if error:
            raise ServiceError(400, error)
        await self._check_params(body.params)
        async with self._lock:
            if self.generation.running:
                if self.generation.config.round_key() != body.round_key():
                    raise ServiceError(409, "Already generating with another config: POST stop first")
            else:
                conflict = self._generation_conflict()
                if conflict:
                    raise ServiceError(409, conflict)
                self.generation.start(body)
                await self.generation.saved()  # answered once a replica after this one would resume it
        return InitGenerateAnswer(backends=self._settings.replicas, n_groups=body.n_groups, results=self._results("OK"),
                                  pow_status=PowStatus(status="GENERATING"))

    async def generate(self, body: GenerateRequest) -> dict[str, Any]:
        """Queue a job (``wait`` false) or compute it now and answer its result."""
        error = body.nonce_error()
        if error:
            raise ServiceError(400, error)
        await self._check_params(body.params)
        if not body.wait:
            job = await self.jobs.submit(body)
            self._record_queue()
            return QueuedAnswer(request_id=job.request_id, queued_count=len(body.nonces)).model_dump()
        wait_s = self._generation_settings.call_timeout_s
        deadline = time.monotonic() + wait_s
        while not self._jobs_may_run():
            if time.monotonic() >= deadline:
                raise ServiceError(503, f"a generation loop held the engine for {wait_s:.0f} s: "
                                      "POST stop first, or send wait=false")
            await asyncio.sleep(0.2)
        try:
            return await self._run_job(body, str(uuid.uuid4()))
        except BatchFailed as exc:
            raise ServiceError(503 if exc.timed_out else 502, str(exc)) from exc

    def job_state(self, request_id: str) -> dict[str, Any]:
        """GET generate/{request_id}."""
        job = self.jobs.get(request_id)
        if job is None:
            raise ServiceError(404, f"unknown request_id {request_id!r}: never queued here, expired 300 s after it "
                                  "ended, or cleared by stop")
        return job.answer()

    def status(self) -> NodeStatus:
        """GET status: the spec's fields, then our counters."""
        state = "GENERATING" if self.generation.running else "IDLE"
        backend = BackendStatus(port=PORT, status=state, config=self.generation.status_config(),
                                stats=self.generation.stats())
        senders = (self._stream, self._job_sender)
        return NodeStatus(
            status=state, backends=[backend] * self._settings.replicas,
            nonfinite_nonces=self.generation.nonfinite + self.nonfinite_in_jobs,
            queued_nonces=self.jobs.queued_nonces, jobs=self.jobs.counts(),
            callbacks={"sent": sum(s.sent_count for s in senders), "pending": sum(s.pending for s in senders),
                       "dropped": sum(s.dropped_count for s in senders),
                       "dropped_artifacts": sum(s.dropped_items for s in senders)})

    async def stop(self) -> StopAnswer:
        """Stop the loop (its last artifacts are sent), cancel queued and running jobs, drop kept
        results, give pending callbacks one last attempt and drop the rest (counted). A waited
        request is not a job: it finishes and answers its caller."""
        async with self._lock:
            await self.generation.stop()
            await self.jobs.clear()
            self._record_queue()
            await asyncio.gather(self._stream.clear(FLUSH_TIMEOUT_S), self._job_sender.clear(FLUSH_TIMEOUT_S))
            await self.generation.saved()
        return StopAnswer(results=self._results("stopped"), pow_status=PowStatus(status="STOPPED"))

    async def shutdown(self, stop_timeout: float, flush_timeout: float) -> None:
        """The ingress is going away: the loop stops (its last artifacts are queued), the pending
        callbacks get ``flush_timeout`` s to reach their receivers, and the loop is saved as running,
        so that the replica that follows goes on with it (sending what was not delivered). Batches
        in flight get ``stop_timeout`` s (the engines may be going away too)."""
        async with self._lock:
            await self.generation.stop(resumable=True, timeout=stop_timeout)
            await asyncio.gather(self._stream.close(flush_timeout), self._job_sender.close(flush_timeout))
            await self.generation.saved()

    # ---------------------------------------------------------------- internals

    def _results(self, status: str) -> list[BackendResult]:
        return [BackendResult(port=PORT, status=status)] * self._settings.replicas

    def model_changed(self) -> None:
        """The engines load another model: check params against it from now on."""
        self._deployed = None

    async def _check_params(self, params: ArtifactParams) -> None:
        if self._deployed is None:
            self._deployed = await self._model_info()
        info = self._deployed
        served_model_name = info.get("served_model_name", self._settings.served_model_name)
        names = {info["model"], info["model_path"], served_model_name} - {None}
        fields = [name for name, bad in (("model", params.model not in names),
                                         ("seq_len", params.seq_len > info["max_model_len"]),
                                         ("k_dim", not 1 <= params.k_dim <= info["hidden_size"])) if bad]
        if fields:
            raise ServiceError(409, {
                "error": "params mismatch", "fields": fields, "requested": params.model_dump(),
                "deployed": {"model": info["model"], "model_path": info["model_path"],
                             "served_model_name": served_model_name, "max_seq_len": info["max_model_len"],
                             "hidden_size": info["hidden_size"]}})

    async def _run_job(self, req: GenerateRequest, request_id: str) -> dict[str, Any]:
        """Compute a generate request's artifacts (and verdict) in chunks over all replicas."""
        round_ = artifact_round(req)
        vectors: dict[int, str | None] = {}

        def record(batch: list[int], answer: list[str | None]) -> None:
            if len(answer) != len(batch):
                raise RuntimeError(f"the engine answered {len(answer)} artifacts for {len(batch)} nonces")
            vectors.update(zip(batch, answer))

        s = self._generation_settings
        await drive_batches(lambda batch: self._compute(round_, batch), NonceList(req.nonces),
                            min(req.batch_size, s.call_size(round_.seq_len)), s.batches_in_flight, record,
                            call_timeout_s=s.call_timeout_s, max_attempts=JOB_BATCH_ATTEMPTS)
        k = round_.k_dim
        if req.validation is None:
            self.nonfinite_in_jobs += sum(v is None for v in vectors.values())
            artifacts = [{"nonce": n, "vector_b64": vectors[n]} for n in req.nonces if vectors[n] is not None]
            return GeneratedResult(request_id=request_id, artifacts=artifacts,
                                   encoding=encoding(k)).model_dump()
        received = {a.nonce: a.vector_b64 for a in req.validation.artifacts}
        test = req.stat_test or StatTest()
        fraud_threshold = test.fraud_threshold
        if self._settings.p_value_threshold_as_fraud_threshold and test.p_value_threshold is not None:
            fraud_threshold = test.p_value_threshold
        verdict = judge_artifacts(req.nonces, [decode_artifact(vectors[n], k) if vectors[n] else None
                                               for n in req.nonces],
                                  [received[n] for n in req.nonces], k, test.dist_threshold, test.p_mismatch,
                                  fraud_threshold)
        return ValidatedResult(
            request_id=request_id, n_total=verdict.n_total, n_mismatch=verdict.n_mismatch,
            mismatch_nonces=verdict.mismatch_nonces, p_value=verdict.p_value,
            fraud_detected=verdict.fraud_detected, fraud_threshold=verdict.fraud_threshold,
            skipped_nonces=verdict.skipped_nonces).model_dump()

    def _job_done(self, job: Job) -> None:
        req = job.request
        kind = "generate" if req.validation is None else "validate"
        if self._metrics:
            self._metrics.record_job(kind, job.status)
        self._record_queue()
        if job.status != "completed" or not req.url:
            self.jobs.done_with(job)
            return
        echo = dict(request_id=job.request_id, block_hash=req.block_hash, block_height=req.block_height,
                    public_key=req.public_key, node_id=req.node_id)
        keys = ("artifacts", "encoding") if kind == "generate" else (
            "n_total", "n_mismatch", "mismatch_nonces", "p_value", "fraud_detected")
        self._job_sender.enqueue_whole(GENERATED if kind == "generate" else VALIDATED,
                                       {**echo, **{key: job.result[key] for key in keys}}, req.url,
                                       on_settled=lambda: self.jobs.done_with(job))

    def _record_queue(self) -> None:
        if self._metrics:
            self._metrics.record_queued_nonces(self.jobs.queued_nonces)
