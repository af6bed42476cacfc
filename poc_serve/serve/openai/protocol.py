"""What the ingress itself says on the OpenAI-compatible routes. Requests and answers are vLLM's
own (its serving classes run in the engine replicas: poc_serve/engine/openai_server.py); the
ingress only refuses a request before it reaches an engine (PoC running, inference down, no
engine ready, a body that is no JSON object), in vLLM's error shape ``{"error": {"message",
"type", "param", "code"}}`` with the HTTP status as ``code`` (:class:`OpenAIError`)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

# vLLM's error types by HTTP status.
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}


class OpenAIError(Exception):
    """An error of the OpenAI-compatible routes, answered in vLLM's shape with ``status``."""

    def __init__(self, status: int, message: str, type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers
        self.type = type or ERROR_TYPES.get(status, "InternalServerError")

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body(), headers=self.headers)
