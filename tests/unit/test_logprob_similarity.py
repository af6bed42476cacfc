"""The network's inference validation comparison (poc_serve/logprob_similarity.py, spec 5.5)."""

from __future__ import annotations

import math

import pytest

from poc_serve.logprob_similarity import DEFAULT_THRESHOLD, THRESHOLDS, logprob_similarity, passes

pytestmark = pytest.mark.unit


def position(token: str, tops: list[tuple[str, float]]) -> dict:
    return {"token": token, "logprob": dict(tops).get(token, tops[-1][1]),
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in tops]}


TOPS = [("9707", -0.5), ("13048", -1.5), ("21927", -2.0), ("2753", -3.0), ("40", -4.0)]


def answer(n: int, scale: float = 1.0) -> list[dict]:
    return [position("9707", [(t, lp * scale) for t, lp in TOPS]) for _ in range(n)]


def term(v: float, o: float) -> float:
    return abs(v - o) / (1e-6 + abs(v) + abs(o)) / 2


def test_identical_answers_score_one():
    assert logprob_similarity(answer(7), answer(7)) == pytest.approx(1.0)
    assert logprob_similarity([], []) == 1.0


def test_shorter_validation_or_other_token_is_invalid():
    assert logprob_similarity(answer(5), answer(4)) == 0.0
    other = answer(5)
    other[3] = position("13048", TOPS)
    assert logprob_similarity(answer(5), other) == 0.0
    # a longer validation (the replay's appended EOS) is compared over the executor's positions
    assert logprob_similarity(answer(5), answer(6)) == pytest.approx(1.0)


def test_scaled_logprobs_per_term_and_normalisation():
    # scaling by s makes every term (s - 1) / (s + 1) / 2; sum over n*k terms / (max(100, n) * k)
    for n in (10, 100, 250):
        sim = logprob_similarity(answer(n, 2.0), answer(n))
        assert sim == pytest.approx(1 - n * (1 / 3 / 2) / max(100, n), rel=1e-5)
    assert logprob_similarity(answer(150, 2.0), answer(150)) < THRESHOLDS["Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"]


def test_missing_executor_token_is_extrapolated_below_its_two_lowest():
    executor = [position("9707", TOPS[:4] + [("11", -4.0)])]  # lists "11" instead of "40"
    validator = [position("9707", TOPS)]
    extrapolated = -4.0 - (-3.0 - -4.0)  # lowest - (second lowest - lowest) = -5.0
    expected = 1 - term(-4.0, extrapolated) / (100 * 5)
    assert logprob_similarity(executor, validator) == pytest.approx(expected)
    # one listed logprob: the network's code takes the second lowest as lowest - 100
    single = [position("9707", [("9707", -0.5)])]
    two = [position("9707", [("9707", -0.5), ("13048", -1.5)])]
    assert logprob_similarity(single, two) == pytest.approx(1 - term(-1.5, -0.5 + 100) / 100)


def test_non_finite_logprob_scores_the_largest_term():
    executor = answer(1)
    executor[0]["top_logprobs"][1]["logprob"] = -math.inf
    assert logprob_similarity(executor, answer(1)) == pytest.approx(1 - 0.5 / (100 * 5))


def test_thresholds():
    assert THRESHOLDS["moonshotai/Kimi-K2.6"] == 0.900 and THRESHOLDS["MiniMaxAI/MiniMax-M2.7"] == 0.922
    assert passes(0.95, "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8")
    assert not passes(0.94, "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8")  # strictly above
    assert passes(0.91, "moonshotai/Kimi-K2.6") and not passes(DEFAULT_THRESHOLD, "unknown")
