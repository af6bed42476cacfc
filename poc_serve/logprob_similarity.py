"""The network's inference validation comparison (spec ``ml-node.md`` section 5.5).

A validator replays an executor's answer with ``enforced_tokens`` on its own node and compares the
two answers' ``choices[0].logprobs.content`` lists (OpenAI chat shape: items
``{"token", "logprob", "top_logprobs": [{"token", "logprob"}, ...]}``):

1. the validator's answer shorter than the executor's: invalid (similarity 0);
2. a ``token`` that differs at any position of the executor's answer: invalid (similarity 0);
3. otherwise, for every position ``i`` of the executor's answer and every token ``t`` of the
   validator's ``top_logprobs`` there, with ``v`` the validator's logprob of ``t`` and ``o`` the
   executor's (``top_logprobs`` at ``i``), the term is ``|v - o| / (1e-6 + |v| + |o|) / 2``.
   If the executor does not list ``t``, ``o`` is extrapolated below its two lowest logprobs
   ``l1 <= l2``: ``o = l1 - (l2 - l1)`` (with a single listed logprob, ``l2 = l1 - 100`` as the
   network's code has it). A non-finite ``v`` or ``o`` scores the largest term, 0.5;
4. ``similarity = 1 - sum(terms) / (max(100, n) * k)``, ``n`` the executor's positions and ``k``
   the number of ``top_logprobs`` at its first position; clamped at 0.

A pass needs ``similarity > threshold`` (:data:`THRESHOLDS`, the network's per-model values;
:data:`DEFAULT_THRESHOLD` for models it does not list). Note that ``max(100, n)`` makes short
answers score high: a 10-token answer can lose at most ``10 * 0.5 / 100 = 0.05``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

# The network's similarity thresholds (pass: similarity > threshold; spec 5.5, DAPI v0.2.14).
THRESHOLDS: dict[str, float] = {
    "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8": 0.940,
    "moonshotai/Kimi-K2.6": 0.900,
    "MiniMaxAI/MiniMax-M2.7": 0.922,
}
DEFAULT_THRESHOLD = 0.940  # the Qwen3-235B value, used here for models the table lacks
MAX_TERM = 0.5  # a term's supremum; a non-finite logprob scores it
MIN_POSITIONS = 100


def _position_distance(original_top: Sequence[dict[str, Any]], validation_top: Sequence[dict[str, Any]]) -> float:
    """Sum of the terms of one position (step 3)."""
    executor = {t["token"]: float(t["logprob"]) for t in original_top}
    lowest = sorted(executor.values())
    if len(lowest) >= 2:
        l1, l2 = lowest[0], lowest[1]
    elif lowest:
        l1, l2 = lowest[0], lowest[0] - 100.0
    else:
        l1 = l2 = 0.0
    missing = l1 - (l2 - l1)
    total = 0.0
    for top in validation_top:
        v = float(top["logprob"])
        o = executor.get(top["token"], missing)
        if not (math.isfinite(v) and math.isfinite(o)):
            total += MAX_TERM
            continue
        total += abs(v - o) / (1e-6 + abs(v) + abs(o)) / 2.0
    return total


def logprob_similarity(original: Sequence[dict[str, Any]], validation: Sequence[dict[str, Any]]) -> float:
    """The network's similarity of a validator's ``logprobs.content`` (``validation``) to the
    executor's (``original``): 0 for a shorter answer or a different token, else
    ``1 - sum(terms) / (max(100, n) * k)`` (module docstring). An empty ``original`` gives 1."""
    if len(validation) < len(original):
        return 0.0
    if any(o["token"] != v["token"] for o, v in zip(original, validation)):
        return 0.0
    if not original:
        return 1.0
    distance = sum(_position_distance(o.get("top_logprobs") or (), v.get("top_logprobs") or ())
                   for o, v in zip(original, validation))
    k = len(original[0].get("top_logprobs") or ()) or 1
    return max(0.0, 1.0 - distance / (max(MIN_POSITIONS, len(original)) * k))


def passes(similarity: float, model: str | None = None) -> bool:
    """Whether ``similarity`` passes the network's threshold for ``model``."""
    return similarity > THRESHOLDS.get(model or "", DEFAULT_THRESHOLD)
