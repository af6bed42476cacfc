"""Bad input over real HTTP and real Ray Serve (the stand-in node of tests/support): schema
fuzzing of every /api/v1/... and /v1/... route of the OpenAPI document (schemathesis, a bounded
and derandomised number of examples per route) answers no 5xx and every 4xx says what is wrong;
then the cases a schema cannot generate: bodies over the size limit, integers beyond int64,
negative nonces, NaN and Infinity literals, deep nesting, non-UTF-8 bytes."""

from __future__ import annotations

import json

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from poc_serve.serve.http.limits import MAX_BODY_BYTES, MAX_JSON_DEPTH
from tests.support.local_serve import STAND_IN_MODEL

V1 = "/api/v1/pow"
V2 = "/api/v1/inference/pow"
# Enough to reach every field's bounds on every route, small enough for CI's two cores.
EXAMPLES_PER_ROUTE = 25


def message_of(response) -> str:
    """What a 4xx says: FastAPI's ``detail`` on the PoC APIs, OpenAI's ``error.message`` on /v1."""
    body = response.json()
    return str(body["error"]["message"] if "error" in body else body["detail"])


def test_no_route_answers_5xx(node_url, request):
    """Valid and invalid bodies, paths and queries on every route: below 500 but for a 503 that
    names the state it answers (inference down after a fuzzed POST /api/v1/stop, no NVML on this
    CPU node), and a 4xx names the problem. A case that started something ends with both APIs
    stopped, so that no later case is blocked by it. Bad answers are collected rather than raised:
    no shrinking, a bounded run, and one report of every route that failed."""
    api = schemathesis.openapi.from_url(f"{node_url}/openapi.json")
    bad: dict[str, str] = {}
    session, client = requests.Session(), httpx.Client(base_url=node_url, timeout=30)
    request.addfinalizer(client.close)
    request.addfinalizer(session.close)

    def check(case) -> None:
        response = case.call(base_url=node_url, timeout=30, session=session)
        status = response.status_code
        honest_503 = status == 503 and message_of(response)
        if (status >= 500 and not honest_503) or (status >= 400 and not message_of(response)):
            bad.setdefault(f"{case.method} {case.path}", f"{response.status_code} {response.text[:300]} "
                                                         f"for {case.body!r:.300}")
        if case.method == "POST" and response.status_code < 300:
            client.post(f"{V1}/stop")
            client.post(f"{V2}/stop")

    operations = [result.ok() for result in api.get_all_operations()]
    assert {f"{V1}/validate", f"{V2}/generate", "/v1/chat/completions"} <= {op.path for op in operations}
    for operation in operations:
        for mode in GenerationMode:
            fuzz = settings(max_examples=EXAMPLES_PER_ROUTE, derandomize=True, deadline=None, database=None,
                            suppress_health_check=list(HealthCheck))(given(operation.as_strategy(mode))(check))
            try:
                fuzz()
            except Unsatisfiable:  # no parameters, so no invalid request of this route exists
                assert mode is GenerationMode.NEGATIVE and not operation.body and not operation.query
    # A fuzzed POST /api/v1/stop set inference down: the modules' other tests need it up.
    assert client.post("/api/v1/inference/up", json={"model": STAND_IN_MODEL}).status_code == 200
    assert not bad, "\n".join(f"{route}: {answer}" for route, answer in bad.items())


def post(node_url: str, path: str, body) -> httpx.Response:
    """POST raw bytes (or chunks of them), as a client that writes its own JSON would."""
    return httpx.post(node_url + path, content=body, timeout=60)


def refused(response, status: int, *words: str) -> None:
    """Asserts an answer with ``status`` in the route's error shape whose message says ``words``."""
    assert response.status_code == status, response.text[:500]
    message = message_of(response)
    if status != 422:
        is_openai = "error" in response.json()
        assert is_openai == response.url.path.startswith("/v1/"), response.text
        assert not is_openai or response.json()["error"]["code"] == status
    assert all(word in message for word in words), message


V1_INIT = {"block_hash": "b", "block_height": 1, "public_key": "k", "r_target": 1.4, "seq_len": 16}
PROOF = {"block_hash": "b", "block_height": 1, "public_key": "k", "nonces": [1], "dist": [1.3]}
V2_JOB = {"block_hash": "b", "block_height": 1, "public_key": "k", "node_id": 0, "node_count": 1,
          "params": {"model": STAND_IN_MODEL, "seq_len": 16}, "nonces": [1], "wait": True}
COMPLETION = {"model": STAND_IN_MODEL, "prompt": "hi"}
# One body of each API, with the path a bad value goes into.
ROUTES = [(f"{V1}/validate", PROOF), (f"{V2}/generate", V2_JOB), ("/v1/completions", COMPLETION)]


def with_raw(body: dict, key: str, literal: str) -> str:
    """``body`` as JSON with ``key``'s value written as ``literal``, which json.dumps cannot write."""
    return json.dumps({**body, key: "@@"}).replace('"@@"', literal)


@pytest.mark.parametrize("path,body", ROUTES)
def test_the_good_bodies_pass(node_url, path, body):
    """The bodies the bad cases below are made from are served (so a 4xx below is the bad value's)."""
    if path == f"{V1}/validate":
        assert httpx.post(f"{node_url}{V1}/init/validate", json=V1_INIT, timeout=60).status_code == 200
    response = httpx.post(node_url + path, json=body, timeout=60)
    httpx.post(f"{node_url}{V1}/stop", timeout=60)  # a validating round would hold inference back
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path,body", ROUTES)
def test_body_over_the_size_limit_is_413(node_url, path, body):
    """Refused by its Content-Length, and by its size when sent in chunks without one."""
    padding = " " * (MAX_BODY_BYTES + 1 - len(json.dumps(body)))
    big = json.dumps(body) + padding
    refused(post(node_url, path, big), 413, str(MAX_BODY_BYTES))
    chunk = 1 << 20
    chunks = (big[i:i + chunk].encode() for i in range(0, len(big), chunk))
    refused(post(node_url, path, chunks), 413, str(MAX_BODY_BYTES))


@pytest.mark.parametrize("path,body,key", [(f"{V1}/validate", PROOF, "block_height"),
                                           (f"{V1}/validate", PROOF, "nonces"),
                                           (f"{V2}/generate", V2_JOB, "nonces"),
                                           (f"{V2}/generate", V2_JOB, "node_id")])
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1])
def test_integers_beyond_int64_are_refused(node_url, path, body, key, value):
    """The PoC APIs' models bound every integer (the OpenAI routes' bodies are vLLM's to check)."""
    value = [value] if isinstance(body.get(key), list) else value
    refused(httpx.post(node_url + path, json={**body, key: value}, timeout=60), 422, key)


@pytest.mark.parametrize("path,body", ROUTES)
def test_an_integer_of_thousands_of_digits_is_refused(node_url, path, body):
    refused(post(node_url, path, with_raw(body, "seed", "9" * 5000)), 400, "digits")


@pytest.mark.parametrize("path,body", ROUTES[:2])
def test_negative_nonces_are_refused(node_url, path, body):
    refused(httpx.post(node_url + path, json={**body, "nonces": [-1]}, timeout=60), 422, "greater than or equal to 0")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize("path,body,key", [(f"{V1}/init/validate", V1_INIT, "r_target"),
                                           (f"{V1}/validate", PROOF, "dist"),
                                           (f"{V2}/generate", V2_JOB, "stat_test"),
                                           ("/v1/completions", COMPLETION, "temperature")])
def test_nan_and_infinity_are_refused(node_url, path, body, key, literal):
    """Python's parser takes these literals (and 1e400 as inf); JSON and the network do not."""
    value = {"dist": f"[{literal}]", "stat_test": f'{{"dist_threshold": {literal}}}'}.get(key, literal)
    refused(post(node_url, path, with_raw(body, key, value)), 400, literal.lstrip("-"))


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 900, 100_000])
@pytest.mark.parametrize("path,body", ROUTES)
def test_deep_nesting_is_refused(node_url, path, body, depth):
    """In a list field or an ignored key, just past the limit or deeper than Python's parser can go
    (where FastAPI answered a bare "There was an error parsing the body"): a 400 naming the limit."""
    key = "nonces" if "nonces" in body else "extra"
    refused(post(node_url, path, with_raw(body, key, "[" * depth + "]" * depth)), 400, f"deeper than {MAX_JSON_DEPTH}")


@pytest.mark.parametrize("path,body", ROUTES)
def test_nesting_up_to_the_limit_is_parsed(node_url, path, body):
    """The limit is the refusal's cause: one level less reaches the request models (a 422 there) or,
    on the OpenAI routes, the engine (vLLM's models; here the stand-in, which answers it)."""
    key = "nonces" if "nonces" in body else "prompt"
    response = post(node_url, path, with_raw(body, key, "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)))
    expected = (200,) if path.startswith("/v1/") else (400, 422)
    assert response.status_code in expected and "deeper" not in response.text, response.text[:300]


@pytest.mark.parametrize("path,body", ROUTES)
@pytest.mark.parametrize("raw,words", [
    (b'"\xff\xfe"', ("not UTF-8", "0xff")),
    ("\"\u00e9\"".encode("latin-1"), ("not UTF-8", "0xe9")),
    (None, ("not UTF-8", "NUL")),  # the whole body in UTF-16
    (b'"\\ud800"', ("lone surrogate",)),
])
def test_non_utf8_is_refused(node_url, path, body, raw, words):
    if raw is None:
        data = json.dumps(body).encode("utf-16-le")
    else:
        data = json.dumps({**body, "block_hash": "@@"}).encode().replace(b'"@@"', raw)
    refused(post(node_url, path, data), 400, *words)


def test_a_version_segment_keeps_the_poc_error_shape(node_url):
    """/v1/api/v1/pow/... is the PoC API behind a version segment, not the OpenAI API: the limits
    run on the path CallerHabitsMiddleware leaves."""
    response = post(node_url, f"/v1{V1}/init/validate", with_raw(V1_INIT, "r_target", "NaN"))
    assert response.status_code == 400
    assert response.json() == {"detail": "NaN is not a JSON number: send a finite number"}
