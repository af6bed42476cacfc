"""Judgement of a ProofBatch (spec section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from scipy.stats import binom

# Rate at which an honest node's valid nonce may recompute above r_target (bf16 noise at the
# boundary); the spec fixes it.
HONEST_MISMATCH_RATE = 5e-4


@dataclass(frozen=True)
class Verdict:
    """Outcome of recomputing a ProofBatch."""

    n_invalid: int
    probability_honest: float
    fraud_detected: bool


def judge(received: Sequence[float], recomputed: Sequence[float], r_target: float, fraud_threshold: float) -> Verdict:
    """Count nonces at or beyond ``r_target`` in either list and test them against honest noise.

    ``probability_honest`` is ``P(X >= n_invalid)`` for ``X ~ Binomial(len, 5e-4)``; fraud is
    flagged when it falls below ``fraud_threshold``. An empty batch is never fraud.
    """
    if len(received) != len(recomputed):
        raise ValueError(f"received ({len(received)}) and recomputed ({len(recomputed)}) differ in length")
    n = len(received)
    n_invalid = sum(1 for a, b in zip(received, recomputed) if a >= r_target or b >= r_target)
    if n == 0:
        return Verdict(0, 1.0, False)
    p_honest = float(binom.sf(n_invalid - 1, n, HONEST_MISMATCH_RATE)) if n_invalid > 0 else 1.0
    return Verdict(n_invalid, p_honest, p_honest < fraud_threshold)
