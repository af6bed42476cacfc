"""The PoC v2 generation loop (poc-v2.md section 4.1): one nonce counter over all engine replicas,
the new artifacts sent to ``{url}/generated`` at most every callback interval, the progress line.

Knows nothing of HTTP or Ray: artifacts come from an injected ``compute`` coroutine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from poc_serve.engine.protocol import ArtifactRound
from poc_serve.poc.nonces import NonceSequence
from poc_serve.serve.artifact_protocol import GenerationConfig, GenerationInit, GenerationStats
from poc_serve.serve.callbacks import CallbackSender
from poc_serve.serve.generation import Every, drive_batches, logger
from poc_serve.serve.metrics import PoCMetrics

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

    def __init__(self, compute: ArtifactComputeFn, batch_size: Callable[[int], int], batches_in_flight: int,
                 sender: CallbackSender, metrics: PoCMetrics | None = None, callback_interval_s: float = 5.0,
                 log_interval_s: float = 5.0, call_timeout_s: float = 60.0):
        self._compute = compute
        self._batch_size = batch_size
        self._in_flight_limit = batches_in_flight
        self._sender = sender
        self._metrics = metrics
        self._callback_interval_s = callback_interval_s
        self._log_interval_s = log_interval_s
        self._call_timeout_s = call_timeout_s
        self.config: GenerationInit | None = None
        self.total = 0
        self.nonfinite = 0
        self._seconds = 0.0
        self._since: float | None = None
        self._unsent: list[dict] = []
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether the loop runs (also while it finishes its last batches after a stop)."""
        return self._task is not None

    def start(self, config: GenerationInit) -> None:
        """Start a new loop from nonce index 0 with fresh counters; the caller stopped the last one."""
        assert self._task is None, "stop the running generation first"
        self.config, self.total, self.nonfinite, self._seconds = config, 0, 0, 0.0
        self._unsent = []
        self._since = time.monotonic()
        self._stop = asyncio.Event()
        nonces = NonceSequence(config.node_id, config.node_count, config.group_id, config.n_groups)
        round_ = artifact_round(config)
        self._task = asyncio.create_task(drive_batches(
            lambda batch: self._compute(round_, batch), nonces, self._batch_size(config.params.seq_len),
            self._in_flight_limit, self._record, self._stop, call_timeout_s=self._call_timeout_s,
            periodic=[Every(self._callback_interval_s, self._send_unsent),
                      Every(self._log_interval_s, self._log_progress)]))
        if self._metrics:
            self._metrics.record_v2_generating(True)

    async def stop(self) -> None:
        """Let the batches in flight finish (their artifacts count and are sent), then end the loop."""
        if self._task is None:
            return
        self._stop.set()
        try:
            await self._task
        except Exception:  # a bug, not an engine failure (those are retried): stop anyway, say why
            logger.exception("PoC v2 generation loop ended with an error")
        finally:
            self._task = None
            self._seconds += time.monotonic() - self._since
            self._since = None
            self._send_unsent()
            self._log_progress()
            if self._metrics:
                self._metrics.record_v2_generating(False)

    def stats(self) -> GenerationStats | None:
        """Progress of the current or last loop; None before the first."""
        if self.config is None:
            return None
        return GenerationStats(total_processed=self.total, nonces_per_second=self._rate())

    def status_config(self) -> GenerationConfig | None:
        """Parameters of the current or last loop, as status shows them."""
        c = self.config
        if c is None:
            return None
        return GenerationConfig(block_hash=c.block_hash, block_height=c.block_height, public_key=c.public_key,
                                node_id=c.node_id, node_count=c.node_count, group_id=c.group_id,
                                n_groups=c.n_groups, seq_len=c.params.seq_len, k_dim=c.params.k_dim)

    def _rate(self) -> float:
        running = time.monotonic() - self._since if self._since is not None else 0.0
        seconds = self._seconds + running
        return self.total / seconds if seconds > 0 else 0.0

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
        if self.config.url:
            self._unsent.extend(artifacts)
        if self._metrics:
            self._metrics.record_artifacts(len(artifacts), bad)

    def _send_unsent(self) -> None:
        c = self.config
        if not self._unsent or c is None:
            return
        self._sender.enqueue_artifacts(dict(
            public_key=c.public_key, block_hash=c.block_hash, block_height=c.block_height, node_id=c.node_id,
            artifacts=self._unsent, encoding=encoding(c.params.k_dim)), c.url)
        self._unsent = []

    def _log_progress(self) -> None:
        rate = self._rate()
        if self._metrics:
            self._metrics.record_artifact_rate(rate)
        logger.info(f"Generated: {self.total} nonces ({rate * 60:.0f}/min)")
