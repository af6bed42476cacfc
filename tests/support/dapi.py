"""The network's node software (the DAPI, v0.2.14) as the tests play it: its calls to an ML node in
the orders of spec ml-node.md 3.3 and 3.4, over real HTTP, with its habits (2.1): the version
segment before every path, POSTs without Content-Type, `stop` with no body, pow `stop` with `{}`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

VERSION = "v3.0.8"


@dataclass
class Poll:
    """What one status poll (spec 2.2) concluded: the broker's status and why."""

    status: str  # INFERENCE, POC, STOPPED, FAILED, UNKNOWN
    reason: str = ""


class Dapi:
    """One DAPI talking to one node whose PoC and inference URLs are both ``base``."""

    def __init__(self, base: str, model: str, timeout: float = 900.0):
        self.model = model
        self._http = httpx.Client(base_url=f"{base}/{VERSION}", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, timeout: float = 5.0) -> httpx.Response:
        return self._http.get(path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float | None = None) -> httpx.Response:
        """A POST as Go's client sends it: compact JSON, no Content-Type (none at all without body)."""
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        kwargs = {} if timeout is None else {"timeout": timeout}
        return self._http.post(path, content=content, headers={"content-type": ""}, **kwargs)

    def poll(self) -> Poll:
        """queryNodeStatus: state, then for INFERENCE the pow status, /health and /v1/models."""
        try:
            state = self.get("/api/v1/state")
            if state.status_code != 200:
                return Poll("FAILED", f"state answered {state.status_code}")
            answer = state.json()
        except (httpx.HTTPError, ValueError) as exc:
            return Poll("FAILED", f"state: {exc!r}")
        status = {"INFERENCE": "INFERENCE", "POW": "POC", "STOPPED": "STOPPED"}.get(answer.get("state"), "UNKNOWN")
        if status != "INFERENCE":
            return Poll(status)
        pow_status = self.get("/api/v1/inference/pow/status")
        if pow_status.status_code == 200 and pow_status.json().get("status") in ("GENERATING", "VALIDATING"):
            return Poll("POC")
        health = self.get("/health")
        if health.status_code != 200:
            return Poll("FAILED", f"/health answered {health.status_code}: {health.text}")
        models = self.get("/v1/models")
        if models.status_code == 200:
            data = models.json().get("data") or []
            if data and data[0]["id"] != self.model:
                return Poll("FAILED", f"Model mismatch: {data[0]['id']!r} is served, {self.model!r} expected")
        return Poll("INFERENCE")

    def idempotent(self) -> bool:
        """InferenceUpNodeCommand's check: INFERENCE, /health 200 and the expected model first."""
        if self.get("/api/v1/state").json().get("state") != "INFERENCE":
            return False
        if self.get("/health").status_code != 200:
            return False
        models = self.get("/v1/models")
        data = models.json().get("data") if models.status_code == 200 else None
        return not data or data[0]["id"] == self.model

    def inference_up_command(self, args: list[str]) -> tuple[str, httpx.Response | None]:
        """InferenceUpNodeCommand: ("no reload", None) when the check passes (after a pow stop if
        PoC runs), else ("reloaded", the up answer) after stop and up."""
        if self.idempotent():
            if self.get("/api/v1/inference/pow/status").json().get("status") in ("GENERATING", "VALIDATING"):
                self.post("/api/v1/inference/pow/stop", {})
            return "no reload", None
        self.post("/api/v1/stop")
        return "reloaded", self.post("/api/v1/inference/up",
                                     {"model": self.model, "dtype": "auto", "additional_args": args})

    def start_poc(self, init: dict, every_s: float = 1.0, timeout: float = 60.0) -> int:
        """StartPoCNodeCommandV2 re-sent every ``every_s`` until pow status says GENERATING; the
        number of init/generate calls it took."""
        sent, deadline = 0, time.monotonic() + timeout
        while self.get("/api/v1/inference/pow/status").json().get("status") != "GENERATING":
            if time.monotonic() > deadline:
                raise TimeoutError("pow status never said GENERATING")
            answer = self.post("/api/v1/inference/pow/init/generate", init)
            sent += 1
            assert answer.status_code < 400, answer.text  # >= 400 makes the node FAILED
            time.sleep(every_s)
        return sent
