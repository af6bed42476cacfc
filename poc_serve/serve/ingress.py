"""The ingress deployment: the /api/v1/pow HTTP API over the round manager.

Routes stay a few lines: parsing is the protocol models' job, logic the round manager's.
"""

from __future__ import annotations

import asyncio
import logging
import re

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from poc_serve.engine.protocol import PoCRound
from poc_serve.serve.callbacks import CallbackSender
from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.metrics import PoCMetrics
from poc_serve.serve.protocol import ControlResponse, PoCInitRequest, PoCStatus, ProofBatch, ValidatedBatch
from poc_serve.serve.round_manager import RoundError, RoundManager

logger = logging.getLogger("poc_serve")
# A version segment that a proxy in front of the node normally strips, e.g. /v3.0.8/api/v1/pow/status.
_ENGINE_PROBE_TIMEOUT_S = 5.0
_VERSION_PREFIX = re.compile(r"^/v\d+(\.\d+)*(?=/api/)")


class CallerHabitsMiddleware:
    """ASGI middleware for the network's Go client: strips a leading version segment from the
    path and treats bodies sent without a Content-Type as JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = _VERSION_PREFIX.sub("", scope["path"])
            headers = scope["headers"]
            if scope["method"] == "POST" and not any(k == b"content-type" for k, _ in headers):
                headers = [*headers, (b"content-type", b"application/json")]
            scope = {**scope, "path": path, "raw_path": path.encode(), "headers": headers}
        await self.app(scope, receive, send)


app = FastAPI(title="poc_serve", description="Proof-of-Compute node over a vLLM engine")
app.add_middleware(CallerHabitsMiddleware)
router = APIRouter(prefix="/api/v1/pow")


@app.exception_handler(RoundError)
async def _round_error(request: Request, exc: RoundError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})


def _manager(request: Request) -> RoundManager:
    return request.app.state.manager


def _ok(manager: RoundManager) -> ControlResponse:
    return ControlResponse(pow_status=manager.status())


@router.post("/init", response_model=ControlResponse)
async def init(body: PoCInitRequest, request: Request) -> ControlResponse:
    await _manager(request).init(body)
    return _ok(_manager(request))


@router.post("/init/generate", response_model=ControlResponse)
async def init_generate(body: PoCInitRequest, request: Request) -> ControlResponse:
    await _manager(request).init_generate(body)
    return _ok(_manager(request))


@router.post("/init/validate", response_model=ControlResponse)
async def init_validate(body: PoCInitRequest, request: Request) -> ControlResponse:
    await _manager(request).init_validate(body)
    return _ok(_manager(request))


@router.post("/phase/generate", response_model=ControlResponse)
async def phase_generate(request: Request) -> ControlResponse:
    await _manager(request).phase_generate()
    return _ok(_manager(request))


@router.post("/phase/validate", response_model=ControlResponse)
async def phase_validate(request: Request) -> ControlResponse:
    await _manager(request).phase_validate()
    return _ok(_manager(request))


@router.post("/stop", response_model=ControlResponse)
async def stop(request: Request) -> ControlResponse:
    await _manager(request).stop()
    return _ok(_manager(request))


@router.get("/status", response_model=PoCStatus)
async def status(request: Request) -> PoCStatus:
    return _manager(request).status()


@router.post("/validate", response_model=ValidatedBatch)
async def validate(body: ProofBatch, request: Request) -> ValidatedBatch:
    return await _manager(request).validate(body)


app.include_router(router)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class PoCIngress:
    """Holds the round and drives the engine replicas through ``engine``'s handle."""

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
        app.state.manager = self.manager

    async def _compute(self, round: PoCRound, nonces: list[int]) -> list[float]:
        distances = await self._engine.compute.remote(round.model_dump(), nonces)
        self.manager.engine_ready = True
        return distances

    async def _probe_engine(self) -> None:
        await self._engine.check_health.remote()
        self.manager.engine_ready = True

    async def check_health(self) -> None:
        """The ingress itself is healthy; its periodic check also finds out when an engine is ready
        (bounded, so a slow engine start never marks the ingress unhealthy)."""
        if not self.manager.engine_ready:
            try:
                await asyncio.wait_for(self._probe_engine(), timeout=_ENGINE_PROBE_TIMEOUT_S)
            except Exception:  # not ready yet: is_model_initialized stays false
                pass
