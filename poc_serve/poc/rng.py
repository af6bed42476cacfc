"""Deterministic random numbers of the PoC protocol (spec section 1).

Every node and validator must derive bit-identical integers from the same strings, so the hash is
spelled out here instead of taken from a library (``mmh3`` adds a length XOR that the protocol
omits). The tensor functions are vectorised over a batch of seeds: row ``b`` of the result uses
``seeds[b]``. Integer work runs in int64 with a 32-bit mask so it is exact on every torch device.
"""

from __future__ import annotations

import hashlib
import math

import torch

MASK32 = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_FMIX1 = 0x85EBCA6B
_FMIX2 = 0xC2B2AE35
_TWO_POW_32 = 4294967296.0


def seed_from_string(text: str) -> int:
    """Return the first 4 bytes of SHA-256(UTF-8 ``text``) as a big-endian unsigned 32-bit int."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")


def _rotl32_scalar(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & MASK32


def hash32_scalar(index: int, seed: int) -> int:
    """Plain-Python reference of :func:`hash32` for one ``(index, seed)`` pair."""
    k = (index * _C1) & MASK32
    k = _rotl32_scalar(k, 15)
    k = (k * _C2) & MASK32
    h = seed ^ k
    h = _rotl32_scalar(h, 13)
    h = (h * 5 + 0xE6546B64) & MASK32
    h ^= h >> 16
    h = (h * _FMIX1) & MASK32
    h ^= h >> 13
    h = (h * _FMIX2) & MASK32
    h ^= h >> 16
    return h


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # Split the constant into 16-bit halves so that no int64 product overflows:
    # x < 2^32 and each half < 2^16 keep every partial product below 2^48.
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def _rotl32(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) & MASK32) | (x >> (32 - r))


def hash32(index: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """MurmurHash3-x86-32 of one 4-byte block without the length XOR, elementwise.

    ``index`` and ``seed`` are int64 tensors holding values in ``[0, 2^32)``; they broadcast
    against each other. Returns int64 values in ``[0, 2^32)``.
    """
    k = _mul32(index & MASK32, _C1)
    k = _rotl32(k, 15)
    k = _mul32(k, _C2)
    h = seed ^ k
    h = _rotl32(h, 13)
    h = (_mul32(h, 5) + 0xE6546B64) & MASK32
    h = h ^ (h >> 16)
    h = _mul32(h, _FMIX1)
    h = h ^ (h >> 13)
    h = _mul32(h, _FMIX2)
    return h ^ (h >> 16)


def seed_column(seeds: torch.Tensor | list[int], device: torch.device | str | None) -> torch.Tensor:
    """Seeds as an int64 column ``[B, 1]`` on ``device``, copied without a host sync on CUDA."""
    host = torch.as_tensor(seeds, dtype=torch.int64)
    if device is not None and torch.device(device).type == "cuda" and host.device.type == "cpu":
        # A copy from pageable memory blocks the host until the GPU has finished everything queued
        # before it: once per forward, that idled an H100 for 20 ms per 1024 nonces while Python
        # hashed the next seeds. From pinned memory the copy is queued like a kernel.
        return host.pin_memory().to(device, non_blocking=True).reshape(-1, 1)
    return host.to(device).reshape(-1, 1)


def uniform(seeds: torch.Tensor | list[int], m: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``float32(hash32(i, seed)) / 2^32`` for ``i < m``: a float32 tensor of shape ``[B, m]``."""
    seed_col = seed_column(seeds, device)
    index = torch.arange(m, dtype=torch.int64, device=seed_col.device).unsqueeze(0)
    return hash32(index, seed_col).to(torch.float32) / _TWO_POW_32


def _box_muller(seed_col: torch.Tensor, m: int) -> torch.Tensor:
    p = math.ceil(m / 2)
    index = torch.arange(2 * p, dtype=torch.int64, device=seed_col.device).unsqueeze(0)
    u = hash32(index, seed_col).to(torch.float32) / _TWO_POW_32
    u1 = torch.clamp_min(u[:, :p], 1e-10)
    u2 = u[:, p:]
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    return torch.cat((r * torch.cos(theta), r * torch.sin(theta)), dim=1)[:, :m]


# On CUDA the ~30 elementwise passes of the hash and Box-Muller fuse into one kernel: eager int64
# passes over a [1024, 65536] batch would move tens of GB. Compiled lazily, on first CUDA use.
_box_muller_cuda = None


def normal(seeds: torch.Tensor | list[int], m: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Box-Muller standard normals of the spec's layout: a float32 tensor of shape ``[B, m]``.

    With ``p = ceil(m / 2)``, element ``j < p`` is the cosine branch of pair ``j`` and element
    ``p + j`` the sine branch of the same pair. On CUDA devices the computation is compiled.
    """
    global _box_muller_cuda
    seed_col = seed_column(seeds, device)
    if seed_col.device.type != "cuda":
        return _box_muller(seed_col, m)
    if _box_muller_cuda is None:
        _box_muller_cuda = torch.compile(_box_muller, dynamic=False)
    return _box_muller_cuda(seed_col, m)


def normal_eager(seeds: torch.Tensor | list[int], m: int, device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`normal` without compilation on any device: a float32 tensor of shape ``[B, m]``.

    For small ``m`` (the PoC v2 Haar vectors have ``k`` = 12 values per seed): there the work is
    tiny, while the compiled kernel is specialised to one batch shape and would be recompiled for
    every new number of nonces. Same layout as :func:`normal`; on CUDA the float values may differ
    from the compiled ones in the last bit.
    """
    return _box_muller(seed_column(seeds, device), m)
