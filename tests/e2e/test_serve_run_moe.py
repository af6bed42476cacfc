"""`serve run` with the built-in Mixture-of-Experts model, as an operator starts a node: the
shipped serve_config.yaml with `model: poc-tiny-qwen3-moe` (and a free port), a round, and the
validation of what it found, then Ctrl-C. Before vLLM's forward context was set around the PoC
forward, every PoC call on this model failed on the engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from poc_serve.poc import r_target_for

from tests.support.net import free_port
from tests.support.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
ROUND = dict(block_hash="moe_block", block_height=3, public_key="moe_key", seq_len=32, r_target=r_target_for(0.10),
             node_id=0, node_count=1)



@pytest.fixture(scope="module")
def node(tmp_path_factory):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config["applications"][0]["args"]["model"] = "poc-tiny-qwen3-moe"
    folder = tmp_path_factory.mktemp("serve_run_moe")
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (folder / "serve_run.log").open("w")
    serve_cli = Path(sys.executable).parent / "serve"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    # serve run as a terminal starts it: SIGINT at its default, so that Python turns Ctrl-C into
    # KeyboardInterrupt, whatever this process was started with (a shell script's background job
    # ignores SIGINT, and its children inherit that).
    proc = subprocess.Popen([str(serve_cli), "run", str(path)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/pow", timeout=120) as client:
            def engine_ready() -> bool:  # the proxy answers 404 until the application is deployed
                answer = client.get("/status")
                return answer.status_code == 200 and answer.json()["is_model_initialized"]

            wait_until("the engine", engine_ready, timeout=420, ignore=(httpx.TransportError,))
            yield client
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: serve run shuts Serve and Ray down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    # Serve's graceful shutdown (the ingress sends what was found and saves the round) took ~12 s.
    assert proc.returncode == 0, f"serve run did not end within 60 s of Ctrl-C (exit status {proc.returncode})"


def test_round_and_validation_on_the_moe_model(node):
    """A round generates and finds valid nonces; validating them recomputes the identical
    distances (same engine, other batches) and judges the proof honest."""
    assert node.post("/init/generate", json=ROUND).status_code == 200
    status = wait_until("64 checked nonces", lambda: (s := node.get("/status").json())["total_checked"] >= 64 and s,
                        timeout=300, ignore=(httpx.TransportError,))
    assert status["state"] == "GENERATING"
    assert node.post("/stop").status_code == 200
    status = node.get("/status").json()
    nonces, dist = status["valid_nonces"][:20], status["valid_distances"][:20]
    assert nonces and all(d < ROUND["r_target"] for d in dist)

    assert node.post("/init/validate", json=ROUND).status_code == 200
    proof = dict(block_hash=ROUND["block_hash"], block_height=3, public_key=ROUND["public_key"], nonces=nonces,
                 dist=dist)
    verdict = node.post("/validate", json=proof)
    assert verdict.status_code == 200, verdict.text
    verdict = verdict.json()
    assert verdict["dist"] == dist
    assert verdict["n_invalid"] == 0 and verdict["fraud_detected"] is False
