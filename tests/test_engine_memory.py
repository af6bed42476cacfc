"""The engine's start-time GPU memory check (:meth:`PoCEngine.check_memory`).

The check runs only on GPUs, so here the vLLM engine is replaced by a stand-in whose
``collective_rpc`` answers like the workers' ``poc_memory_probe`` (or fails like an OOM): the one
fault these CPU machines cannot cause. The GPU figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio

import pytest

from poc_serve.engine.config import EngineConfig
from poc_serve.engine.engine import PoCEngine, PoCMemoryError

GIB = 2**30


class ProbingWorkers:
    """Answers ``poc_memory_probe`` for two tensor-parallel ranks, or raises ``error``."""

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.calls: list[tuple[str, dict]] = []

    async def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (),
                             kwargs: dict | None = None) -> list[dict[str, int]]:
        self.calls.append((method, kwargs))
        if self.error is not None:
            raise self.error
        tokens = kwargs["seq_len"] * kwargs["forward_size"]
        return [{"peak_bytes": tokens * 1000, "available_bytes": 9 * GIB, "total_bytes": 80 * GIB},
                {"peak_bytes": tokens * 1100, "available_bytes": 8 * GIB, "total_bytes": 80 * GIB}]


def engine_with(workers: ProbingWorkers) -> PoCEngine:
    engine = PoCEngine(EngineConfig(max_num_batched_tokens=65536, poc_forward_tokens=32768, max_model_len=2048))
    engine.llm = workers
    return engine


def test_probes_the_most_nonces_and_the_longest_sequence_and_keeps_the_worst_rank():
    workers = ProbingWorkers()
    probes = asyncio.run(engine_with(workers).check_memory())
    # 32768 tokens: 1024 nonces (max_poc_batch_size) at seq_len 32, and 16 nonces at max_model_len.
    assert [(m, k["seq_len"], k["forward_size"]) for m, k in workers.calls] == [
        ("poc_memory_probe", 32, 1024), ("poc_memory_probe", 2048, 16)]
    assert probes == [
        {"seq_len": 32, "forward_size": 1024, "peak_bytes": 32768 * 1100, "available_bytes": 8 * GIB},
        {"seq_len": 2048, "forward_size": 16, "peak_bytes": 32768 * 1100, "available_bytes": 8 * GIB}]


def test_a_forward_that_does_not_fit_fails_the_start_with_what_to_change():
    oom = RuntimeError("Worker failed with error 'CUDA out of memory. Tried to allocate 1.50 GiB'")
    with pytest.raises(PoCMemoryError, match=r"1024 nonces x seq_len 32 .*CUDA out of memory.*poc_forward_tokens"):
        asyncio.run(engine_with(ProbingWorkers(error=oom)).check_memory())
