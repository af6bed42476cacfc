"""What every service shares to fail and to log: :class:`ServiceError` (a refused request, with
its HTTP status) and the ``logger`` whose lines land in the replica log and the dashboard."""

from __future__ import annotations

import logging
from typing import Any

# A child of Serve's logger, so warnings and progress lines land in the replica log and the dashboard.
logger = logging.getLogger("ray.serve.poc_serve")


class ServiceError(Exception):
    """A request that the node's state does not allow; ``status_code`` is the HTTP answer and
    ``detail`` its JSON ``detail`` (a message, or an object where the spec asks for one)."""

    def __init__(self, status_code: int, detail: str | dict[str, Any]):
        super().__init__(detail if isinstance(detail, str) else detail.get("error", "error"))
        self.status_code = status_code
        self.detail = detail
