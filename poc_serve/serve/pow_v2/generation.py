"""The PoC v2 generation (poc-v2.md section 4.1): one nonce counter over all engine replicas, the
new artifacts sent to ``{url}/generated`` at most every callback interval, the progress line; the
loop itself is the shared one (:mod:`poc_serve.serve.core.loop`), this module keeps the ledger.

With a journal the loop outlives its ingress replica. Artifacts are deterministic, so the
checkpoint holds no artifact: a batch stays open in the nonce sequence's position until the
receiver has settled its artifacts, and a resumed loop computes and sends the open batches again.

Knows nothing of HTTP or Ray: artifacts come from an injected ``compute`` coroutine.
"""

from __future__ import annotations

import uuid
from typing import Awaitable, Callable

from poc_serve.engine.protocol import ArtifactRound
from poc_serve.poc.nonces import NonceSequence
from poc_serve.serve.pow_v2.protocol import GenerationConfig, GenerationInit, GenerationStats
from poc_serve.serve.core.callbacks import CallbackSender
from poc_serve.serve.core.errors import logger
from poc_serve.serve.core.loop import GenerationLoop, GenerationSettings
from poc_serve.serve.core.metrics import PoCMetrics
from poc_serve.serve.core.store import Checkpointer, RoundJournal, RoundSnapshot

# (round, nonces) -> vector_b64 per nonce, None where the artifact stayed non-finite (section 3).
ArtifactComputeFn = Callable[[ArtifactRound, list[int]], Awaitable[list[str | None]]]


def artifact_round(body) -> ArtifactRound:
    """The engine's view of an init/generate or generate body."""
    return ArtifactRound(block_hash=body.block_hash, public_key=body.public_key, seq_len=body.params.seq_len,
                         k_dim=body.params.k_dim, stronger_rng=body.poc_stronger_rng)


def encoding(k_dim: int) -> dict:
    """The ``encoding`` object of every artifact list."""
    return {"dtype": "f16", "k_dim": k_dim, "endian": "le"}


class ArtifactGeneration:
    """Runs at most one generation loop; keeps its config and counters until the next start."""

    def __init__(self, compute: ArtifactComputeFn, sender: CallbackSender, settings: GenerationSettings,
                 metrics: PoCMetrics | None = None, journal: RoundJournal | None = None):
        self._compute = compute
        self._sender = sender
        self._metrics = metrics
        self.config: GenerationInit | None = None
        self.total = 0
        self.nonfinite = 0
        self._unsent: list[dict] = []
        self._unsent_batches: list[list[int]] = []
        self._nonces: NonceSequence | None = None
        # Artifacts of the batches the receiver settled: what a resumed loop counts from.
        self._settled = 0
        self._resumable = False  # whether the saved loop is to go on after a restart
        self._loop_id = uuid.uuid4().hex
        self._loop = GenerationLoop(settings, "PoC v2", self._send_unsent, lambda: self.total,
                                    lambda elapsed_s, rate: f"Generated: {self.total} nonces ({rate * 60:.0f}/min)",
                                    metrics.record_artifact_rate if metrics else None,
                                    Checkpointer(journal, self._snapshot) if journal else None)

    @property
    def running(self) -> bool:
        """Whether the loop runs (also while it finishes its last batches after a stop)."""
        return self._loop.running

    def start(self, config: GenerationInit, resume_from: dict | None = None) -> None:
        """Start a new loop from nonce index 0 with fresh counters (the caller stopped the last
        one), or go on from a checkpoint's head (``resume_from``)."""
        head = resume_from or {}
        self._loop.reset(head.get("seconds", 0.0))
        self.config, self.nonfinite = config, head.get("nonfinite", 0)
        self.total = self._settled = head.get("settled", 0)
        self._loop_id = head.get("round_id") or uuid.uuid4().hex
        self._unsent, self._unsent_batches = [], []
        self._nonces = nonces = NonceSequence(config.node_id, config.node_count, config.group_id, config.n_groups)
        if head:
            nonces.restore(head["sequence"])
        self._resumable = True
        self._loop.changed()
        round_ = artifact_round(config)
        self._loop.start(lambda batch: self._compute(round_, batch), nonces, config.params.seq_len, self._record)
        if self._metrics:
            self._metrics.record_v2_generating(True)

    async def stop(self, resumable: bool = False, timeout: float | None = None) -> None:
        """Let the batches in flight finish (their artifacts count and are sent), then end the loop;
        ``resumable``: the saved loop goes on after a restart (a shutdown, not the network's stop).
        After ``timeout`` s the batches still in flight are abandoned (they stay open)."""
        if not self._loop.running:
            return
        self._resumable = resumable
        try:
            await self._loop.stop(timeout)
        finally:
            if self._metrics:
                self._metrics.record_v2_generating(False)

    async def saved(self) -> None:
        """Wait until the store holds every change (a no-op without a journal)."""
        await self._loop.saved()

    def resume(self, snapshot: RoundSnapshot) -> None:
        """Go on with a loop that a replica before this one saved as running: the batches its
        receiver had not settled first, then new nonces. Call on the event loop."""
        head = snapshot.head
        if not head["resumable"]:
            return
        config = GenerationInit.model_validate(head["config"])
        logger.info("resuming the PoC v2 generation of block %d: %d artifacts settled by the receiver, "
                    "%d batches to compute again", config.block_height, head["settled"], len(head["sequence"]["open"]))
        self.start(config, resume_from=head)

    def _snapshot(self) -> RoundSnapshot:
        head = dict(round_id=self._loop_id, valid=0, resumable=self._resumable,
                    config=self.config.model_dump(mode="json"), sequence=self._nonces.position(),
                    settled=self._settled, nonfinite=self.nonfinite, seconds=self._loop.elapsed())
        return RoundSnapshot(head, [], [])

    def stats(self) -> GenerationStats | None:
        """Progress of the current or last loop; None before the first."""
        if self.config is None:
            return None
        return GenerationStats(total_processed=self.total, nonces_per_second=self._loop.rate())

    def status_config(self) -> GenerationConfig | None:
        """Parameters of the current or last loop, as status shows them."""
        c = self.config
        if c is None:
            return None
        return GenerationConfig(block_hash=c.block_hash, block_height=c.block_height, public_key=c.public_key,
                                node_id=c.node_id, node_count=c.node_count, group_id=c.group_id,
                                n_groups=c.n_groups, seq_len=c.params.seq_len, k_dim=c.params.k_dim)

    def _record(self, batch: list[int], vectors: list[str | None]) -> None:
        if len(vectors) != len(batch):
            raise RuntimeError(f"the engine answered {len(vectors)} artifacts for {len(batch)} nonces")
        artifacts = [{"nonce": n, "vector_b64": v} for n, v in zip(batch, vectors) if v is not None]
        bad = len(batch) - len(artifacts)
        if bad:
            # Section 3 (Ours): never sent, so the DAPI cannot take the participant's weight for it.
            self.nonfinite += bad
            logger.error("PoC v2: %d of %d nonces stayed non-finite after a recomputation and are left out: %s",
                         bad, len(batch), [n for n, v in zip(batch, vectors) if v is None])
        self.total += len(artifacts)
        if self.config.url and artifacts:
            self._unsent.extend(artifacts)
            self._unsent_batches.append(batch)
        else:  # nothing to deliver: the batch is done
            self._settle(self._nonces, [batch], len(artifacts))
        if self._metrics:
            self._metrics.record_artifacts(len(artifacts), bad)

    def _send_unsent(self) -> None:
        c = self.config
        if not self._unsent or c is None:
            return
        batches, count, nonces = self._unsent_batches, len(self._unsent), self._nonces
        self._sender.enqueue_artifacts(dict(
            public_key=c.public_key, block_hash=c.block_hash, block_height=c.block_height, node_id=c.node_id,
            artifacts=self._unsent, encoding=encoding(c.params.k_dim)), c.url,
            on_settled=lambda: self._settle(nonces, batches, count))
        self._unsent, self._unsent_batches = [], []

    def _settle(self, nonces: NonceSequence, batches: list[list[int]], artifacts: int) -> None:
        """The receiver took (or was given up on) these batches' artifacts: close them."""
        if nonces is not self._nonces:  # a callback of an earlier loop
            return
        for batch in batches:
            nonces.computed(batch)
        self._settled += artifacts
        self._loop.changed()
