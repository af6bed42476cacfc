"""PoC v2 artifact maths (poc-v2.md sections 1, 2, 3 and 5): goldens, pick order, wire form, verdicts."""

import base64
import math
import random

import numpy as np
import pytest
import torch
from scipy.stats import binom

from poc_serve.poc import artifacts as art
from poc_serve.poc import (
    ArtifactVerdict,
    artifact_rows,
    decode_artifact,
    encode_artifact,
    encode_artifacts,
    haar_seeds,
    hash32_scalar,
    indices_from_scores,
    input_embeddings,
    judge_artifacts,
    layer_householder,
    layer_reflection,
    layer_transform,
    mismatch_p_value,
    nonce_artifacts,
    normal,
    pick_indices,
    pick_indices_batch,
    pick_seed,
    seed_from_string,
    stronger_input_seeds,
)

BH, PK, N, K = "golden_bh", "golden_pk", 7, 12
GOLDEN_IDX = [107, 156, 246, 343, 467, 533, 539, 651, 716, 792, 897, 69]
GOLDEN_ARTIFACT = [
    0.090087890625, -0.0057830810546875, 0.50537109375, 0.393798828125, 0.1376953125, -0.048828125,
    0.08709716796875, -0.5810546875, -0.353759765625, -0.1156005859375, -0.276123046875, -0.0203094482421875,
]
GOLDEN_HEX = "c42dec9d0b384d36683040aa932da6b8a9b566af6bb433a5"
GOLDEN_B64 = "xC3snQs4TTZoMECqky2muKm1Zq9rtDOl"


def golden_x() -> torch.Tensor:
    return normal([seed_from_string("golden_v2_x")], 1024)[0]


def reference_pick(scores: list[int], k: int) -> list[int]:
    """Section 1 step 6 read literally, one row in plain Python."""
    t = sorted(scores)[k - 1]
    below = [i for i, s in enumerate(scores) if s < t]
    equal = [i for i, s in enumerate(scores) if s == t]
    return (below + equal)[:k]


def f16_ulp(values) -> np.ndarray:
    return np.spacing(np.abs(np.asarray(values, dtype=np.float16))).astype(np.float64)


def b64_of_f16(values) -> str:
    """Wire form built without encode_artifact (which refuses NaN/Inf): for hostile inputs."""
    return base64.b64encode(np.asarray(values, dtype="<f2").tobytes()).decode("ascii")


# ---- section 1 golden -------------------------------------------------------------------------


def test_golden_x():
    x = golden_x()
    assert x.dtype == torch.float32
    assert x.norm().item() == pytest.approx(32.892612, abs=2e-5)
    # Float32 values of the numpy reference; last-bit differences are allowed (poc-protocol §1).
    expect = torch.tensor([-1.197486, -0.4818029, -1.6086134, -0.08391073])
    assert torch.allclose(x[:4], expect, rtol=0, atol=3e-7)


def test_golden_seeds():
    assert pick_seed(BH, PK, N, K) == 3114030411
    assert seed_from_string("golden_bh_golden_pk_nonce_7_pick_12") == 3114030411
    seeds = haar_seeds(BH, PK, N, K)
    assert len(seeds) == K - 1
    assert seeds[0] == 348124269
    assert seeds[-1] == seed_from_string("golden_bh_golden_pk_nonce_7_haar_hh_12_10")
    assert seed_from_string("golden_bh_layer_0_householder") == 4241808197


def test_golden_pick_indices_exact():
    idx = pick_indices(BH, PK, N, K, 1024)
    assert idx.dtype == torch.int64
    assert idx.tolist() == GOLDEN_IDX
    scores = [hash32_scalar(i, 3114030411) for i in range(1024)]
    assert idx.tolist() == reference_pick(scores, K)
    # 69 holds the 12th-smallest score; ascending-score order (CPU topk's) would differ.
    assert max(scores[i] for i in GOLDEN_IDX) == scores[69]
    assert sorted(GOLDEN_IDX, key=lambda i: scores[i]) != GOLDEN_IDX


def test_golden_artifact_within_two_ulps():
    out, finite = nonce_artifacts(golden_x()[None], BH, PK, [N], K)
    assert out.shape == (1, K) and out.dtype == torch.float16
    assert finite.tolist() == [True]
    got = out[0].double().numpy()
    assert np.all(np.abs(got - np.array(GOLDEN_ARTIFACT)) <= 2 * f16_ulp(GOLDEN_ARTIFACT))


def test_golden_artifact_bytes_and_b64_exact():
    # The contract allows 2 binary16 ulps across implementations; our float32 torch pipeline on
    # CPU reproduces the numpy golden bit for bit, so the wire form is compared exactly here.
    out, _ = nonce_artifacts(golden_x()[None], BH, PK, [N], K)
    assert out[0].numpy().astype("<f2").tobytes().hex() == GOLDEN_HEX
    text = encode_artifact(out[0])
    assert text == GOLDEN_B64 and len(text) == 32
    assert base64.b64decode(text).hex() == GOLDEN_HEX


def test_golden_artifact_steps_written_out():
    """Steps 5-9 one by one in float64 agree with the batched float32 code (and the golden)."""
    x = golden_x().double()
    x = x / (x.norm() + 1e-8)
    y = x[GOLDEN_IDX]
    for seed in haar_seeds(BH, PK, N, K):
        w = normal([seed], K)[0].double()
        v = w / (w.norm() + 1e-30)
        y = y - 2 * (y @ v) * v
    y = y / (y.norm() + 1e-8)
    assert np.all(np.abs(y.numpy() - np.array(GOLDEN_ARTIFACT)) <= 2 * f16_ulp(GOLDEN_ARTIFACT))


# ---- section 1 step 2: layer reflections ------------------------------------------------------


def test_layer_householder_is_the_v2_vector():
    v = layer_householder(BH, 0, 64)
    w = normal([4241808197], 64)[0]
    assert torch.equal(v, w / torch.linalg.vector_norm(w))  # unit without eps
    assert torch.equal(layer_householder(BH, 3, 64), layer_householder("golden_bh", 3, 64))
    assert not torch.equal(layer_householder(BH, 3, 64), v)


def test_layer_reflection_in_activation_dtype_without_normalisation():
    t = 40 * torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    v = layer_householder(BH, 2, 64)
    out = layer_reflection(t, v)
    assert out.dtype == torch.bfloat16 and out.shape == t.shape
    vb = v.to(torch.bfloat16)
    assert torch.equal(out, t - 2 * (t * vb).sum(dim=-1, keepdim=True) * vb)
    # A reflection keeps the norm (v1's layer_transform would scale every token to 1).
    assert torch.allclose(out.float().norm(dim=-1), t.float().norm(dim=-1), rtol=2e-2)
    assert not torch.allclose(out.float(), layer_transform(t, v).float(), atol=1.0)
    t32 = t.float()
    assert torch.allclose(layer_reflection(layer_reflection(t32, v), v), t32, atol=1e-3)


# ---- section 2: stronger RNG ------------------------------------------------------------------


def test_stronger_rng_golden():
    q = stronger_input_seeds(BH, PK, N)
    assert q == [264837108, 2827391993, 2175791845, 3502577479, 1622287497, 1593317944, 1888829151, 2731549586]
    flat = input_embeddings(BH, PK, [N], 4, 8, stronger_rng=True)[0].reshape(-1)
    expect = torch.tensor([-0.19120122, -0.33614808, 0.82982719, 0.14700386, -0.57238120, 1.34304619])
    assert torch.allclose(flat[:6], expect, rtol=0, atol=3e-7)
    # S*H = 32: eight segments of g = 4, each its own normal(q_j, 4).
    assert torch.equal(flat, torch.cat([normal([s], 4)[0] for s in q]))


def test_stronger_rng_short_last_segment_has_its_own_layout():
    # N = 25: g = 4, segments 0..5 have 4 values, segment 6 has 1, segment 7 is unused.
    q = stronger_input_seeds("bh", "pk", 3)
    flat = input_embeddings("bh", "pk", [3], 5, 5, stronger_rng=True)[0].reshape(-1)
    expect = torch.cat([normal([s], 4)[0] for s in q[:6]] + [normal([q[6]], 1)[0]])
    assert torch.equal(flat, expect)
    assert normal([q[6]], 1)[0, 0] != normal([q[6]], 4)[0, 0]  # so cutting a full segment would fail


def test_stronger_rng_batch_dtype_and_default_path():
    batch = input_embeddings("bh", "pk", [5, 6, 7], 3, 16, stronger_rng=True)
    assert batch.shape == (3, 3, 16)
    for b, n in enumerate([5, 6, 7]):
        assert torch.equal(batch[b], input_embeddings("bh", "pk", [n], 3, 16, stronger_rng=True)[0])
    bf = input_embeddings("bh", "pk", [5, 6, 7], 3, 16, dtype=torch.bfloat16, stronger_rng=True)
    assert torch.equal(bf, batch.to(torch.bfloat16))
    legacy = input_embeddings("bh", "pk", [5, 6, 7], 3, 16)
    assert torch.equal(legacy, input_embeddings("bh", "pk", [5, 6, 7], 3, 16, stronger_rng=False))
    assert torch.equal(legacy[1].reshape(-1), normal([seed_from_string("bh_pk_nonce6")], 48)[0])
    assert not torch.allclose(legacy, batch)


# ---- section 1 step 6: pick order -------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "k", "expect"),
    [
        ([5, 1, 5, 0, 5, 5, 2], 4, [1, 3, 6, 0]),  # ties at t: lowest index first, after s < t
        ([5, 1, 5, 0, 5, 5, 2], 5, [1, 3, 6, 0, 2]),
        ([9, 9, 9, 9], 3, [0, 1, 2]),  # all equal
        ([3, 2, 1, 0], 4, [1, 2, 3, 0]),  # k = H: s < t by index, then the max; not by score
        ([3, 2, 1, 0], 1, [3]),
        ([2**32 - 1, 2**32 - 2, 2**32 - 1, 0], 3, [1, 3, 0]),  # full uint32 range in int64
        ([2**32 - 1] * 3 + [7], 2, [3, 0]),
    ],
)
def test_pick_order_with_forced_ties(scores, k, expect):
    assert reference_pick(scores, k) == expect
    got = indices_from_scores(torch.tensor([scores], dtype=torch.int64), k)
    assert got.dtype == torch.int64 and got.tolist() == [expect]


def test_pick_order_random_rows_with_many_ties():
    gen = torch.Generator().manual_seed(5)
    for hidden, k, span in [(50, 12, 6), (300, 12, 40), (64, 64, 3), (1000, 1, 2), (97, 30, 2**32)]:
        scores = torch.randint(0, span, (40, hidden), generator=gen, dtype=torch.int64)
        got = indices_from_scores(scores, k).tolist()
        assert got == [reference_pick(row, k) for row in scores.tolist()]


def test_pick_indices_batch_equals_reference_and_single():
    nonces = [0, 1, 17, 123456, 2**31 - 1]
    batch = pick_indices_batch("bh", "pk", nonces, 12, 896)
    assert batch.shape == (5, 12)
    for b, n in enumerate(nonces):
        seed = seed_from_string(f"bh_pk_nonce_{n}_pick_12")
        assert batch[b].tolist() == reference_pick([hash32_scalar(i, seed) for i in range(896)], 12)
        assert torch.equal(pick_indices("bh", "pk", n, 12, 896), batch[b])
    # k is part of the seed: k = 11 picks a different set, not a prefix of k = 12.
    assert pick_indices("bh", "pk", 17, 11, 896).tolist() != batch[2, :11].tolist()


def test_pick_rejects_bad_k():
    with pytest.raises(ValueError):
        indices_from_scores(torch.zeros(1, 8, dtype=torch.int64), 9)
    with pytest.raises(ValueError):
        indices_from_scores(torch.zeros(1, 8, dtype=torch.int64), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pick_equals_cuda_topk_order():
    """Spec: CUDA ``topk(-s, k, sorted=False)`` is the network's order; ours must equal it there."""
    gen = torch.Generator().manual_seed(6)
    for rows, hidden, k, span in [(1, 1024, 12, 2**32), (700, 4096, 12, 2**32), (64, 896, 12, 50)]:
        scores = torch.randint(0, span, (rows, hidden), generator=gen, dtype=torch.int64).cuda()
        ours = indices_from_scores(scores, k)
        cuda = torch.topk(-scores, k, dim=-1, largest=True, sorted=False).indices
        assert torch.equal(ours, cuda)


# ---- section 1 steps 4-9 and section 3: batches and non-finite rows ----------------------------


def test_artifacts_batch_equals_single_and_are_unit():
    hidden = 3 * torch.randn(33, 256, generator=torch.Generator().manual_seed(7))
    nonces = list(range(1000, 1033))
    out, finite = nonce_artifacts(hidden, "bh", "pk", nonces, 12)
    assert out.shape == (33, 12) and out.dtype == torch.float16 and finite.all()
    assert torch.allclose(out.float().norm(dim=-1), torch.ones(33), atol=2e-3)
    for b in (0, 5, 32):
        alone, _ = nonce_artifacts(hidden[b:b + 1], "bh", "pk", nonces[b:b + 1], 12)
        diff = (alone[0].double() - out[b].double()).abs().numpy()
        assert np.all(diff <= 2 * f16_ulp(out[b].numpy()))
    # Rows are tied to their own nonce: swapping nonces changes the artifact.
    other, _ = nonce_artifacts(hidden[:1], "bh", "pk", [nonces[1]], 12)
    assert not torch.allclose(other[0].float(), out[0].float(), atol=1e-2)


def test_artifacts_other_k_and_model_dtype():
    hidden = torch.randn(4, 64, generator=torch.Generator().manual_seed(8))
    for k in (1, 2, 64):
        out, finite = nonce_artifacts(hidden, "bh", "pk", [1, 2, 3, 4], k)
        assert out.shape == (4, k) and finite.all()
    one, _ = nonce_artifacts(hidden, "bh", "pk", [1, 2, 3, 4], 1)
    assert torch.equal(one.abs(), torch.ones(4, 1, dtype=torch.float16))  # k = 1: +-1
    bf, _ = nonce_artifacts(hidden.to(torch.bfloat16), "bh", "pk", [1, 2, 3, 4], 12)
    f32, _ = nonce_artifacts(hidden.to(torch.bfloat16).float(), "bh", "pk", [1, 2, 3, 4], 12)
    assert torch.equal(bf, f32)  # a model-dtype input is upcast first
    with pytest.raises(ValueError):
        nonce_artifacts(hidden, "bh", "pk", [1, 2, 3], 12)
    with pytest.raises(ValueError):
        nonce_artifacts(hidden, "bh", "pk", [1, 2, 3, 4], 65)


def test_non_finite_rows_are_flagged_at_step_4():
    hidden = torch.randn(4, 64, generator=torch.Generator().manual_seed(9))
    hidden[1, 3] = float("nan")
    hidden[2, 60] = float("inf")
    hidden[3, 0] = float("-inf")
    out, finite = nonce_artifacts(hidden, "bh", "pk", [0, 1, 2, 3], 12)
    assert finite.tolist() == [True, False, False, False]
    alone, _ = nonce_artifacts(hidden[:1], "bh", "pk", [0], 12)
    assert torch.equal(alone[0], out[0])
    with pytest.raises(ValueError):
        encode_artifact(out[1])
    rows = artifact_rows(out, finite)
    assert rows[1] is None and rows[2] is None and rows[3] is None
    assert rows[0].dtype == torch.float32 and torch.equal(rows[0], out[0].float())


def test_non_finite_output_is_flagged_at_step_9(monkeypatch):
    real = art.haar_vectors

    def poisoned(block_hash, public_key, nonces, k, device=None):
        vs = real(block_hash, public_key, nonces, k, device)
        vs[1, 0, 0] = float("nan")
        return vs

    monkeypatch.setattr(art, "haar_vectors", poisoned)
    hidden = torch.randn(3, 64, generator=torch.Generator().manual_seed(10))
    out, finite = nonce_artifacts(hidden, "bh", "pk", [0, 1, 2], 12)
    assert finite.tolist() == [True, False, True]


def test_zero_hidden_state_is_finite():
    out, finite = nonce_artifacts(torch.zeros(1, 64), "bh", "pk", [0], 12)
    assert finite.tolist() == [True] and torch.equal(out, torch.zeros(1, 12, dtype=torch.float16))


# ---- section 1 step 10: wire form -------------------------------------------------------------


def test_encode_decode_round_trip():
    gen = torch.Generator().manual_seed(11)
    vecs = torch.randn(50, 12, generator=gen).to(torch.float16)
    texts = encode_artifacts(vecs)
    assert all(len(t) == 32 and "=" not in t for t in texts)
    for text, vec in zip(texts, vecs):
        assert text == encode_artifact(vec)
        back = decode_artifact(text, 12)
        assert back.dtype == torch.float32 and torch.equal(back, vec.float())


def test_wire_form_is_little_endian_standard_base64():
    assert encode_artifact(torch.tensor([1.0], dtype=torch.float16)) == "ADw="  # bytes 00 3c
    assert torch.equal(decode_artifact("ADw=", 1), torch.tensor([1.0]))
    assert torch.equal(decode_artifact(GOLDEN_B64, 12), torch.tensor(GOLDEN_ARTIFACT))


def test_encode_refuses_non_artifacts():
    for bad in (torch.zeros(12), torch.zeros(2, 12, dtype=torch.float16),
                torch.tensor([1.0, float("nan")], dtype=torch.float16),
                torch.tensor([float("inf")], dtype=torch.float16)):
        with pytest.raises(ValueError):
            encode_artifact(bad)


def test_decode_rejects_bad_input():
    # Find a vector whose base64 holds '+' and '/', to build its URL-safe spelling.
    rng = np.random.default_rng(12)
    while True:
        text = b64_of_f16(rng.standard_normal(12))
        if "+" in text and "/" in text:
            break
    assert decode_artifact(text, 12) is not None
    url_safe = text.replace("+", "-").replace("/", "_")
    for bad in ("not base64!", url_safe, GOLDEN_B64[:-4], GOLDEN_B64 + "AAAA", GOLDEN_B64[:-1],
                GOLDEN_B64[:16] + "\n" + GOLDEN_B64[16:], " " + GOLDEN_B64, "xC3snQs4TTZoMECqky2muKm1Zq9rtDÖl",
                "", None, 12, b64_of_f16([0.5] * 11), b64_of_f16([0.5] * 13)):
        assert decode_artifact(bad, 12) is None, bad
    assert decode_artifact(GOLDEN_B64, 11) is None
    nan = decode_artifact(b64_of_f16([float("nan")] + [0.0] * 11), 12)
    assert nan is not None and torch.isnan(nan[0])  # decodable; judged as a mismatch


# ---- section 5: validation --------------------------------------------------------------------


def _judge_case(n_total: int, n_bad: int, **kw) -> ArtifactVerdict:
    vec = torch.tensor(GOLDEN_ARTIFACT)
    far = b64_of_f16(-np.array(GOLDEN_ARTIFACT))
    received = [far] * n_bad + [GOLDEN_B64] * (n_total - n_bad)
    return judge_artifacts(list(range(n_total)), [vec] * n_total, received, 12, **kw)


def test_judge_all_match():
    v = _judge_case(5, 0)
    assert (v.n_total, v.n_mismatch, v.mismatch_nonces, v.p_value, v.fraud_detected) == (5, 0, [], 1.0, False)
    assert v.skipped_nonces == [] and v.fraud_threshold == 0.01


def test_judge_mismatch_rules():
    base = np.zeros(12)
    base[0] = 0.5
    computed = torch.tensor(base, dtype=torch.float32)
    moved = base.copy()
    moved[0] = 0.75  # L2 distance exactly 0.25
    cases = {
        10: b64_of_f16(base),
        11: b64_of_f16(moved),
        12: b64_of_f16(base[:11]),  # wrong length
        13: b64_of_f16(np.append(base, 0.0)),
        14: b64_of_f16(np.where(np.arange(12) == 3, np.nan, base)),  # non-finite received
        15: b64_of_f16(np.where(np.arange(12) == 3, np.inf, base)),
        16: "@@@not-base64@@@",
        17: b64_of_f16(base).replace("A", "-"),
    }
    nonces = list(cases)
    received = list(cases.values())
    at = judge_artifacts(nonces, [computed] * len(nonces), received, 12, dist_threshold=0.25)
    assert at.mismatch_nonces == [12, 13, 14, 15, 16, 17]  # 0.25 is not > 0.25
    below = judge_artifacts(nonces, [computed] * len(nonces), received, 12, dist_threshold=0.2499)
    assert below.mismatch_nonces == [11, 12, 13, 14, 15, 16, 17]
    # NaN/Inf are mismatches even where a distance test could not see them.
    huge = judge_artifacts(nonces, [computed] * len(nonces), received, 12, dist_threshold=math.inf)
    assert huge.mismatch_nonces == [12, 13, 14, 15, 16, 17]
    assert huge.n_total == 8 and huge.n_mismatch == 6


def test_judge_keeps_request_order_and_skips_non_finite_recomputation():
    vec = torch.tensor(GOLDEN_ARTIFACT)
    far = b64_of_f16(-np.array(GOLDEN_ARTIFACT))
    nonces = [40, 3, 17, 9, 25]
    computed = [vec, None, vec, torch.full((12,), float("nan")), vec]
    received = [far, far, GOLDEN_B64, GOLDEN_B64, far]
    v = judge_artifacts(nonces, computed, received, 12)
    assert v.mismatch_nonces == [40, 25]
    assert v.skipped_nonces == [3, 9]
    assert v.n_total == 5 and v.n_mismatch == 2  # skipped nonces count in n_total, not as mismatches
    assert v.p_value == pytest.approx(float(binom.sf(1, 5, 0.001)), rel=1e-12)


def test_judge_rejects_inconsistent_input():
    vec = torch.tensor(GOLDEN_ARTIFACT)
    with pytest.raises(ValueError):
        judge_artifacts([1, 2], [vec], [GOLDEN_B64], 12)
    with pytest.raises(ValueError):
        judge_artifacts([1], [vec[:11]], [GOLDEN_B64], 12)


def test_p_value_is_the_exact_binomial_tail():
    for n_total, n_bad, p in [(200, 31, 0.1), (200, 3, 0.001), (10, 0, 0.5), (7, 7, 0.3), (1, 1, 0.001)]:
        tail = sum(math.comb(n_total, i) * p**i * (1 - p) ** (n_total - i) for i in range(n_bad, n_total + 1))
        assert mismatch_p_value(n_bad, n_total, p) == pytest.approx(tail, rel=1e-9)
        assert mismatch_p_value(n_bad, n_total, p) == float(binom.sf(n_bad - 1, n_total, p))
    assert mismatch_p_value(0, 0, 0.1) == 1.0
    # fraud needs p_value strictly below the threshold: P(X >= 1) = 0.25 exactly here.
    vec = torch.tensor(GOLDEN_ARTIFACT)
    far = b64_of_f16(-np.array(GOLDEN_ARTIFACT))
    at = judge_artifacts([1], [vec], [far], 12, p_mismatch=0.25, fraud_threshold=0.25)
    assert at.p_value == 0.25 and not at.fraud_detected
    assert judge_artifacts([1], [vec], [far], 12, p_mismatch=0.25, fraud_threshold=0.2501).fraud_detected
    empty = judge_artifacts([], [], [], 12)
    assert (empty.n_total, empty.p_value, empty.fraud_detected) == (0, 1.0, False)


@pytest.mark.parametrize(
    ("n_total", "n_bad", "kw", "fraud"),
    [
        (200, 30, {"dist_threshold": 0.2, "p_mismatch": 0.1, "fraud_threshold": 0.01}, False),
        (200, 31, {"dist_threshold": 0.2, "p_mismatch": 0.1, "fraud_threshold": 0.01}, True),
        (200, 27, {"dist_threshold": 0.2, "p_mismatch": 0.1, "fraud_threshold": 0.05}, False),
        (200, 28, {"dist_threshold": 0.2, "p_mismatch": 0.1, "fraud_threshold": 0.05}, True),
        (200, 2, {}, False),
        (200, 3, {}, True),
        (10, 1, {}, True),
        (11, 1, {}, False),
    ],
)
def test_network_fraud_thresholds(n_total, n_bad, kw, fraud):
    v = _judge_case(n_total, n_bad, **kw)
    assert v.n_total == n_total and v.n_mismatch == n_bad
    assert v.fraud_detected is fraud
    assert v.fraud_threshold == kw.get("fraud_threshold", 0.01)


def test_judge_on_recomputed_batch_end_to_end():
    hidden = torch.randn(20, 128, generator=torch.Generator().manual_seed(13))
    nonces = list(range(20))
    out, finite = nonce_artifacts(hidden, "bh", "pk", nonces, 12)
    honest = encode_artifacts(out)
    noisy, _ = nonce_artifacts(hidden + 0.01 * torch.randn(20, 128, generator=torch.Generator().manual_seed(14)),
                               "bh", "pk", nonces, 12)
    cheat = encode_artifacts(noisy)
    random.Random(15).shuffle(cheat)
    rows = artifact_rows(out, finite)
    assert judge_artifacts(nonces, rows, honest, 12).n_mismatch == 0
    v = judge_artifacts(nonces, rows, cheat, 12)
    assert v.n_mismatch >= 18 and v.fraud_detected
