"""Polling until something holds, for tests that watch a service work."""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 1.0,
               ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """The predicate's first truthy value, polled every ``interval`` s (an exception of ``ignore``
    counts as falsy); AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.time() + timeout
    while True:
        try:
            value = predicate()
        except ignore:
            value = None
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_checked(client: httpx.Client, at_least: int, timeout: float = 20, status: str = "/status",
                 interval: float = 0.1) -> dict:
    """The v1 status (GET ``status`` on ``client``) once total_checked reaches ``at_least``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = client.get(status).json()
        if state["total_checked"] >= at_least:
            return state
        time.sleep(interval)
    raise AssertionError(f"fewer than {at_least} nonces checked in {timeout}s: {state['total_checked']}")
