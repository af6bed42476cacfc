"""The OpenAI-compatible routes, as ``vllm serve`` has them: /v1/chat/completions,
/v1/completions, /tokenize, /detokenize relayed to vLLM's serving classes in an engine replica,
and /v1/models, over the :class:`~poc_serve.serve.openai.service.InferenceService` that the
ingress holds as ``self.inference``. Bodies are vLLM's request models (its docs list the fields);
the OpenAPI page shows them as free JSON objects."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from poc_serve.serve.openai.service import InferenceService

router = APIRouter(tags=["OpenAI"])
_BODY = Body(..., description="vLLM's request body for this route (OpenAI's fields and vLLM's extras).")


class OpenAIRoutes:
    """Ingress mixin: the OpenAI routes."""

    inference: InferenceService

    @router.get("/v1/models")
    async def models(self) -> dict:
        return self.inference.models()

    @router.post("/v1/chat/completions")
    async def chat_completions(self, body: dict[str, Any] = _BODY):
        return await self.inference.answer("/v1/chat/completions", body)

    @router.post("/v1/completions")
    async def completions(self, body: dict[str, Any] = _BODY):
        return await self.inference.answer("/v1/completions", body)

    @router.post("/tokenize")
    async def tokenize(self, body: dict[str, Any] = _BODY):
        return await self.inference.answer("/tokenize", body)

    @router.post("/detokenize")
    async def detokenize(self, body: dict[str, Any] = _BODY):
        return await self.inference.answer("/detokenize", body)
