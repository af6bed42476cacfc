"""One Ray + Serve instance for the serve layer: every module deploys its application on it under
its own name (the GCS state of the app is keyed by that name) and deletes it after, so that
modules stay independent without each starting Ray. Package-scoped: Ray is shut down once the
last serve-layer test of this folder has run, before the layers that start Ray of their own."""

from __future__ import annotations

import pytest
import ray

from tests.support.local_serve import delete_apps, local_serve


@pytest.fixture(scope="package")
def serve_url():
    """Serve's base URL on this machine, shared by the serve layer's modules."""
    with local_serve() as url:
        yield url


@pytest.fixture(scope="module", autouse=True)
def _no_app_outlives_its_module():
    """After each module, delete whatever application it left running (a test that failed
    before deleting its own), so that the next module starts on an empty Serve instance."""
    yield
    if ray.is_initialized():
        delete_apps()
