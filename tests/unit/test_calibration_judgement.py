"""Calibration in closed form and by Monte Carlo, ProofBatch judgement, the nonce sequence."""

import pytest
import torch

from poc_serve.poc import NonceSequence, judge, r_target_for, unit, valid_probability


def test_closed_form_calibration():
    assert r_target_for(0.10, 8192) == pytest.approx(1.40417, abs=5e-5)
    assert valid_probability(1.416, 8192) == pytest.approx(0.5905, abs=5e-5)
    assert valid_probability(r_target_for(0.3, 100), 100) == pytest.approx(0.3)


def test_monte_carlo_agrees_with_closed_form():
    gen = torch.Generator().manual_seed(0)
    n = 8192
    a = unit(torch.randn(20000, n, generator=gen))
    b = unit(torch.randn(n, generator=gen))
    d = (a - b).norm(dim=-1)
    r = r_target_for(0.10, n)
    assert (d < r).float().mean().item() == pytest.approx(0.10, abs=0.007)


@pytest.mark.parametrize("k,expected", [(0, 1.0), (1, 0.095), (2, 4.7e-3), (3, 1.5e-4),
                                        (4, 3.7e-6), (5, 7.3e-8), (6, 1.2e-9)])
def test_probability_honest(k, expected):
    received = [0.5] * 200
    recomputed = [2.0] * k + [0.5] * (200 - k)
    verdict = judge(received, recomputed, r_target=1.4, fraud_threshold=0.01)
    assert verdict.n_invalid == k
    assert verdict.probability_honest == pytest.approx(expected, rel=0.05)
    assert verdict.fraud_detected == (expected < 0.01)


def test_invalid_counts_either_list_and_empty_is_not_fraud():
    assert judge([1.5, 0.1], [0.1, 1.5], 1.4, 0.01).n_invalid == 2
    empty = judge([], [], 1.4, 0.01)
    assert (empty.n_invalid, empty.fraud_detected) == (0, False)
    with pytest.raises(ValueError):
        judge([0.1], [], 1.4, 0.01)


def test_nonce_sequence_and_put_back():
    seq = NonceSequence(node_id=2, node_count=5)
    a, b = seq.take(3), seq.take(2)
    assert a == [2, 7, 12] and b == [17, 22]
    seq.put_back(a)
    assert seq.take(4) == a
    assert seq.take(1) == [27]
    for bad in [(-1, 2), (2, 2), (0, 0)]:
        with pytest.raises(ValueError):
            NonceSequence(*bad)
