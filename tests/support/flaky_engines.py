"""Stand-ins for the engine deployment's compute calls in the unit layer (no Ray, no vLLM), with
the fault a CPU suite cannot cause on demand: a replica that dies mid-batch."""

from __future__ import annotations

import asyncio

import torch

from poc_serve.engine.protocol import ArtifactRound, PoCRound
from poc_serve.poc import nonce_distances
from tests.support.fake_engine import artifact

HIDDEN = 32
MODEL = {"model": "org/model", "model_path": "/models/org-model", "hidden_size": 64, "max_model_len": 128}


class FlakyDistanceEngine:
    """Distances from the spec's post-processing of a per-nonce hidden state; every
    ``fail_every``-th call raises like a replica that died mid-batch, unless its batch failed
    before (the restarted replica computes it)."""

    def __init__(self, fail_every: int = 0):
        self.fail_every = fail_every
        self.calls = 0
        self.computed: list[int] = []
        self.failed: set[tuple[int, ...]] = set()

    async def compute(self, round: PoCRound, nonces: list[int]) -> list[float]:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(0.01)
        if self.fail_every and call % self.fail_every == 0 and tuple(nonces) not in self.failed:
            self.failed.add(tuple(nonces))
            raise RuntimeError("replica died")
        self.computed += nonces
        hidden = torch.stack([torch.randn(HIDDEN, generator=torch.Generator().manual_seed(n)) for n in nonces])
        return nonce_distances(hidden, round.block_hash, round.public_key, nonces, round.randomization).tolist()


class FlakyArtifactEngine:
    """compute_artifacts of the engine deployment: every ``fail_every``-th call raises (with
    ``fail_retries`` False only a batch's first attempt: a replica died and its restart computes
    the batch; a retry failing again as the round stops leaves a hole that the driver's own test
    covers), ``nonfinite`` nonces answer None, ``delay`` s per call."""

    def __init__(self, fail_every: int = 0, nonfinite: frozenset[int] = frozenset(), delay: float = 0.005,
                 fail_retries: bool = True):
        self.fail_every, self.nonfinite, self.delay = fail_every, nonfinite, delay
        self.fail_retries = fail_retries
        self.calls = 0
        self.computed: list[int] = []
        self.failed: set[tuple[int, ...]] = set()

    async def compute(self, round: ArtifactRound, nonces: list[int]) -> list[str | None]:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(self.delay)
        if self.fail_every and call % self.fail_every == 0 and (
                self.fail_retries or tuple(nonces) not in self.failed):
            self.failed.add(tuple(nonces))
            raise RuntimeError("replica died")
        self.computed += nonces
        return [None if n in self.nonfinite else artifact(round, n) for n in nonces]

    async def model_info(self) -> dict:
        return MODEL
