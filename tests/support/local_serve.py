"""Ray Serve on this machine for the serve-layer tests: a local Ray instance with Serve's proxy on
a free port, and the application wired as :func:`poc_serve.app.assemble_app` wires it but with a
stand-in engine (the engine deployment's ``engine_factory``)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator

import ray
from ray import serve

from poc_serve.serve.config import PoCAppArgs
from poc_serve.app import assemble_app
from tests.support.net import free_port


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


@contextmanager
def deployed(args: PoCAppArgs, engine_factory: Callable[[Any], Awaitable[Any]], name: str) -> Iterator[None]:
    """The application at / on the running Serve instance, its engines built by ``engine_factory``;
    deleted after."""
    serve.run(assemble_app(args, engine_factory), name=name, route_prefix="/")
    try:
        yield
    finally:
        serve.delete(name)


def delete_apps() -> None:
    """Delete every application on the running Serve instance (what a module left behind)."""
    for name in serve.status().applications:
        serve.delete(name)
