"""ASGI middleware for the habits of the network's node software (the DAPI, spec ml-node.md 2.1)."""

from __future__ import annotations

import re

# The DAPI puts the node's version before every path, of both its URLs: /v3.0.8/api/v1/state,
# /v3.0.8/health, /v3.0.8/v1/models. A leading /v<digits>(.<digits>)* segment is dropped when the
# rest is a path this node serves, so /v1/models itself (whose /v1 is no version) stays as it is.
_VERSION_SEGMENT = re.compile(r"^/v\d+(?:\.\d+)*(?=/)")
SERVED_ROOTS = ("/api/", "/v1/", "/health", "/tokenize", "/detokenize", "/docs", "/openapi.json")
# Methods whose bodies are read as JSON whatever Content-Type they came with.
_JSON_METHODS = ("POST", "PUT", "DELETE")


def strip_version(path: str) -> str:
    """``path`` without a leading version segment (when what follows is a served path)."""
    match = _VERSION_SEGMENT.match(path)
    if match:
        rest = path[match.end():]
        if rest.startswith(SERVED_ROOTS):
            return rest
    return path


class CallerHabitsMiddleware:
    """Strips a leading version segment from every path and reads every request body as JSON,
    whatever Content-Type it came with (the DAPI sends none; curl -d sends a form type)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = strip_version(scope["path"])
            headers = scope["headers"]
            if scope["method"] in _JSON_METHODS:
                headers = [(k, v) for k, v in headers if k != b"content-type"]
                headers.append((b"content-type", b"application/json"))
            scope = {**scope, "path": path, "raw_path": path.encode(), "headers": headers}
        await self.app(scope, receive, send)
