"""Routes of the ML-node management contract (docs/ml-node.md): /api/v1/state, stop,
inference/up, versions, the GPU and model-cache routes, and /health, over the
:class:`~poc_serve.serve.node.service.NodeService` (``self.node``) and the
:class:`~poc_serve.serve.node.models_cache.ModelCache` (``self.models_cache``) the ingress holds."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from poc_serve.serve.node.models_cache import ModelCache, download_status_code
from poc_serve.serve.node.protocol import (DeleteResponse, DiskSpaceResponse, DownloadResponse, GpuDevicesResponse,
                                           GpuDriverResponse, HFModel, InferenceUpRequest, ModelListResponse,
                                           ModelStatusResponse, StateResponse, StatusOK, VersionsResponse)
from poc_serve.serve.node.service import NodeService

NODE_API = "/api/v1"
router = APIRouter(tags=["ML node"])


class NodeRoutes:
    """Ingress mixin: the management routes."""

    node: NodeService
    models_cache: ModelCache

    @router.get(f"{NODE_API}/state", response_model=StateResponse)
    async def node_state(self) -> StateResponse:
        return await self.node.state()

    @router.post(f"{NODE_API}/stop", response_model=StatusOK)
    async def node_stop(self) -> StatusOK:
        return await self.node.stop()

    @router.post(f"{NODE_API}/inference/up", response_model=StatusOK)
    async def inference_up(self, body: InferenceUpRequest) -> StatusOK:
        return await self.node.inference_up(body)

    @router.get("/health")
    async def health(self) -> dict[str, str | int]:
        return await self.node.health()

    @router.get(f"{NODE_API}/versions", response_model=VersionsResponse)
    async def versions(self) -> VersionsResponse:
        return self.node.versions()

    @router.get(f"{NODE_API}/gpu/devices", response_model=GpuDevicesResponse)
    async def gpu_devices(self) -> GpuDevicesResponse:
        return await self.node.gpu_devices()

    @router.get(f"{NODE_API}/gpu/driver", response_model=GpuDriverResponse)
    async def gpu_driver(self) -> GpuDriverResponse:
        return await self.node.gpu_driver()

    @router.post(f"{NODE_API}/models/status", response_model=ModelStatusResponse)
    async def model_status(self, body: HFModel) -> ModelStatusResponse:
        return await asyncio.to_thread(self.models_cache.status, body)

    @router.post(f"{NODE_API}/models/download", response_model=DownloadResponse,
                 responses={202: {"model": DownloadResponse, "description": "The download started."}})
    async def model_download(self, body: HFModel) -> JSONResponse:
        answer = await asyncio.to_thread(self.models_cache.download, body)
        return JSONResponse(answer.model_dump(mode="json"), status_code=download_status_code(answer))

    @router.get(f"{NODE_API}/models/list", response_model=ModelListResponse)
    async def model_list(self) -> ModelListResponse:
        return await asyncio.to_thread(self.models_cache.list)

    @router.get(f"{NODE_API}/models/space", response_model=DiskSpaceResponse)
    async def model_space(self) -> DiskSpaceResponse:
        return await asyncio.to_thread(self.models_cache.space)

    @router.delete(f"{NODE_API}/models", response_model=DeleteResponse)
    async def model_delete(self, body: HFModel) -> DeleteResponse:
        return await asyncio.to_thread(self.models_cache.delete, body)
