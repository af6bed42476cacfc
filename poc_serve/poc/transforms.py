"""The per-nonce computation of spec section 2, apart from the model's forward pass.

Everything here is pure torch and vectorised over a batch of nonces. Results must not depend on
which other nonces share a batch: the only cross-row operation, the projection GEMM, runs in
fixed-size row blocks so that every row always meets the same kernel and summation order.
"""

from __future__ import annotations

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


def input_embeddings(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    seq_len: int,
    hidden_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Input embeddings ``[B, seq_len, hidden_size]`` of a batch of nonces, cast to ``dtype``."""
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
