"""Ray Serve on this machine for the serve-layer tests: a local Ray instance with Serve's proxy on
a free port, and the application wired as :func:`poc_serve.app.assemble_app` wires it but with a
stand-in engine (the engine deployment's ``engine_factory``).

The stand-in node is the application most serve-layer modules test, deployed once and shared:
two replicas of the scripted fake engine (tests/support/fake_engine.py) serving
:data:`STAND_IN_MODEL`, callbacks and progress logs every 0.2 s, and a callback POST that gives up
after 3 s (the fuzzed ones may go to hosts that never answer; a receiver on this machine answers
long before, so that none is sent twice). :func:`reset_node` brings it back to where it started,
so that what a module leaves does not reach the next.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import httpx
import ray
from ray import serve
from ray.serve import api as serve_api

from poc_serve.serve.config import PoCAppArgs
from poc_serve.app import assemble_app
from tests.support.net import free_port
from tests.support.waits import wait_until

# The environment of stand-in engine replicas: NVML's Python bindings importable as ``pynvml``
# (Ray's copy of nvidia-ml-py, as if nvidia-ml-py were installed). Without them, every replica
# imports vLLM (7 s of CPU) for vLLM's copy, only to find that this machine has no NVML.
STAND_IN_ENGINE_ENV = {"PYTHONPATH": f"{Path(ray.__file__).parent / '_private/thirdparty/pynvml'}:${{PYTHONPATH}}"}
STAND_IN_NODE = "node"
STAND_IN_MODEL = "poc-tiny-qwen3"
# 8 nonces per engine call: a round of a few hundred nonces runs many calls on both replicas.
STAND_IN_NODE_ARGS = PoCAppArgs(
    model=STAND_IN_MODEL, num_engine_replicas=2, engine_num_cpus=0, engine_env=STAND_IN_ENGINE_ENV,
    callback_interval_s=0.2, log_interval_s=0.2, callback_timeout_s=3.0, callback_backoff_s=0.1,
    engine=dict(max_model_len=64, max_num_batched_tokens=128, poc_forwards_per_call=1))


@contextmanager
def local_serve(num_cpus: int = 4) -> Iterator[str]:
    """Start Ray and Serve; yields Serve's base URL; shuts both down after."""
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def launch(args: PoCAppArgs, engine_factory: Callable[[Any], Awaitable[Any]], name: str,
           route_prefix: str = "/") -> None:
    """Deploy the application on the running Serve instance, its engines built by
    ``engine_factory``, without waiting for it to run (Serve's non-waiting run)."""
    serve_api._run(assemble_app(args, engine_factory), name=name, route_prefix=route_prefix, _blocking=False)


def wait_running(name: str) -> None:
    """Wait until the application ``name`` runs: its ingress and every engine replica started."""
    wait_until(f"application {name} running", lambda: serve.status().applications[name].status == "RUNNING",
               timeout=120, interval=0.2)


def reset_node(url: str) -> None:
    """The stand-in node at ``url`` as deployed: no v2 or v1 PoC running, no callback pending
    (a v1 callback to a receiver that is gone would hold back every later one), inference up with
    :data:`STAND_IN_MODEL` (at once when that model is still loaded)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post("/api/v1/inference/pow/stop")  # drops what its receivers did not take
        client.post("/api/v1/pow/stop")
        pending = (client.get("/api/v1/pow/status").json()["callbacks"]["pending_callbacks"],
                   client.get("/api/v1/inference/pow/status").json()["callbacks"]["pending"])
        assert pending == (0, 0), f"callbacks pending after the PoC stopped (v1, v2): {pending}"
        up = client.post("/api/v1/inference/up", json={"model": STAND_IN_MODEL})
        assert up.status_code == 200, up.text


def delete_apps(keep: tuple[str, ...] = ()) -> None:
    """Delete every application on the running Serve instance but those named in ``keep``, side
    by side."""
    names = set(serve.status().applications) - set(keep)
    for name in names:
        serve.delete(name, _blocking=False)
    wait_until("the applications deleted", lambda: not names & set(serve.status().applications), timeout=60,
               interval=0.1)
