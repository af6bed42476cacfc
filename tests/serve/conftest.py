"""One Ray + Serve instance for the serve layer, and on it one stand-in node
(tests/support/local_serve.py) for the modules that test the node: launched when the package
starts, brought back to where it started (:func:`reset_node`) before and after each of them. A
module that needs an application of its own (other engines) deploys it under its own name; it is
deleted after the module. Package-scoped: Ray is shut down once the last serve-layer test of this
folder has run, before the layers that start Ray of their own."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import ray

from tests.support.fake_engine import ScriptedEngine
from tests.support.local_serve import (STAND_IN_NODE, STAND_IN_NODE_ARGS, delete_apps, launch, local_serve,
                                       reset_node, wait_running)


@pytest.fixture(scope="package")
def serve_url():
    """Serve's base URL on this machine, shared by the serve layer's modules. An engine replica
    that fails to start fails its deployment at once (Serve's default starts it 3 times): what
    a deployment that cannot start looks like, without two more starts of a replica process."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT", "1")
        with local_serve() as url:
            yield url


@pytest.fixture(scope="package", autouse=True)
def _node_url_future(request, serve_url):
    """The stand-in node, launched when the package starts if a selected test uses it, and made
    ready in the background: its start and its ingress's first inference/up (which imports vLLM's
    argument parser, 10 s of CPU) overlap the tests that run first. Yields the future of its base
    URL; deleted after the package (Serve's shutdown takes 5 s with it left, 1 s without)."""
    if not any("node_url" in item.fixturenames for item in request.session.items):
        yield None
        return
    launch(STAND_IN_NODE_ARGS, ScriptedEngine.factory, STAND_IN_NODE)

    def ready() -> str:
        wait_running(STAND_IN_NODE)
        reset_node(serve_url)
        return serve_url

    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(ready)
    delete_apps()


@pytest.fixture(scope="module")
def node_url(_node_url_future: Future):
    """The stand-in node's base URL, the node as deployed when the module starts and after it ends."""
    url = _node_url_future.result()
    reset_node(url)
    yield url
    reset_node(url)


@pytest.fixture(scope="module", autouse=True)
def _no_app_outlives_its_module():
    """After each module, delete the applications of its own, so that the next module starts with
    the stand-in node alone."""
    yield
    if ray.is_initialized():
        delete_apps(keep=(STAND_IN_NODE,))
