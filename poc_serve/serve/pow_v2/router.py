"""Routes of the PoC v2 API under /api/v1/inference/pow (docs/v2.md): each a few lines over the
:class:`~poc_serve.serve.pow_v2.service.ArtifactService` that the ingress holds as ``self.artifacts``.
The job routes are also served under v1's prefix, where no v1 route has their paths (poc-v2.md
section 4)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from poc_serve.serve.core.engine_client import EngineClient
from poc_serve.serve.core.policies import V1_API, V2_API
from poc_serve.serve.pow_v2.protocol import (GenerateAnswer, GenerateRequest, GenerationInit, InitGenerateAnswer,
                                             JobAnswer, NodeStatus, StopAnswer)
from poc_serve.serve.pow_v2.service import ArtifactService

router = APIRouter(tags=["PoC v2"])


class PoCV2Routes:
    """Ingress mixin: the v2 routes."""

    artifacts: ArtifactService
    engine: EngineClient

    @router.post(f"{V2_API}/init/generate", response_model=InitGenerateAnswer)
    async def v2_init_generate(self, body: GenerationInit) -> InitGenerateAnswer:
        await self.engine.require()
        return await self.artifacts.init_generate(body)

    @router.post(f"{V2_API}/generate", response_model=GenerateAnswer)
    @router.post(f"{V1_API}/generate", response_model=GenerateAnswer)
    async def v2_generate(self, body: GenerateRequest) -> dict[str, Any]:
        await self.engine.require()
        return await self.artifacts.generate(body)

    @router.get(f"{V2_API}/generate/{{request_id}}", response_model=JobAnswer)
    @router.get(f"{V1_API}/generate/{{request_id}}", response_model=JobAnswer)
    async def v2_job(self, request_id: str) -> dict[str, Any]:
        return self.artifacts.job_state(request_id)

    @router.get(f"{V2_API}/status", response_model=NodeStatus)
    async def v2_status(self) -> NodeStatus:
        return self.artifacts.status()

    @router.post(f"{V2_API}/stop", response_model=StopAnswer)
    async def v2_stop(self) -> StopAnswer:
        return await self.artifacts.stop()
