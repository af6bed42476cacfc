"""Request models of the OpenAI-compatible inference API (/v1/completions, /v1/chat/completions).

Unknown keys are ignored rather than refused: OpenAI clients send many optional fields that do not
change a greedy or sampled completion here. Values that would change it and are not supported
(several choices, logprobs) are refused with 400.

Every error under /v1 has OpenAI's shape, streamed or not: ``{"error": {"message", "type",
"code"}}`` with the HTTP status as ``code`` (:class:`OpenAIError`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from poc_serve.serve.http.bounds import INT64_MAX, Int64

# OpenAI's error types by HTTP status (what its clients map to exception classes).
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 503: "service_unavailable"}
# A token id the engine can hold (vLLM answers 400 for one beyond the vocabulary).
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]


class OpenAIError(Exception):
    """An error of the /v1 API, answered in OpenAI's shape with ``status``."""

    def __init__(self, status: int, message: str, type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers
        self.type = type or ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "code": self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body(), headers=self.headers)


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="Served model name (GET /v1/models).")
    max_tokens: int = Field(16, ge=1, le=4096, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    n: Literal[1] = Field(1, description="Choices per request (only 1 is supported).")
    stop: str | list[str] | None = Field(None, description="Stop strings.")
    seed: Int64 | None = Field(None, description="Sampling seed.")
    stream: bool = Field(False, description="Stream the answer as server-sent events.")
    logprobs: None = Field(None, description="Not supported; must be absent or null.")

    def sampling(self) -> dict[str, Any]:
        """vLLM SamplingParams keyword arguments."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                    stop=stop, seed=self.seed)


class CompletionRequest(_SamplingFields):
    """Body of POST /v1/completions."""

    prompt: str | list[TokenId] = Field(description="Prompt text, or prompt token ids.")

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list[int]) -> str | list[int]:
        if len(v) == 0:
            raise ValueError("prompt must not be empty")
        return v


class ChatMessage(BaseModel):
    """One message of a chat."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str = Field(description="What is said (text only).")


class ChatCompletionRequest(_SamplingFields):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
