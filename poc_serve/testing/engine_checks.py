"""Correctness checks of a started PoC engine against the transformers reference, as numbers.

The GPU tests (tests/gpu/) assert bounds on them; the GPU benchmark (benchmarks/engine_gpu.py)
records them beside its rates. ``reference_results`` runs on the reference model, the checks on
a :class:`poc_serve.engine.engine.PoCEngine` (or anything with its ``compute``,
``compute_artifacts`` and ``call_size``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from poc_serve.engine.protocol import ArtifactRound, PoCRound
from poc_serve.poc import decode_artifact, nonce_distances
from poc_serve.testing.reference import reference_artifacts, reference_last_hidden

BLOCK_HASH, PUBLIC_KEY = "gpu_check_block", "gpu_check_key"
CHECK_NONCES = list(range(64))
MODES = ("sign_flips", "layer_hooks")
# Nonces far from CHECK_NONCES, so that batch-independence calls share nothing with them.
_FAR = 1000


def reference_results(model: torch.nn.Module, seq_lens: list[int]) -> dict[str, Any]:
    """The reference's answers for CHECK_NONCES, keyed ``"{seq_len}_{mode}"`` (``{"hidden",
    "dist"}``, on the CPU) and ``"{seq_len}_v2"`` (artifacts ``[64, 12]``)."""
    out: dict[str, Any] = {}
    for seq_len in seq_lens:
        out[f"{seq_len}_v2"] = reference_artifacts(model, BLOCK_HASH, PUBLIC_KEY, CHECK_NONCES, seq_len).cpu()
        for mode in MODES:
            last = reference_last_hidden(model, BLOCK_HASH, PUBLIC_KEY, CHECK_NONCES, seq_len, mode)
            out[f"{seq_len}_{mode}"] = {
                "hidden": last.cpu(), "dist": nonce_distances(last, BLOCK_HASH, PUBLIC_KEY, CHECK_NONCES, mode).cpu()}
    return out


def v1_round(seq_len: int, mode: str = "sign_flips") -> PoCRound:
    return PoCRound(block_hash=BLOCK_HASH, public_key=PUBLIC_KEY, seq_len=seq_len, randomization=mode)


def v2_round(seq_len: int) -> ArtifactRound:
    return ArtifactRound(block_hash=BLOCK_HASH, public_key=PUBLIC_KEY, seq_len=seq_len)


async def distance_errors(engine, reference: dict[str, Any], seq_len: int, mode: str) -> dict[str, Any]:
    """The engine's distances and hidden states of CHECK_NONCES against the reference's."""
    out = await engine.compute(v1_round(seq_len, mode), CHECK_NONCES, return_hidden=True)
    ref = reference[f"{seq_len}_{mode}"]
    cos = torch.nn.functional.cosine_similarity(torch.tensor(out.hidden), ref["hidden"], dim=-1)
    err = (torch.tensor(out.distances) - ref["dist"]).abs()
    return {"min_cos": round(cos.min().item(), 6), "max_dist_err": float(err.max()),
            "mean_dist_err": float(err.mean()), "n_over_1e-3": int((err > 1e-3).sum()),
            # equal digests across engines and settings: bit-identical distances
            "digest": hashlib.sha1(repr(out.distances).encode()).hexdigest()[:12]}


async def artifact_errors(engine, reference: dict[str, Any], seq_len: int) -> dict[str, float]:
    """L2 distances of the engine's v2 artifacts of CHECK_NONCES from the reference's."""
    got = await engine.compute_artifacts(v2_round(seq_len), CHECK_NONCES)
    l2 = torch.stack([torch.linalg.vector_norm(decode_artifact(b64, 12) - ref.float())
                      for b64, ref in zip(got.artifacts, reference[f"{seq_len}_v2"])])
    return {"max_l2": round(l2.max().item(), 5), "mean_l2": round(l2.mean().item(), 5)}


async def batch_independent(engine, seq_len: int) -> bool:
    """Two nonces alone give the distances they get inside a call of more than one call's size."""
    alone = await engine.compute(v1_round(seq_len), [_FAR + 3, _FAR + 5])
    crowd = await engine.compute(v1_round(seq_len), list(range(_FAR, _FAR + engine.call_size(seq_len) + 10)))
    return alone.distances == [crowd.distances[3], crowd.distances[5]]


async def artifacts_batch_independent(engine, seq_len: int) -> bool:
    """As :func:`batch_independent`, for v2 artifacts (identical strings)."""
    alone = await engine.compute_artifacts(v2_round(seq_len), [_FAR + 3, _FAR + 5])
    crowd = await engine.compute_artifacts(v2_round(seq_len), list(range(_FAR, _FAR + engine.call_size(seq_len) + 10)))
    return alone.artifacts == crowd.artifacts[3:6:2]
