"""A real HTTP callback receiver for tests: records POSTed JSON bodies, can go down and fail.

It runs aiohttp in a background thread with its own event loop, so sync tests, tests that drive
their own loop with asyncio.run, and tests that talk to a Ray Serve app can all use it.
"""

import asyncio
import json
import socket
import threading
import time
from typing import Any

from aiohttp import web

# How long stop() lets requests in flight finish before it cancels them (aiohttp's default is
# 60 s, past stop()'s own 10 s wait: a callback POST in flight made stop() time out). A cancelled
# request is what a real outage looks like to the sender: a connection error, then a retry.
STOP_GRACE_S = 0.5

class CallbackReceiver:
    """Listens on 127.0.0.1 at a fixed free port; `stop()`/`start()` simulate an outage."""

    def __init__(self) -> None:
        """Pick the port and start the loop thread; call `start()` to accept requests."""
        self._lock = threading.Lock()
        self._requests: list[tuple[str, Any]] = []
        self._fail_next = 0
        self._fault = "500"
        self._slow_s = 0.0
        self._failures = 0
        self._runner: web.AppRunner | None = None
        # Binding port 0 once fixes the port that every later start() reuses.
        self._socket = self._bind(0)
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> "CallbackReceiver":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Accept requests again on the same port (no-op while running)."""
        self._call(self._start())

    def stop(self) -> None:
        """Close the listener and open connections: senders now get connection errors."""
        self._call(self._stop())

    def close(self) -> None:
        """Stop and end the loop thread."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        if self._socket is not None:  # never started
            self._socket.close()

    def fail_next(self, n: int, fault: str = "500", slow_s: float = 0.0) -> None:
        """Fail the next `n` requests (recording nothing) with `fault`: an HTTP status ("500",
        "404", ...), "reset" (the connection closed without an answer) or "slow" (`slow_s` s,
        then 504)."""
        with self._lock:
            self._fail_next, self._fault, self._slow_s = n, fault, slow_s

    @property
    def failures(self) -> int:
        """Requests failed because of `fail_next`."""
        with self._lock:
            return self._failures

    def bodies(self, path: str) -> list[Any]:
        """JSON bodies accepted on `path` ("/generated", "/validated"), in arrival order."""
        with self._lock:
            return [body for p, body in self._requests if p == path]

    def requests(self) -> list[tuple[str, Any]]:
        """(path, body) of every accepted request, in arrival order."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Any]:
        """Block until `count` bodies arrived on `path`; return them, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            bodies = self.bodies(path)
            if len(bodies) >= count:
                return bodies
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(bodies)} of {count} bodies on {path} after {timeout} s")
            time.sleep(0.02)

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=STOP_GRACE_S)
        await runner.setup()
        sock = self._socket if self._socket is not None else self._bind(self.port)
        self._socket = None
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def _stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        # Parsed whatever the Content-Type says: the network's Go client may omit it.
        body = json.loads(await request.read())
        with self._lock:
            fault = self._fault if self._fail_next > 0 else None
            if fault:
                self._fail_next -= 1
                self._failures += 1
            else:
                self._requests.append((request.path, body))
        if fault == "reset":
            request.transport.abort()
        elif fault == "slow":
            await asyncio.sleep(self._slow_s)
            return web.Response(status=504, text="injected slowness")
        elif fault:
            return web.Response(status=int(fault), text="injected failure")
        return web.json_response({"status": "OK"})
