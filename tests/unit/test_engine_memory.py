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
                             kwargs: dict | None = None) -> list[dict]:
        self.calls.append((method, kwargs))
        if self.error is not None:
            raise self.error
        tokens = kwargs["seq_len"] * kwargs["num_nonces"]
        return [{"peak_bytes": tokens * 1000, "available_bytes": 9 * GIB, "total_bytes": 80 * GIB,
                 "fused_qk_norm_rope": True, "attention": "fa3"},
                {"peak_bytes": tokens * 1100, "available_bytes": 8 * GIB, "total_bytes": 80 * GIB,
                 "fused_qk_norm_rope": False, "attention": "fa3"}]


def engine_with(workers: ProbingWorkers, forward_tokens: int = 32768) -> PoCEngine:
    engine = PoCEngine(EngineConfig(max_num_batched_tokens=65536, poc_forward_tokens=forward_tokens,
                                    poc_forwards_per_call=4, max_model_len=2048))
    engine.llm = workers
    return engine


def test_probes_whole_calls_with_the_most_nonces_and_the_longest_sequence_keeping_the_worst_rank():
    workers = ProbingWorkers()
    engine = engine_with(workers)
    probes = asyncio.run(engine.check_memory())
    # 32768 tokens: forwards of 1024 nonces (max_poc_forward_size) at seq_len 32 and of 16 nonces at
    # max_model_len; a call holds 4 forwards.
    assert [(m, k["seq_len"], k["forward_size"], k["num_nonces"]) for m, k in workers.calls] == [
        ("poc_memory_probe", 32, 1024, 4096), ("poc_memory_probe", 2048, 16, 64)]
    # The probe runs the kernels the engine's calls run.
    assert all({k: kw[k] for k in ("fuse_qk_norm_rope", "flash_attention", "last_position_only")}
               == engine.config.poc_forward_options() for _, kw in workers.calls)
    worst = dict(peak_bytes=4 * 32768 * 1100, available_bytes=8 * GIB, fused_qk_norm_rope=False, attention="fa3")
    assert probes == [{"seq_len": 32, "forward_size": 1024, "num_nonces": 4096, **worst},
                      {"seq_len": 2048, "forward_size": 16, "num_nonces": 64, **worst}]


def test_the_shortest_probe_covers_every_token_of_a_forward():
    """10,000 tokens: seq_len 10 holds 1,000 nonces (10,000 tokens); seq_len 9 would hold only 9,216."""
    workers = ProbingWorkers()
    asyncio.run(engine_with(workers, forward_tokens=10_000).check_memory())
    _, first = workers.calls[0]
    assert (first["seq_len"], first["forward_size"]) == (10, 1000)


def test_a_call_that_does_not_fit_fails_the_start_with_what_to_change():
    oom = RuntimeError("Worker failed with error 'CUDA out of memory. Tried to allocate 1.50 GiB'")
    with pytest.raises(PoCMemoryError, match=r"4096 nonces x seq_len 32 .*CUDA out of memory.*poc_forward_tokens"):
        asyncio.run(engine_with(ProbingWorkers(error=oom)).check_memory())


def test_other_probe_failures_are_not_reported_as_memory():
    broken = TypeError("poc_memory_probe() got an unexpected keyword argument 'num_nonces'")
    with pytest.raises(TypeError, match="unexpected keyword"):
        asyncio.run(engine_with(ProbingWorkers(error=broken)).check_memory())
