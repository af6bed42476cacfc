"""PoC v2 artifacts (poc-v2.md sections 1, 3 and 5), apart from the model's forward pass.

A nonce's artifact is a k-value binary16 vector derived from the final hidden state of its
sequence: normalise, pick k coordinates by hash scores, mix them with k-1 seeded Householder
reflections, normalise again. Validators recompute sampled artifacts and compare them with an L2
tolerance, then test the mismatch count against a binomial null. Everything here is pure torch
(plus numpy for the byte layout and scipy for the test), vectorised over a batch of nonces, and
row-wise: a nonce's artifact never depends on the other rows of its batch.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy.stats import binom

from poc_serve.poc.rng import hash32, normal_eager, seed_column, seed_from_string
from poc_serve.poc.transforms import EPS, reflect

DEFAULT_K_DIM = 12
# Added to ||w|| of a Haar vector (step 8): w has k >= 2 standard normals, so this only guards
# against an all-zero draw and never moves a value.
HAAR_EPS = 1e-30
# Validation defaults of a generate request's ``stat_test`` (section 4): right for same-machine
# tests only; the network sends its own dist_threshold and p_mismatch per model.
DEFAULT_DIST_THRESHOLD = 0.02
DEFAULT_P_MISMATCH = 0.001
DEFAULT_FRAUD_THRESHOLD = 0.01
_WIRE_DTYPE = np.dtype("<f2")


def pick_seed(block_hash: str, public_key: str, nonce: int, k: int) -> int:
    """Seed of a nonce's pick scores (step 6); ``k`` is part of the string."""
    return seed_from_string(f"{block_hash}_{public_key}_nonce_{nonce}_pick_{k}")


def haar_seeds(block_hash: str, public_key: str, nonce: int, k: int) -> list[int]:
    """Seeds of a nonce's ``k - 1`` Haar reflections (step 8), in the order they are applied."""
    return [seed_from_string(f"{block_hash}_{public_key}_nonce_{nonce}_haar_hh_{k}_{j}") for j in range(k - 1)]


def pick_scores(block_hash: str, public_key: str, nonces: Sequence[int], k: int, hidden_size: int,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``s_i = hash32(i, pick_seed)`` for ``i < hidden_size``: int64 ``[B, hidden_size]`` in ``[0, 2^32)``."""
    # seed_column: a plain .to(cuda) would wait for the forward still running on the GPU.
    seeds = seed_column([pick_seed(block_hash, public_key, n, k) for n in nonces], device)
    index = torch.arange(hidden_size, dtype=torch.int64, device=seeds.device).unsqueeze(0)
    return hash32(index, seeds)


def indices_from_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The network's pick order for uint32 ``scores`` held in int64 ``[B, H]``: int64 ``[B, k]``.

    With ``t`` the k-th smallest score of a row (counting repeats), the row's indices are those
    with ``s < t`` in ascending index order, then those with ``s == t`` in ascending index order,
    cut to k (what CUDA ``topk(-s, k, sorted=False)`` returns). No torch kernel's tie order is
    relied on: the key ``s * H + i`` is unique per row and orders by (score, index), so its k
    smallest entries are one well-defined set on every device; that set is then sorted by
    ``(s == t, i)``, again with unique keys.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, H], got shape {tuple(scores.shape)}")
    hidden = scores.shape[1]
    if not 1 <= k <= hidden:
        raise ValueError(f"k must be in [1, {hidden}], got {k}")
    if hidden >= 2**31:
        raise ValueError("hidden size too large for the int64 pick key")
    index = torch.arange(hidden, dtype=torch.int64, device=scores.device)
    key = scores.to(torch.int64) * hidden + index
    chosen = torch.topk(key, k, dim=-1, largest=False, sorted=False).values
    chosen_scores = torch.div(chosen, hidden, rounding_mode="floor")
    chosen_index = chosen - chosen_scores * hidden
    kth = chosen_scores.max(dim=-1, keepdim=True).values
    order_key = (chosen_scores == kth).to(torch.int64) * hidden + chosen_index
    return torch.sort(order_key, dim=-1).values.remainder(hidden)


def pick_indices_batch(block_hash: str, public_key: str, nonces: Sequence[int], k: int, hidden_size: int,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Step 6 for a batch of nonces: int64 ``[B, k]``, row ``b`` the picked coordinates of ``nonces[b]``."""
    return indices_from_scores(pick_scores(block_hash, public_key, nonces, k, hidden_size, device), k)


def pick_indices(block_hash: str, public_key: str, nonce: int, k: int, hidden_size: int,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Step 6 for one nonce: the ``k`` picked coordinates as int64 ``[k]``, in the network's order."""
    return pick_indices_batch(block_hash, public_key, [nonce], k, hidden_size, device)[0]


def haar_vectors(block_hash: str, public_key: str, nonces: Sequence[int], k: int,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Step 8's vectors ``w / (||w|| + 1e-30)``: float32 ``[B, k - 1, k]``, ``[b, j]`` applied j-th.

    Drawn with :func:`normal_eager`: k values per seed are too few to be worth a compiled kernel
    that would be rebuilt for every new batch size.
    """
    seeds = [s for n in nonces for s in haar_seeds(block_hash, public_key, n, k)]
    w = normal_eager(seeds, k, device).view(len(nonces), k - 1, k)
    return w / (torch.linalg.vector_norm(w, dim=-1, keepdim=True) + HAAR_EPS)


def nonce_artifacts(last_hidden: torch.Tensor, block_hash: str, public_key: str, nonces: Sequence[int],
                    k: int = DEFAULT_K_DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-9 of section 1 for a batch: binary16 artifacts ``[B, k]`` and a bool ``finite`` ``[B]``.

    ``last_hidden`` is the float32 (or model-dtype) final-norm hidden state ``[B, H]`` at the last
    position; row ``b`` belongs to ``nonces[b]``. All work is float32 on ``last_hidden``'s device.
    ``finite[b]`` is False when row ``b`` had a NaN or Inf at step 4 or in its binary16 output
    (section 3): such a row must never be sent, and its values are left as computed (NaN) so that
    :func:`encode_artifact` refuses them should a caller forget the flag.
    """
    if last_hidden.dim() != 2:
        raise ValueError(f"last_hidden must be [B, H], got shape {tuple(last_hidden.shape)}")
    batch, hidden = last_hidden.shape
    if len(nonces) != batch:
        raise ValueError(f"{len(nonces)} nonces for {batch} rows")
    if not 1 <= k <= hidden:
        raise ValueError(f"k must be in [1, {hidden}], got {k}")
    device = last_hidden.device
    x = last_hidden.float()
    finite = torch.isfinite(x).all(dim=-1)
    x = x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + EPS)
    idx = pick_indices_batch(block_hash, public_key, nonces, k, hidden, device)
    y = torch.gather(x, 1, idx)
    if k > 1 and batch:
        vs = haar_vectors(block_hash, public_key, nonces, k, device)
        for j in range(k - 1):
            y = reflect(y, vs[:, j])
    y = y / (torch.linalg.vector_norm(y, dim=-1, keepdim=True) + EPS)
    artifacts = y.to(torch.float16)
    finite &= torch.isfinite(artifacts).all(dim=-1)
    return artifacts, finite


def encode_artifact(vec: torch.Tensor) -> str:
    """Wire form ``vector_b64`` (step 10): standard base64 of the little-endian binary16 values.

    Refuses anything but a finite 1-D float16 tensor: a NaN or Inf on the wire costs the whole
    participant its weight (section 3), and a silent cast would round a second time.
    """
    if vec.dim() != 1 or vec.dtype != torch.float16:
        raise ValueError(f"an artifact is a 1-D float16 tensor, got {vec.dtype} shape {tuple(vec.shape)}")
    if not bool(torch.isfinite(vec).all()):
        raise ValueError("refusing to encode a non-finite artifact")
    raw = vec.detach().cpu().numpy().astype(_WIRE_DTYPE, copy=False).tobytes()
    return base64.b64encode(raw).decode("ascii")


def encode_artifacts(artifacts: torch.Tensor) -> list[str]:
    """:func:`encode_artifact` of every row of a float16 ``[B, k]`` tensor (one device copy)."""
    host = artifacts.detach().cpu()
    return [encode_artifact(row) for row in host]


def decode_artifact(text: object, k: int) -> torch.Tensor | None:
    """A received ``vector_b64`` as float32 ``[k]``, or None when it is not strict standard base64
    of exactly ``2k`` bytes (section 5 counts such a vector as a mismatch).

    Strict means the RFC 4648 alphabet with ``+/`` and ``=`` padding and nothing else (no
    whitespace, no URL-safe characters). Non-finite values are returned as they are; judging
    them is :func:`judge_artifacts`'s job.
    """
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 2 * k:
        return None
    values = np.frombuffer(raw, dtype=_WIRE_DTYPE).astype(np.float32)
    return torch.from_numpy(values)


def artifact_rows(artifacts: torch.Tensor, finite: torch.Tensor) -> list[torch.Tensor | None]:
    """:func:`nonce_artifacts`' output as :func:`judge_artifacts` takes it: float32 CPU rows, None
    where the recomputation was non-finite."""
    host = artifacts.detach().cpu().float()
    flags = finite.detach().cpu().tolist()
    return [row if ok else None for row, ok in zip(host, flags)]


@dataclass(frozen=True)
class ArtifactVerdict:
    """Outcome of validating a participant's sampled artifacts (section 5)."""

    n_total: int
    n_mismatch: int
    mismatch_nonces: list[int] = field(default_factory=list)
    p_value: float = 1.0
    fraud_detected: bool = False
    fraud_threshold: float = DEFAULT_FRAUD_THRESHOLD
    # Nonces whose recomputed artifact was non-finite: not compared (section 3, "Ours").
    skipped_nonces: list[int] = field(default_factory=list)


def mismatch_p_value(n_mismatch: int, n_total: int, p_mismatch: float) -> float:
    """``P(X >= n_mismatch)`` for ``X ~ Binomial(n_total, p_mismatch)``; 1.0 when ``n_total`` is 0.

    The exact one-sided test of the network, ``binom.sf(n_mismatch - 1, n_total, p_mismatch)``.
    """
    if n_total <= 0:
        return 1.0
    return float(binom.sf(n_mismatch - 1, n_total, p_mismatch))


def is_mismatch(computed: torch.Tensor, received: torch.Tensor | None, k: int, dist_threshold: float) -> bool:
    """Section 5 step 2 for one nonce with a finite recomputation ``computed`` (float32 ``[k]``).

    A mismatch when the received vector is missing (undecodable), does not have exactly ``k``
    values, has a NaN or Inf, or lies strictly farther than ``dist_threshold`` in float32 L2.
    """
    if received is None or received.shape != (k,):
        return True
    received = received.float()
    if not bool(torch.isfinite(received).all()):
        return True
    dist = torch.linalg.vector_norm(computed.float().cpu() - received.cpu())
    return float(dist) > dist_threshold


def judge_artifacts(
    nonces: Sequence[int],
    computed: Sequence[torch.Tensor | None],
    received: Sequence[str],
    k: int,
    dist_threshold: float = DEFAULT_DIST_THRESHOLD,
    p_mismatch: float = DEFAULT_P_MISMATCH,
    fraud_threshold: float = DEFAULT_FRAUD_THRESHOLD,
) -> ArtifactVerdict:
    """Judge received ``vector_b64`` strings against our recomputed artifacts (section 5).

    ``computed[b]`` is nonce ``nonces[b]``'s recomputed artifact decoded to float32 ``[k]`` (see
    :func:`artifact_rows`), or None when the recomputation was non-finite; ``received[b]`` is the
    participant's ``vector_b64`` for the same nonce. Lists keep request order.
    """
    if not len(nonces) == len(computed) == len(received):
        raise ValueError(
            f"nonces ({len(nonces)}), computed ({len(computed)}) and received ({len(received)}) differ in length"
        )
    mismatch_nonces: list[int] = []
    skipped_nonces: list[int] = []
    for nonce, ours, theirs in zip(nonces, computed, received):
        if ours is None or not bool(torch.isfinite(ours).all()):
            skipped_nonces.append(nonce)
            continue
        if ours.shape != (k,):
            raise ValueError(f"computed artifact of nonce {nonce} has shape {tuple(ours.shape)}, expected ({k},)")
        if is_mismatch(ours, decode_artifact(theirs, k), k, dist_threshold):
            mismatch_nonces.append(nonce)
    # Skipped nonces stay in n_total: section 5 step 3 defines n_total = len(nonces) with no
    # exception, and section 3 says upstream skips such a nonce silently, i.e. reports it as not
    # mismatched. Our vote must agree with the other validators', and the DAPI turns n_total into
    # the participant's weight; a non-finite recomputation is our own failure, not evidence
    # against the participant. So a skip counts as "not a mismatch" and is listed instead.
    n_total = len(nonces)
    n_mismatch = len(mismatch_nonces)
    p_value = mismatch_p_value(n_mismatch, n_total, p_mismatch)
    return ArtifactVerdict(
        n_total=n_total,
        n_mismatch=n_mismatch,
        mismatch_nonces=mismatch_nonces,
        p_value=p_value,
        fraud_detected=p_value < fraud_threshold,
        fraud_threshold=fraud_threshold,
        skipped_nonces=skipped_nonces,
    )
