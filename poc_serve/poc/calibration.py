"""Closed-form calibration of ``r_target`` (spec section 2).

For independent uniformly random unit vectors in ``n`` dimensions, ``d^2 / 4`` follows
``Beta((n-1)/2, (n-1)/2)``, so the valid rate for a radius and the radius for a rate are the
regularised incomplete beta function and its inverse.
"""

from __future__ import annotations

from scipy.special import betainc, betaincinv

DEFAULT_DIM = 8192


def valid_probability(r_target: float, n: int = DEFAULT_DIM) -> float:
    """``P(distance < r_target)`` for random unit vectors in ``n`` dimensions."""
    if r_target <= 0:
        return 0.0
    if r_target >= 2:
        return 1.0
    a = (n - 1) / 2
    return float(betainc(a, a, r_target * r_target / 4))


def r_target_for(probability: float, n: int = DEFAULT_DIM) -> float:
    """The radius whose valid rate is ``probability`` in ``n`` dimensions."""
    a = (n - 1) / 2
    return float(2.0 * betaincinv(a, a, probability) ** 0.5)
