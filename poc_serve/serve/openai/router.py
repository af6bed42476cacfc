"""Routes of the OpenAI-compatible API under /v1 over the
:class:`~poc_serve.serve.openai.service.InferenceService` that the ingress holds as ``self.inference``."""

from __future__ import annotations

from fastapi import APIRouter

from poc_serve.serve.openai.protocol import ChatCompletionRequest, CompletionRequest
from poc_serve.serve.openai.service import InferenceService

router = APIRouter(prefix="/v1", tags=["OpenAI"])


class OpenAIRoutes:
    """Ingress mixin: the OpenAI routes."""

    inference: InferenceService

    @router.get("/models")
    async def models(self) -> dict:
        return self.inference.models()

    @router.post("/completions")
    async def completions(self, body: CompletionRequest):
        return await self.inference.completion(body)

    @router.post("/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest):
        return await self.inference.chat(body)
