"""Request limits checked before any route runs: body size, and JSON that Python parses but that
is not JSON the network sends (docs/reliability.md, "Bad input").

FastAPI reads bodies with Python's json module, which takes NaN and Infinity literals and turns
1e400 into inf: a non-finite value echoed in the PoC APIs' 422 then failed to render (500), and a
lone surrogate escape (\\ud800) failed to encode as UTF-8 the same way. Non-UTF-8 bytes, integers
of thousands of digits and nesting past Python's recursion limit got a bare 400 "There was an
error parsing the body", and a body of any size was read whole into memory. This middleware
answers all of these with a 4xx naming the problem: 413 over :data:`MAX_BODY_BYTES`, else 400,
in OpenAI's error shape under /v1 and as ``{"detail": ...}`` elsewhere. Anything else (JSON
syntax errors, wrong fields) is left to FastAPI and the request models.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi.responses import JSONResponse

from poc_serve.serve.openai.protocol import OpenAIError

# The largest legitimate body is a v2 generate job at the queue's limit (100,000 nonces) with
# their validation artifacts: about 7 MB. Twice that leaves room for longer keys and whitespace.
MAX_BODY_BYTES = 16 * 1024 * 1024
# The deepest body of the APIs nests 4 levels (validation.artifacts[i].nonce); OpenAI clients
# may add tool schemas, which nest more. 64 still keeps every recursive walk far from Python's
# recursion limit (~1000 frames), which the 422 answer's rendering reached before.
MAX_JSON_DEPTH = 64
# Only a \uD800-\uDFFF escape can produce a lone surrogate (raw UTF-8 cannot encode one): without
# such an escape in the text, the parsed body need not be encoded again to look for one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_OPENAI_PREFIX = "/v1/"


class BadBody(ValueError):
    """A body this service refuses before FastAPI parses it; the message is what callers read."""


def _no_constants(literal: str) -> float:
    raise BadBody(f"{literal} is not a JSON number: send a finite number")


def _finite(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise BadBody(f"number {literal[:40]} is out of the float64 range")
    return value


def body_problem(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``body`` is refused, or None when FastAPI may parse it (also when it is no JSON at all:
    FastAPI's own 422 names the syntax error's position)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"body is not UTF-8: byte 0x{body[exc.start]:02x} at offset {exc.start}"
    try:
        value = json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except BadBody as exc:
        return str(exc)
    except json.JSONDecodeError:
        # JSON text holds no raw NUL; UTF-16 or UTF-32 (which FastAPI would decode) has one per
        # ASCII character.
        return "body is not UTF-8: it holds NUL bytes (UTF-16 or UTF-32?)" if "\x00" in text else None
    except RecursionError:
        return f"JSON nested deeper than {max_depth} levels"
    except ValueError as exc:  # an integer of more than 4,300 digits
        return f"body is not valid JSON: {exc}"
    if _depth_exceeds(value, max_depth):
        return f"JSON nested deeper than {max_depth} levels"
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            escape = f"\\u{ord(exc.object[exc.start]):04x}"
            return f"a string holds a lone surrogate escape ({escape}): it is not valid Unicode"
    return None


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than ``max_depth``; walked with a stack, not recursion."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


class RequestLimitsMiddleware:
    """ASGI middleware: refuses a body over ``max_body_bytes`` (413, before reading it when its
    Content-Length says so) or one that :func:`body_problem` refuses (400); else hands the body,
    read once, on to the app."""

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_depth = max_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"body over the limit of {self.max_body_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _refuse(scope, receive, send, 413, too_large)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the caller is gone: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:  # sent without Content-Length (chunked)
                return await _refuse(scope, receive, send, 413, too_large)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = body_problem(body, self.max_depth) if body else None
        if problem:
            return await _refuse(scope, receive, send, 400, problem)
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive):
    """A receive callable that gives the app the body already read, then the caller's messages
    (a disconnect, which a streamed answer waits for)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    if scope["path"].startswith(_OPENAI_PREFIX):
        response = OpenAIError(status, message, "invalid_request_error").response()
    else:
        response = JSONResponse(status_code=status, content={"detail": message})
    await response(scope, receive, send)
