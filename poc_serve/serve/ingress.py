"""The ingress deployment: the /api/v1/pow HTTP API over the round manager.

Routes stay a few lines: parsing is the protocol models' job, logic the round manager's.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from poc_serve.engine.protocol import PoCComputeError, PoCRound
from poc_serve.serve.callbacks import CallbackSender
from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.inference import InferenceService
from poc_serve.serve.metrics import PoCMetrics
from poc_serve.serve.openai_protocol import ChatCompletionRequest, CompletionRequest
from poc_serve.serve.protocol import ControlResponse, PoCInitRequest, PoCStatus, ProofBatch, ValidatedBatch
from poc_serve.serve.round_manager import RoundError, RoundManager

API_PREFIX = "/api/v1/pow"
_ENGINE_PROBE_TIMEOUT_S = 5.0
# A call that needs the engine waits at most this long to learn whether one is ready.
_ENGINE_READY_TIMEOUT_S = 2.0
_ENGINE_RETRY_AFTER_S = 10
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
            if scope["method"] == "POST" and path.startswith(API_PREFIX):
                headers = [(k, v) for k, v in headers if k != b"content-type"]
                headers.append((b"content-type", b"application/json"))
            scope = {**scope, "path": path, "raw_path": path.encode(), "headers": headers}
        await self.app(scope, receive, send)


app = FastAPI(title="poc_serve", description="Proof-of-Compute node over a vLLM engine")
app.add_middleware(CallerHabitsMiddleware)


@app.exception_handler(RoundError)
async def _round_error(request: Request, exc: RoundError) -> JSONResponse:
    headers = {"Retry-After": str(_ENGINE_RETRY_AFTER_S)} if exc.status_code == 503 else None
    return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)}, headers=headers)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class PoCIngress:
    """Serves the PoC API, holds the round, and drives the engine replicas through ``engine``'s
    handle. Routes are methods (Serve's class-based ingress); the logic is the RoundManager's."""

    def __init__(self, engine: DeploymentHandle, args: PoCAppArgs):
        self._engine = engine
        engine_config = args.engine
        self._callbacks = CallbackSender(timeout=args.callback_timeout_s, backoff_base=args.callback_backoff_s,
                                         backoff_cap=args.callback_backoff_cap_s,
                                         max_pending_nonces=args.max_pending_callback_nonces)
        self.manager = RoundManager(
            compute=self._compute, batch_size=engine_config.poc_batch_size,
            max_seq_len=engine_config.max_model_len,
            batches_in_flight=args.num_engine_replicas * args.batches_in_flight_per_replica,
            callbacks=self._callbacks, metrics=PoCMetrics(),
            callback_interval_s=args.callback_interval_s, log_interval_s=args.log_interval_s)
        self._allow_during_validation = args.allow_inference_during_validation
        self.inference = InferenceService(
            generate=lambda request: self._engine.options(stream=True).generate.remote(request),
            model_name=args.served_model_name or args.model, busy_reason=self._inference_busy_reason,
            retry_after_s=args.inference_retry_after_s)

    def _inference_busy_reason(self) -> str | None:
        state = self.manager.state
        if state == "GENERATING" or (state == "VALIDATING" and not self._allow_during_validation):
            return f"Proof-of-Compute is running (state {state}); inference resumes after POST {API_PREFIX}/stop"
        return None

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
    async def status(self) -> PoCStatus:
        return self.manager.status()

    @app.post(f"{API_PREFIX}/validate", response_model=ValidatedBatch)
    async def validate(self, body: ProofBatch) -> ValidatedBatch:
        await self._require_engine()
        return await self.manager.validate(body)

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
        try:
            distances = await self._engine.compute.remote(round.model_dump(), nonces)
        except PoCComputeError as exc:  # Ray's wrapper of the engine's error keeps its reason
            raise RoundError(502, exc.reason) from exc
        except Exception as exc:  # the replica died, or Ray could not reach it
            raise RoundError(502, f"PoC forward failed on the engine: {type(exc).__name__}") from exc
        self.manager.engine_ready = True
        return distances

    async def _probe_engine(self) -> None:
        await self._engine.check_health.remote()
        self.manager.engine_ready = True

    async def _require_engine(self) -> None:
        """503 within seconds, rather than a call that waits for a replica that may never come."""
        if self.manager.engine_ready:
            return
        try:
            await asyncio.wait_for(self._probe_engine(), timeout=_ENGINE_READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RoundError(503, "no engine replica is ready yet (starting, or failed to start: see the "
                                  "PoCEngineDeployment replica logs)") from None
        except Exception as exc:
            raise RoundError(503, f"no engine replica is ready: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc

    async def check_health(self) -> None:
        """The ingress itself is healthy; its periodic check also finds out when an engine is ready
        (bounded, so a slow engine start never marks the ingress unhealthy)."""
        if not self.manager.engine_ready:
            try:
                await asyncio.wait_for(self._probe_engine(), timeout=_ENGINE_PROBE_TIMEOUT_S)
            except Exception:  # not ready yet: is_model_initialized stays false
                pass
