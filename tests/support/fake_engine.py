"""The fake engine of the serve layer: the engine protocol without vLLM, with distances and
artifacts derived from the nonces, injected through the engine deployment's ``engine_factory``;
its scripted form serves the model its config names and loads and fails as the test orders."""

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
# Orders to ScriptedEngine: inference/up's vLLM arguments of a slow load (3 s) and of a load that
# raises; the block hash of a round whose PoC forward raises FORWARD_CONTEXT_ERROR.
SLOW_LOAD = ["--max-num-seqs", "7"]
FAILING_LOAD = ["--max-num-seqs", "13"]
FAILING_FORWARD = "failing_forward"
FORWARD_CONTEXT_ERROR = "Forward context is not set. Please use `set_forward_context` to set the forward context."


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


class ScriptedEngine(NonceDerivedEngine):
    """The fake engine of the stand-in node: serves the model its config names and does what the
    test orders through its requests: a slow or failing load (inference/up's vLLM arguments
    :data:`SLOW_LOAD`, :data:`FAILING_LOAD`), a failing PoC forward (a round whose block hash is
    :data:`FAILING_FORWARD`)."""

    def __init__(self, model: str):
        self.model = model

    @classmethod
    async def factory(cls, config) -> "ScriptedEngine":
        seqs = str(config.engine_kwargs.get("max_num_seqs"))
        if seqs == FAILING_LOAD[1]:
            raise RuntimeError("CUDA out of memory while loading the weights (injected)")
        if seqs == SLOW_LOAD[1]:
            await asyncio.sleep(3)
        return cls(config.model)

    def model_info(self) -> dict:
        return {**super().model_info(), "model": self.model}

    async def compute(self, round: PoCRound, nonces: list[int], return_hidden: bool = False) -> PoCBatchResult:
        if round.block_hash == FAILING_FORWARD:  # as vLLM's fused-MoE layer failed outside a forward context
            raise RuntimeError(f"Worker failed with error '{FORWARD_CONTEXT_ERROR}', please check the stack trace "
                               "above")
        return await super().compute(round, nonces, return_hidden)
