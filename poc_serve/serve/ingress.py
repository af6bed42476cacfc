"""The ingress deployment: the PoC v1 API (/api/v1/pow) over the round manager, the PoC v2 API
(/api/v1/inference/pow) over the artifact service, and the OpenAI routes.

Routes stay a few lines: parsing is the protocol models' job, logic the round manager's and the
artifact service's, who may run while what runs the policies'.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from poc_serve.engine.protocol import ArtifactRound, PoCComputeError, PoCRound
from poc_serve.serve.artifact_protocol import (GenerateRequest, GenerationInit, InitGenerateAnswer, NodeStatus,
                                               StopAnswer)
from poc_serve.serve.artifact_service import ArtifactService
from poc_serve.serve.callbacks import CallbackSender
from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.inference import InferenceService
from poc_serve.serve.limits import RequestLimitsMiddleware
from poc_serve.serve.metrics import PoCMetrics
from poc_serve.serve.openai_protocol import ChatCompletionRequest, CompletionRequest, OpenAIError
from poc_serve.serve.policies import V1_API, V2_API, EnginePolicies
from poc_serve.serve.protocol import ControlResponse, PoCInitRequest, PoCStatus, ProofBatch, ValidatedBatch
from poc_serve.serve.generation import logger
from poc_serve.serve.round_manager import RoundError, RoundManager
from poc_serve.serve.round_store import JobJournal, RayKVStore, RoundJournal

API_PREFIX = V1_API
_ENGINE_PROBE_TIMEOUT_S = 5.0
# A call that needs the engine waits at most this long to learn whether one is ready.
_ENGINE_READY_TIMEOUT_S = 2.0
_ENGINE_RETRY_AFTER_S = 10
# On a graceful shutdown the batches in flight get this long to finish (the engine replicas may be
# going away at the same time), then found nonces and artifacts this long to reach their
# receivers: within Serve's graceful_shutdown_timeout_s (20 s by default) for the whole shutdown.
_SHUTDOWN_STOP_S = 4.0
_SHUTDOWN_FLUSH_S = 10.0
# A version segment that a proxy in front of the node normally strips, e.g. /v3.0.8/api/v1/pow/status.
_VERSION_PREFIX = re.compile(r"^/v\d+(\.\d+)*(?=/api/)")


class CallerHabitsMiddleware:
    """ASGI middleware for the network's Go client: strips a leading version segment from the
    path and reads every POST body of the PoC API as JSON, whatever Content-Type it came with
    (the client sends none; curl -d sends a form type)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = _VERSION_PREFIX.sub("", scope["path"])
            headers = scope["headers"]
            if scope["method"] == "POST" and path.startswith((V1_API, V2_API)):
                headers = [(k, v) for k, v in headers if k != b"content-type"]
                headers.append((b"content-type", b"application/json"))
            scope = {**scope, "path": path, "raw_path": path.encode(), "headers": headers}
        await self.app(scope, receive, send)


app = FastAPI(title="poc_serve", description="Proof-of-Compute node over a vLLM engine")
# Added first so that it runs inside CallerHabitsMiddleware, on the path without a version segment.
app.add_middleware(RequestLimitsMiddleware)
app.add_middleware(CallerHabitsMiddleware)


@app.exception_handler(OpenAIError)
async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return exc.response()


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """/v1 answers OpenAI's shape (400, as OpenAI and vLLM do); the PoC APIs keep FastAPI's 422."""
    if request.url.path.startswith("/v1/"):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return OpenAIError(400, problems or "invalid request").response()
    return await request_validation_exception_handler(request, exc)


@app.exception_handler(RoundError)
async def _round_error(request: Request, exc: RoundError) -> JSONResponse:
    headers = {"Retry-After": str(_ENGINE_RETRY_AFTER_S)} if exc.status_code == 503 else None
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=headers)


def _engine_deployment_state(app: str, name: str) -> str:
    """The engine deployment's status in Serve with the last line of its message, e.g.
    "PoCEngineDeployment DEPLOY_FAILED: ValueError: bad config" (a blocking call to the Serve
    controller: run it in a thread). Defined above the deployment class, which Serve serialises
    as the decorator runs, with only the module names that exist by then."""
    try:
        deployment = serve.status().applications[app].deployments[name]
    except Exception as exc:  # noqa: BLE001 - only a description: never fail the caller on it
        return f"{name}: state unknown ({type(exc).__name__})"
    message = (deployment.message or "").strip().splitlines()
    status = getattr(deployment.status, "value", deployment.status)
    return f"{name} {status}" + (f": {message[-1][:300]}" if message else "")


def _resume_from(journal: RoundJournal, resume) -> None:
    checkpoint = journal.load()
    if checkpoint:
        resume(checkpoint)


def _resume(what: str, resume) -> None:
    """Resume ``what`` from its checkpoint; a checkpoint that cannot be read or resumed is logged
    and left, so that it can never keep a new ingress replica from starting."""
    try:
        resume()
    except Exception:  # noqa: BLE001 - any fault here must leave a working, idle node
        logger.exception("could not resume %s from its checkpoint; starting without it", what)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class PoCIngress:
    """Serves the PoC APIs, holds v1's round and v2's generation and jobs, and drives the engine
    replicas through ``engine``'s handle. Routes are methods (Serve's class-based ingress); the
    logic is the RoundManager's (v1) and the ArtifactService's (v2), the rules the policies'."""

    def __init__(self, engine: DeploymentHandle, args: PoCAppArgs):
        self._engine = engine
        engine_config = args.engine
        self._metrics = metrics = PoCMetrics()
        in_flight = args.num_engine_replicas * args.batches_in_flight_per_replica
        # The v1 round, the v2 generation loop and the v2 jobs are checkpointed in the GCS under the
        # app's name: the replica Serve starts after this one dies resumes them (docs/design.md).
        app_name = serve.get_replica_context().app_name
        v1_journal = RoundJournal(RayKVStore(), f"{app_name}/v1-round")
        v2_journal = RoundJournal(RayKVStore(), f"{app_name}/v2-generation")
        job_journal = JobJournal(RayKVStore(), f"{app_name}/v2-jobs")
        self.policies = EnginePolicies(v1_state=lambda: self.manager.state,
                                       v2_generating=lambda: self.artifacts.generation.running,
                                       allow_inference_during_validation=args.allow_inference_during_validation)
        self.manager = RoundManager(
            compute=self._compute, call_size=engine_config.poc_call_size,
            max_seq_len=engine_config.max_model_len, batches_in_flight=in_flight,
            callbacks=self._sender(args, metrics, "v1"), metrics=metrics,
            callback_interval_s=args.callback_interval_s, log_interval_s=args.log_interval_s,
            generation_conflict=self.policies.v1_generation_conflict, journal=v1_journal)
        # v2's senders follow spec 4.2: 10 attempts, a 4xx other than 408/429 is final.
        v2_sender = dict(max_attempts=10, retry_client_errors=False)
        self.artifacts = ArtifactService(
            compute=self._compute_artifacts, model_info=self._engine_model_info,
            call_size=engine_config.poc_call_size, replicas=args.num_engine_replicas, batches_in_flight=in_flight,
            stream=self._sender(args, metrics, "v2_generation", **v2_sender),
            jobs=self._sender(args, metrics, "v2_jobs", **v2_sender),
            generation_conflict=self.policies.v2_generation_conflict, jobs_may_run=self.policies.jobs_may_run,
            served_model_name=args.served_model_name, metrics=metrics,
            callback_interval_s=args.callback_interval_s, log_interval_s=args.log_interval_s,
            p_value_threshold_as_fraud_threshold=args.v2_p_value_threshold_as_fraud_threshold,
            journal=v2_journal, job_journal=job_journal)
        self.inference = InferenceService(
            generate=lambda request: self._engine.options(stream=True).generate.remote(request),
            model_name=args.served_model_name or args.model, busy_reason=self.policies.inference_busy_reason,
            retry_after_s=args.inference_retry_after_s, engine_unavailable=self._engine_unavailable,
            metrics=metrics)
        _resume("the v1 round", lambda: _resume_from(v1_journal, self.manager.resume))
        _resume("the v2 generation", lambda: _resume_from(v2_journal, self.artifacts.generation.resume))
        _resume("the v2 jobs", self.artifacts.jobs.resume)

    async def __del__(self) -> None:
        """Serve's graceful shutdown of the replica: what was found goes out before it exits.
        Serve calls it after a constructor that raised too, when there is nothing to send."""
        if hasattr(self, "inference"):  # the constructor's last step: everything exists
            await asyncio.gather(self.manager.shutdown(_SHUTDOWN_STOP_S, _SHUTDOWN_FLUSH_S),
                                 self.artifacts.shutdown(_SHUTDOWN_STOP_S, _SHUTDOWN_FLUSH_S))

    @staticmethod
    def _sender(args: PoCAppArgs, metrics: PoCMetrics, name: str, **policy) -> CallbackSender:
        """A callback sender whose metrics carry the label sender=``name``."""
        return CallbackSender(timeout=args.callback_timeout_s, backoff_base=args.callback_backoff_s,
                              backoff_cap=args.callback_backoff_cap_s,
                              max_pending_nonces=args.max_pending_callback_nonces,
                              **metrics.callback_hooks(name), **policy)

    def _ok(self) -> ControlResponse:
        return ControlResponse(pow_status=self.manager.status())

    @app.post(f"{API_PREFIX}/init", response_model=ControlResponse)
    async def init(self, body: PoCInitRequest) -> ControlResponse:
        await self.manager.init(body)
        return self._ok()

    @app.post(f"{API_PREFIX}/init/generate", response_model=ControlResponse)
    async def init_generate(self, body: PoCInitRequest) -> ControlResponse:
        await self.manager.init_generate(body)
        return self._ok()

    @app.post(f"{API_PREFIX}/init/validate", response_model=ControlResponse)
    async def init_validate(self, body: PoCInitRequest) -> ControlResponse:
        await self.manager.init_validate(body)
        return self._ok()

    @app.post(f"{API_PREFIX}/phase/generate", response_model=ControlResponse)
    async def phase_generate(self) -> ControlResponse:
        await self.manager.phase_generate()
        return self._ok()

    @app.post(f"{API_PREFIX}/phase/validate", response_model=ControlResponse)
    async def phase_validate(self) -> ControlResponse:
        await self.manager.phase_validate()
        return self._ok()

    @app.post(f"{API_PREFIX}/stop", response_model=ControlResponse)
    async def stop(self) -> ControlResponse:
        await self.manager.stop()
        return self._ok()

    @app.get(f"{API_PREFIX}/status", response_model=PoCStatus)
    async def status(self, nonces: bool = Query(True, description="false: omit valid_nonces and valid_distances"),
                     offset: int = Query(0, ge=0, description="First valid nonce listed (paging)"),
                     limit: int | None = Query(None, ge=0, description="Most valid nonces listed")) -> PoCStatus:
        return self.manager.status(offset, limit if nonces else 0)

    @app.post(f"{API_PREFIX}/validate", response_model=ValidatedBatch)
    async def validate(self, body: ProofBatch) -> ValidatedBatch:
        await self._require_engine()
        return await self.manager.validate(body)

    @app.post(f"{V2_API}/init/generate", response_model=InitGenerateAnswer)
    async def v2_init_generate(self, body: GenerationInit) -> InitGenerateAnswer:
        await self._require_engine()
        return await self.artifacts.init_generate(body)

    # v2's job routes also under v1's prefix, where no v1 route has their paths (poc-v2.md section 4).
    @app.post(f"{V2_API}/generate")
    @app.post(f"{V1_API}/generate")
    async def v2_generate(self, body: GenerateRequest) -> dict:
        await self._require_engine()
        return await self.artifacts.generate(body)

    @app.get(f"{V2_API}/generate/{{request_id}}")
    @app.get(f"{V1_API}/generate/{{request_id}}")
    async def v2_job(self, request_id: str) -> dict:
        return self.artifacts.job_state(request_id)

    @app.get(f"{V2_API}/status", response_model=NodeStatus)
    async def v2_status(self) -> NodeStatus:
        return self.artifacts.status()

    @app.post(f"{V2_API}/stop", response_model=StopAnswer)
    async def v2_stop(self) -> StopAnswer:
        return await self.artifacts.stop()

    @app.get("/v1/models")
    async def models(self) -> dict:
        return self.inference.models()

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest):
        return await self.inference.completion(body)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest):
        return await self.inference.chat(body)

    async def _compute(self, round: PoCRound, nonces: list[int]) -> list[float]:
        return await self._engine_call("compute", round, nonces)

    async def _compute_artifacts(self, round: ArtifactRound, nonces: list[int]) -> list[str | None]:
        return await self._engine_call("compute_artifacts", round, nonces)

    async def _engine_call(self, method: str, round: PoCRound | ArtifactRound, nonces: list[int]) -> list:
        try:
            answer = await getattr(self._engine, method).remote(round.model_dump(), nonces)
        except PoCComputeError as exc:  # Ray's wrapper of the engine's error keeps its reason
            self._metrics.record_engine_call_failed(method)
            raise RoundError(502, exc.reason) from exc
        except Exception as exc:  # the replica died, or Ray could not reach it
            self._metrics.record_engine_call_failed(method)
            raise RoundError(502, f"PoC forward failed on the engine: {type(exc).__name__}") from exc
        self.manager.engine_ready = True
        return answer

    async def _engine_model_info(self) -> dict:
        try:
            return await self._engine.model_info.remote()
        except Exception as exc:  # the replica died between the readiness probe and this call
            raise RoundError(503, f"no engine replica answered model_info: {type(exc).__name__}") from exc

    async def _probe_engine(self) -> None:
        await self._engine.check_health.remote()
        self.manager.engine_ready = True
        self.manager.engine_error = None

    async def _engine_unavailable(self, timeout: float = _ENGINE_READY_TIMEOUT_S) -> str | None:
        """None when an engine replica answers within ``timeout``; else why not (also kept for
        /status): the probe's failure and the engine deployment's state in Serve."""
        if self.manager.engine_ready:
            return None
        try:
            await asyncio.wait_for(self._probe_engine(), timeout=timeout)
            return None
        except asyncio.TimeoutError:
            reason = "no engine replica is ready yet"
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            reason = f"no engine replica is ready: {type(exc).__name__}: {first}"
        deployment = await asyncio.to_thread(_engine_deployment_state, self._engine.app_name,
                                             self._engine.deployment_name)
        self.manager.engine_error = f"{reason} ({deployment})"
        return self.manager.engine_error

    async def _require_engine(self) -> None:
        """503 within seconds, rather than a call that waits for a replica that may never come."""
        reason = await self._engine_unavailable()
        if reason:
            raise RoundError(503, reason)

    async def check_health(self) -> None:
        """The ingress itself is healthy; its periodic check also finds out when an engine is ready,
        or why not (bounded, so a slow engine start never marks the ingress unhealthy)."""
        await self._engine_unavailable(_ENGINE_PROBE_TIMEOUT_S)
