"""The ingress deployment: composes the routes of every contract and wires their services.

Each contract lives in its own folder with its protocol, service and router (an ingress mixin):
``pow_v1`` (/api/v1/pow), ``pow_v2`` (/api/v1/inference/pow), ``openai`` (/v1). What they share
(the batch driver, callbacks, checkpoint store, policies, metrics, the engine client) is in
``core``; the HTTP plumbing (middleware, error handlers, bounds) in ``http``. This module holds no
route logic: it builds the services, resumes what a replica before it left, and shuts them down.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.core.callbacks import CallbackSender
from poc_serve.serve.core.engine_client import PROBE_TIMEOUT_S, EngineClient
from poc_serve.serve.core.errors import logger
from poc_serve.serve.core.loop import GenerationSettings
from poc_serve.serve.core.metrics import PoCMetrics
from poc_serve.serve.core.policies import EnginePolicies
from poc_serve.serve.core.model_board import ModelBoard
from poc_serve.serve.core.store import JobJournal, RayKVStore, RoundJournal
from poc_serve.serve.http.errors import install_error_handlers
from poc_serve.serve.http.limits import RequestLimitsMiddleware
from poc_serve.serve.http.middleware import CallerHabitsMiddleware
from poc_serve.serve.node import router as node_router
from poc_serve.serve.node.models_cache import ModelCache
from poc_serve.serve.node.service import NodeService
from poc_serve.serve.openai import router as openai_router
from poc_serve.serve.openai.service import InferenceService
from poc_serve.serve.pow_v1 import router as v1_router
from poc_serve.serve.pow_v1.service import RoundManager
from poc_serve.serve.pow_v2 import router as v2_router
from poc_serve.serve.pow_v2.service import ArtifactService, ArtifactSettings

# On a graceful shutdown the batches in flight get this long to finish (the engine replicas may be
# going away at the same time), then found nonces and artifacts this long to reach their
# receivers: within Serve's graceful_shutdown_timeout_s (20 s by default) for the whole shutdown.
SHUTDOWN_STOP_S = 4.0
SHUTDOWN_FLUSH_S = 10.0

app = FastAPI(title="poc_serve", description="Proof-of-Compute node over a vLLM engine")
# Added first so that it runs inside CallerHabitsMiddleware, on the path without a version segment.
app.add_middleware(RequestLimitsMiddleware)
app.add_middleware(CallerHabitsMiddleware)
install_error_handlers(app)
for contract in (node_router, v1_router, v2_router, openai_router):
    app.include_router(contract.router)


def _resume(what: str, resume: Callable, journal: RoundJournal | None = None) -> None:
    """Resume ``what`` (from ``journal``'s checkpoint, where given); a checkpoint that cannot be read
    or resumed is logged and left, so that it can never keep a new ingress replica from starting."""
    try:
        if journal is None:
            resume()
        elif checkpoint := journal.load():
            resume(checkpoint)
    except Exception:  # noqa: BLE001 - any fault here must leave a working, idle node
        logger.exception("could not resume %s from its checkpoint; starting without it", what)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class PoCIngress(node_router.NodeRoutes, v1_router.PoCV1Routes, v2_router.PoCV2Routes, openai_router.OpenAIRoutes):
    """Holds v1's round, v2's generation and jobs, and inference, over the engine replicas behind
    ``engine``'s handle."""

    def __init__(self, engine: DeploymentHandle, args: PoCAppArgs):
        self.metrics = metrics = PoCMetrics()
        self.engine = EngineClient(engine, args.serving(), metrics)
        generation = GenerationSettings(
            call_size=self.engine.poc_call_size,
            batches_in_flight=args.num_engine_replicas * args.batches_in_flight_per_replica,
            callback_interval_s=args.callback_interval_s, log_interval_s=args.log_interval_s)
        # The v1 round, the v2 generation loop and the v2 jobs are checkpointed in the GCS under the
        # app's name: the replica Serve starts after this one dies resumes them (docs/design.md).
        app_name = serve.get_replica_context().app_name
        v1_journal = RoundJournal(RayKVStore(), f"{app_name}/v1-round")
        v2_journal = RoundJournal(RayKVStore(), f"{app_name}/v2-generation")
        job_journal = JobJournal(RayKVStore(), f"{app_name}/v2-jobs")
        self.policies = EnginePolicies(v1_state=lambda: self.rounds.state,
                                       v2_generating=lambda: self.artifacts.generation.running,
                                       allow_inference_during_validation=args.allow_inference_during_validation)
        self.rounds = RoundManager(
            compute=self.engine.compute, callbacks=self._sender(args, "v1"), settings=generation,
            max_seq_len=args.engine.max_model_len, generation_conflict=self.policies.v1_generation_conflict,
            metrics=metrics, journal=v1_journal, readiness=self.engine)
        # v2's senders follow spec 4.2: 10 attempts, a 4xx other than 408/429 is final.
        v2_sender = dict(max_attempts=10, retry_client_errors=False)
        self.artifacts = ArtifactService(
            compute=self.engine.compute_artifacts, model_info=self.engine.model_info,
            stream=self._sender(args, "v2_generation", **v2_sender), jobs=self._sender(args, "v2_jobs", **v2_sender),
            generation_conflict=self.policies.v2_generation_conflict, jobs_may_run=self.policies.jobs_may_run,
            generation=generation, settings=ArtifactSettings(
                replicas=args.num_engine_replicas, served_model_name=args.served_model_name,
                p_value_threshold_as_fraud_threshold=args.v2_p_value_threshold_as_fraud_threshold),
            metrics=metrics, journal=v2_journal, job_journal=job_journal)
        self.node = NodeService(ModelBoard(RayKVStore(), app_name), args.serving(), self.engine, self.rounds,
                                self.artifacts, replicas=args.num_engine_replicas,
                                layout_fixed=args.accelerator == "gpu")
        self.models_cache = ModelCache()
        self.inference = InferenceService(
            self.engine, busy_reason=self.policies.inference_busy_reason, retry_after_s=args.inference_retry_after_s,
            metrics=metrics)
        _resume("the v1 round", self.rounds.resume, v1_journal)
        _resume("the v2 generation", self.artifacts.generation.resume, v2_journal)
        _resume("the v2 jobs", self.artifacts.jobs.resume)

    async def __del__(self) -> None:
        """Serve's graceful shutdown of the replica: what was found goes out before it exits.
        Serve calls it after a constructor that raised too, when there is nothing to send."""
        if hasattr(self, "models_cache"):
            self.models_cache.close()
        if hasattr(self, "inference"):  # the constructor's last step: everything exists
            await asyncio.gather(self.rounds.shutdown(SHUTDOWN_STOP_S, SHUTDOWN_FLUSH_S),
                                 self.artifacts.shutdown(SHUTDOWN_STOP_S, SHUTDOWN_FLUSH_S))

    def _sender(self, args: PoCAppArgs, name: str, **policy) -> CallbackSender:
        """A callback sender whose metrics carry the label sender=``name``."""
        return CallbackSender(timeout=args.callback_timeout_s, backoff_base=args.callback_backoff_s,
                              backoff_cap=args.callback_backoff_cap_s,
                              max_pending_nonces=args.max_pending_callback_nonces,
                              **self.metrics.callback_hooks(name), **policy)

    async def check_health(self) -> None:
        """The ingress itself is healthy; its periodic check also finds out when an engine is ready,
        or why not (bounded, so a slow engine start never marks the ingress unhealthy)."""
        await self.engine.unavailable(PROBE_TIMEOUT_S)
