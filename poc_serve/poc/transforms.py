"""The per-nonce computation of spec section 2, apart from the model's forward pass.

Everything here is pure torch and vectorised over a batch of nonces. Results must not depend on
which other nonces share a batch: the only cross-row operation, the projection GEMM, runs in
fixed-size row blocks so that every row always meets the same kernel and summation order.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Literal, Sequence

import torch

from poc_serve.poc.rng import normal, seed_from_string, uniform

Randomization = Literal["sign_flips", "layer_hooks"]
PROJECTION_DIM = 8192
HIDDEN_REFLECTIONS = 8
EPS = 1e-8
# Rows per block of the projection GEMM; the last block is zero-padded to this size.
_PROJECTION_BLOCK_ROWS = 64
_PROJECTION_CACHE_SIZE = 4


def unit(v: torch.Tensor) -> torch.Tensor:
    """Scale ``v`` to unit norm over its last axis."""
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def reflect(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Householder reflection ``x - 2 (x . v) v`` over the last axis (``v`` of unit norm)."""
    return x - 2.0 * (x * v).sum(dim=-1, keepdim=True) * v


def householder_vectors(names: Sequence[str], dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``unit(normal(seed_from_string(name), dim))`` for each name: float32 ``[len(names), dim]``."""
    return unit(normal([seed_from_string(n) for n in names], dim, device))


def nonce_input_seed(block_hash: str, public_key: str, nonce: int) -> int:
    """Seed of a nonce's input embeddings (no underscore between "nonce" and the number)."""
    return seed_from_string(f"{block_hash}_{public_key}_nonce{nonce}")


STRONGER_RNG_SEGMENTS = 8


def stronger_input_seeds(block_hash: str, public_key: str, nonce: int) -> list[int]:
    """The 8 sub-seeds of ``poc_stronger_rng`` (poc-v2.md section 2).

    SHA-256 of the same string as :func:`nonce_input_seed`, cut into 8 big-endian uint32 words:
    the legacy inputs of a nonce come from one 32-bit seed, so at most 2^32 distinct inputs exist;
    the stronger variant draws each eighth of the inputs from its own word.
    """
    digest = hashlib.sha256(f"{block_hash}_{public_key}_nonce{nonce}".encode("utf-8")).digest()
    return [int.from_bytes(digest[4 * j:4 * j + 4], "big") for j in range(STRONGER_RNG_SEGMENTS)]


def _stronger_normal(seed_rows: list[list[int]], total: int, device: torch.device | str | None) -> torch.Tensor:
    """``[B, total]`` float32: row ``b`` is the concatenation of segments ``normal(q_j, len_j)``.

    Segment ``j`` covers ``[j*g, min((j+1)*g, total))`` with ``g = ceil(total / 8)``. Each segment
    has its own Box-Muller layout, so a short last segment is drawn at its own length (not cut
    from a full one); the full segments of all rows are drawn in one call.
    """
    batch = len(seed_rows)
    g = math.ceil(total / STRONGER_RNG_SEGMENTS)
    n_full = total // g
    parts = []
    if n_full:
        full_seeds = [row[j] for row in seed_rows for j in range(n_full)]
        parts.append(normal(full_seeds, g, device).view(batch, n_full * g))
    rest = total - n_full * g
    if rest:
        parts.append(normal([row[n_full] for row in seed_rows], rest, device))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def input_embeddings(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    seq_len: int,
    hidden_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    stronger_rng: bool = False,
) -> torch.Tensor:
    """Input embeddings ``[B, seq_len, hidden_size]`` of a batch of nonces, cast to ``dtype``.

    With ``stronger_rng`` (the v2 request flag ``poc_stronger_rng``) the values come from the
    8 SHA-256 sub-seeds of :func:`stronger_input_seeds` instead of the one 32-bit seed.
    """
    if stronger_rng:
        rows = [stronger_input_seeds(block_hash, public_key, n) for n in nonces]
        z = _stronger_normal(rows, seq_len * hidden_size, device)
        return z.view(len(rows), seq_len, hidden_size).to(dtype)
    seeds = [nonce_input_seed(block_hash, public_key, n) for n in nonces]
    z = normal(seeds, seq_len * hidden_size, device)
    return z.view(len(seeds), seq_len, hidden_size).to(dtype)


def layer_householder(block_hash: str, layer_index: int, hidden_size: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """``v_i`` of the ``layer_hooks`` mode for global decoder layer ``layer_index``: ``[hidden_size]``."""
    return householder_vectors([f"{block_hash}_layer_{layer_index}_householder"], hidden_size, device)[0]


def layer_transform(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``reflect(t / (||t|| + 1e-8), v)`` per token, computed in float32 and returned in ``t.dtype``."""
    t32 = t.float()
    t32 = t32 / (torch.linalg.vector_norm(t32, dim=-1, keepdim=True) + EPS)
    return reflect(t32, v.float()).to(t.dtype)


def layer_reflection(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The PoC v2 per-layer map (poc-v2.md section 1 step 2): ``t - 2 (t . v) v`` per token.

    ``v`` is :func:`layer_householder` (float32, unit norm without eps). Unlike v1's
    :func:`layer_transform` there is no normalisation, and the network computes the dot and the
    update in the activation dtype, so ``v`` is cast to ``t.dtype`` and nothing is upcast.
    """
    return reflect(t, v.to(dtype=t.dtype, device=t.device))


class RoundProjection:
    """The block hash's ``[8192, H]`` projection and target, built once and reused for every batch."""

    def __init__(self, block_hash: str, hidden_size: int, device: torch.device | str | None = None):
        seed = seed_from_string(f"{block_hash}_lm_head")
        self.weight = (0.02 * normal([seed], PROJECTION_DIM * hidden_size, device)).view(PROJECTION_DIM, hidden_size)
        self.target = unit(normal([seed_from_string(f"{block_hash}_target")], PROJECTION_DIM, device))[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` in fixed row blocks, so a row's value never depends on its neighbours."""
        n = x.shape[0]
        padded = -(-n // _PROJECTION_BLOCK_ROWS) * _PROJECTION_BLOCK_ROWS
        xp = torch.zeros(padded, x.shape[1], dtype=x.dtype, device=x.device)
        xp[:n] = x
        blocks = [blk @ self.weight.T for blk in xp.split(_PROJECTION_BLOCK_ROWS)]
        return torch.cat(blocks)[:n]


_projection_cache: OrderedDict[tuple[str, int, str], RoundProjection] = OrderedDict()


def round_projection(block_hash: str, hidden_size: int, device: torch.device | str | None = None) -> RoundProjection:
    """Cached :class:`RoundProjection` per (block hash, hidden size, device); keeps the last few."""
    key = (block_hash, hidden_size, str(torch.device(device or "cpu")))
    proj = _projection_cache.get(key)
    if proj is None:
        proj = _projection_cache[key] = RoundProjection(block_hash, hidden_size, device)
        while len(_projection_cache) > _PROJECTION_CACHE_SIZE:
            _projection_cache.popitem(last=False)
    _projection_cache.move_to_end(key)
    return proj


def nonce_distances(
    last_hidden: torch.Tensor,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    randomization: Randomization = "sign_flips",
    return_vectors: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Distances ``[B]`` (float32) from the final-norm hidden states ``[B, H]`` at the last position.

    Applies steps 3-8 of spec section 2. With ``return_vectors`` also returns the normalised
    projections ``y`` of shape ``[B, 8192]``.
    """
    device = last_hidden.device
    batch, hidden = last_hidden.shape
    x = last_hidden.float()
    if randomization == "sign_flips":
        sign_seeds = [seed_from_string(f"{block_hash}_{public_key}_nonce_{n}_signs") for n in nonces]
        signs = torch.where(uniform(sign_seeds, hidden, device) > 0.5, 1.0, -1.0)
        x = x * signs
    x = x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + EPS)
    names = [f"{block_hash}_{public_key}_nonce_{n}_hidden_r{r}" for n in nonces for r in range(HIDDEN_REFLECTIONS)]
    vs = householder_vectors(names, hidden, device).view(batch, HIDDEN_REFLECTIONS, hidden)
    for r in range(HIDDEN_REFLECTIONS):
        x = reflect(x, vs[:, r])
    proj = round_projection(block_hash, hidden, device)
    y = proj.project(x)
    y = y / (torch.linalg.vector_norm(y, dim=-1, keepdim=True) + EPS)
    dist = torch.linalg.vector_norm(y - proj.target, dim=-1)
    return (dist, y) if return_vectors else dist
