"""The one fake engine of the serve layer: the engine protocol without vLLM, with distances and
artifacts derived from the nonces, injected through the engine deployment's ``engine_factory``."""

from __future__ import annotations

import asyncio
import hashlib
import zlib

import torch

from poc_serve.engine.protocol import ArtifactBatchResult, ArtifactRound, PoCBatchResult, PoCRound
from poc_serve.poc.artifacts import encode_artifact
from poc_serve.testing.stand_in import StandInEngine

R_TARGET = 1.4
# A v1 round for the fake engine: about half of its nonces are valid at R_TARGET.
ROUND = dict(block_hash="fast_bh", block_height=7, public_key="fast_pk", r_target=R_TARGET,
             node_id=1, node_count=3, seq_len=16)


def artifact(round: ArtifactRound, nonce: int) -> str:
    """A deterministic stand-in artifact of ``nonce`` (unit vector, binary16)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{round.block_hash}_{round.public_key}_{nonce}".encode()))
    v = torch.randn(round.k_dim, generator=g)
    return encode_artifact((v / v.norm()).to(torch.float16))


def distance(round: PoCRound, nonce: int) -> float:
    """The fake engine's distance of ``nonce``: fixed per (round, nonce), in [1.3, 1.5), so about
    half of the nonces are valid at r_target 1.4."""
    digest = hashlib.sha256(f"{round.block_hash}/{round.public_key}/{nonce}".encode()).digest()
    return 1.3 + 0.2 * int.from_bytes(digest[:4], "little") / 2**32


class NonceDerivedEngine(StandInEngine):
    """Distances and artifacts derived from the nonces, 20 ms per call (and the stand-in's
    completions): the engine protocol without vLLM."""

    async def compute(self, round: PoCRound, nonces: list[int], return_hidden: bool = False) -> PoCBatchResult:
        await asyncio.sleep(0.02)
        return PoCBatchResult(nonces=nonces, distances=[distance(round, n) for n in nonces])

    async def compute_artifacts(self, round: ArtifactRound, nonces: list[int]) -> ArtifactBatchResult:
        await asyncio.sleep(0.02)
        return ArtifactBatchResult(nonces=nonces, artifacts=[artifact(round, n) for n in nonces])


class NoValidNonceEngine(NonceDerivedEngine):
    """The fake engine whose v1 distances are all 1.5 (no nonce valid at r_target 1.4), at once."""

    async def compute(self, round: PoCRound, nonces: list[int], return_hidden: bool = False) -> PoCBatchResult:
        return PoCBatchResult(nonces=nonces, distances=[1.5] * len(nonces))
