"""How failures become HTTP answers, for every route of the app: :class:`ServiceError` as
``{"detail": ...}`` with its status (Retry-After on a 503), :class:`OpenAIError` in OpenAI's
shape, and request validation as OpenAI's 400 under /v1 and FastAPI's 422 elsewhere."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from poc_serve.serve.core.engine_client import RETRY_AFTER_S
from poc_serve.serve.core.errors import ServiceError
from poc_serve.serve.openai.protocol import OpenAIError


async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return exc.response()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """/v1 answers OpenAI's shape (400, as OpenAI and vLLM do); the PoC APIs keep FastAPI's 422."""
    if request.url.path.startswith("/v1/"):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return OpenAIError(400, problems or "invalid request").response()
    return await request_validation_exception_handler(request, exc)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status_code == 503 else None
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)
