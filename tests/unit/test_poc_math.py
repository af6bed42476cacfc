"""Spec section 1 and 2 primitives: golden values, exact integers, layout, invariances."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poc_serve.poc import (
    hash32,
    hash32_scalar,
    householder_vectors,
    input_embeddings,
    layer_transform,
    nonce_distances,
    normal,
    reflect,
    seed_from_string,
    uniform,
)

U32 = st.integers(min_value=0, max_value=2**32 - 1)


def test_golden_values():
    seed = seed_from_string("abc_node1_nonce0")
    assert seed == 248400038
    got = hash32(torch.arange(4), torch.tensor(seed)).tolist()
    assert got == [361230795, 288975274, 2557206794, 1574691661]
    assert [hash32_scalar(i, seed) for i in range(4)] == got
    u = uniform([seed], 4)[0]
    assert u.dtype == torch.float32
    assert torch.allclose(u, torch.tensor([0.0841056, 0.0672823, 0.5953961, 0.3666365]), atol=5e-8)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(U32, U32), min_size=1, max_size=200))
def test_vectorised_hash_equals_scalar(pairs):
    pairs += [(0, 0), (2**32 - 1, 2**32 - 1), (0, 2**32 - 1), (2**32 - 1, 0)]
    idx = torch.tensor([p[0] for p in pairs])
    seed = torch.tensor([p[1] for p in pairs])
    assert hash32(idx, seed).tolist() == [hash32_scalar(i, s) for i, s in pairs]


def test_hash_many_pairs_against_scalar():
    gen = torch.Generator().manual_seed(7)
    idx = torch.randint(0, 2**32, (5000,), generator=gen, dtype=torch.int64)
    seed = torch.randint(0, 2**32, (5000,), generator=gen, dtype=torch.int64)
    got = hash32(idx, seed).tolist()
    assert got == [hash32_scalar(i, s) for i, s in zip(idx.tolist(), seed.tolist())]


@pytest.mark.parametrize("m", [1, 7, 8, 1001])
def test_normal_box_muller_layout(m):
    seed = 12345
    p = math.ceil(m / 2)
    u = uniform([seed], 2 * p)[0].double()
    u1, u2 = u[:p].clamp_min(1e-10), u[p:]
    r = torch.sqrt(-2 * torch.log(u1))
    expect = torch.cat([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)])[:m]
    got = normal([seed], m)[0]
    assert got.shape == (m,) and got.dtype == torch.float32
    assert torch.allclose(got.double(), expect, atol=1e-5)


def test_normal_statistics_and_rows():
    z = normal([1, 2, 3], 200_000)
    assert z.shape == (3, 200_000)
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1) < 0.01
    assert not torch.equal(z[0], z[1])
    assert torch.equal(normal([2], 200_000)[0], z[1])


def test_reflection_keeps_norm_and_is_involution():
    x = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    v = householder_vectors(["a", "b"], 64)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2))
    y = reflect(x, v[0])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(reflect(y, v[0]), x, atol=1e-5)
    assert not torch.allclose(y, x)


def test_layer_transform_gives_unit_rows_in_input_dtype():
    t = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    out = layer_transform(t, householder_vectors(["x"], 32)[0])
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float().norm(dim=-1), torch.ones(2, 5), atol=1e-2)


def test_input_embeddings_rows_are_nonce_normals():
    emb = input_embeddings("bh", "pk", [3, 9], seq_len=4, hidden_size=8)
    assert emb.shape == (2, 4, 8)
    assert torch.equal(emb[1].reshape(-1), normal([seed_from_string("bh_pk_nonce9")], 32)[0])
    bf = input_embeddings("bh", "pk", [3, 9], 4, 8, dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, emb.to(torch.bfloat16))


@pytest.mark.parametrize("randomization", ["sign_flips", "layer_hooks"])
def test_distance_is_batch_independent_and_bit_reproducible(randomization):
    hidden = torch.randn(65, 64, generator=torch.Generator().manual_seed(1))
    nonces = list(range(100, 165))
    batch = nonce_distances(hidden, "bh", "pk", nonces, randomization)
    alone = nonce_distances(hidden[7:8], "bh", "pk", nonces[7:8], randomization)
    assert torch.equal(batch[7:8], alone)
    again = nonce_distances(hidden, "bh", "pk", nonces, randomization)
    assert torch.equal(batch, again)
    assert ((batch >= 0) & (batch <= 2)).all()


def test_distance_depends_on_round_and_mode():
    hidden = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    nonces = list(range(16))
    base = nonce_distances(hidden, "bh", "pk", nonces)
    assert not torch.allclose(base, nonce_distances(hidden, "bh", "pk2", nonces))
    assert not torch.allclose(base, nonce_distances(hidden, "bh2", "pk", nonces))
    assert not torch.allclose(base, nonce_distances(hidden, "bh", "pk", nonces, "layer_hooks"))


def test_distance_matches_scalar_reading_of_spec():
    """Steps 3-8 written out one nonce at a time in float64 agree with the batched float32 code."""
    hidden_size, n = 32, 5
    x0 = torch.randn(hidden_size, generator=torch.Generator().manual_seed(3))
    got = nonce_distances(x0[None], "b", "k", [n])[0].item()
    signs = torch.where(uniform([seed_from_string(f"b_k_nonce_{n}_signs")], hidden_size)[0] > 0.5, 1.0, -1.0)
    x = (x0 * signs).double()
    x = x / (x.norm() + 1e-8)
    for r in range(8):
        v = normal([seed_from_string(f"b_k_nonce_{n}_hidden_r{r}")], hidden_size)[0].double()
        v = v / v.norm()
        x = x - 2 * (x @ v) * v
    w = 0.02 * normal([seed_from_string("b_lm_head")], 8192 * hidden_size)[0].double().view(8192, hidden_size)
    y = w @ x
    y = y / (y.norm() + 1e-8)
    t = normal([seed_from_string("b_target")], 8192)[0].double()
    t = t / t.norm()
    assert got == pytest.approx((y - t).norm().item(), abs=1e-5)
