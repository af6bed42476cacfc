"""Routes of the PoC v1 API under /api/v1/pow (docs/protocol.md): each a few lines over the
:class:`~poc_serve.serve.pow_v1.service.RoundManager` that the ingress holds as ``self.rounds``."""

from __future__ import annotations

from fastapi import APIRouter, Query

from poc_serve.serve.core.engine_client import EngineClient
from poc_serve.serve.core.policies import V1_API
from poc_serve.serve.pow_v1.protocol import ControlResponse, PoCInitRequest, PoCStatus, ProofBatch, ValidatedBatch
from poc_serve.serve.pow_v1.service import RoundManager

router = APIRouter(prefix=V1_API, tags=["PoC v1"])


class PoCV1Routes:
    """Ingress mixin: the v1 routes."""

    rounds: RoundManager
    engine: EngineClient

    def _control_answer(self) -> ControlResponse:
        return ControlResponse(pow_status=self.rounds.status())

    @router.post("/init", response_model=ControlResponse)
    async def init(self, body: PoCInitRequest) -> ControlResponse:
        await self.rounds.init(body)
        return self._control_answer()

    @router.post("/init/generate", response_model=ControlResponse)
    async def init_generate(self, body: PoCInitRequest) -> ControlResponse:
        await self.rounds.init_generate(body)
        return self._control_answer()

    @router.post("/init/validate", response_model=ControlResponse)
    async def init_validate(self, body: PoCInitRequest) -> ControlResponse:
        await self.rounds.init_validate(body)
        return self._control_answer()

    @router.post("/phase/generate", response_model=ControlResponse)
    async def phase_generate(self) -> ControlResponse:
        await self.rounds.phase_generate()
        return self._control_answer()

    @router.post("/phase/validate", response_model=ControlResponse)
    async def phase_validate(self) -> ControlResponse:
        await self.rounds.phase_validate()
        return self._control_answer()

    @router.post("/stop", response_model=ControlResponse)
    async def stop(self) -> ControlResponse:
        await self.rounds.stop()
        return self._control_answer()

    @router.get("/status", response_model=PoCStatus)
    async def status(self, nonces: bool = Query(True, description="false: omit valid_nonces and valid_distances"),
                     offset: int = Query(0, ge=0, description="First valid nonce listed (paging)"),
                     limit: int | None = Query(None, ge=0, description="Most valid nonces listed")) -> PoCStatus:
        return self.rounds.status(offset, limit if nonces else 0)

    @router.post("/validate", response_model=ValidatedBatch)
    async def validate(self, body: ProofBatch) -> ValidatedBatch:
        await self.engine.require()
        return await self.rounds.validate(body)
