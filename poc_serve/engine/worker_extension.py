"""vLLM worker extension: the PoC computation on every worker of an engine.

vLLM mixes :class:`PoCWorkerExtension` into each worker class when the engine is built with
``worker_extension_cls="poc_serve.engine.worker_extension.PoCWorkerExtension"``;
``collective_rpc("poc_compute", kwargs=...)`` then runs :meth:`poc_compute` on all of them.
Only round parameters and nonces cross process boundaries: the first pipeline stage generates the
input embeddings on its own device, and only the last stage returns (small) results: v1
distances (:meth:`PoCWorkerExtension.poc_compute`) or v2 artifacts (:meth:`poc_artifacts`), both
from one forward routine.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from poc_serve.engine.forward import LayerMap, fused_qk_norm_rope, householder_layer_hooks, poc_attention
from poc_serve.engine.kernels import attention_kernel, platform_kernels, uses_fused_qk_norm_rope
from poc_serve.engine.vllm_compat import (
    IntermediateTensors,
    LogitsProcessor,
    MoveDirectionality,
    decoder_stack,
    get_pp_group,
    get_tp_group,
    model_call_context,
    model_dtype,
    model_runner_sampler,
    sampling_logits_processors,
    sampling_max_num_logprobs,
    worker_model,
)
from poc_serve.poc import (
    encode_artifact,
    input_embeddings,
    layer_reflection,
    layer_transform,
    nonce_artifacts,
    nonce_distances,
)


# --- The network's inference extensions on vLLM's sampler (spec ml-node.md 5.4/5.5) ---
#
# A request's SamplingParams.extra_args (OpenAI bodies: ``vllm_xargs``) may carry
#   ENFORCED_TOKENS_ARG: [token id, ...]  the tokens the engine must emit, in order (replay);
#   LOGPROBS_MODE_ARG:  "processed_logprobs" | "raw_logprobs"  this request's logprobs.
# :class:`InferenceLogitsProcessor` (a V1 custom logits processor, engine arg
# ``logits_processors``) changes no logit: it keeps, per batch row, those two settings and a
# reference to the row's output token list. The hook that ``poc_install_sampler_hook`` puts on the
# model runner's ``Sampler`` reads them at every step: it computes raw logprobs for the rows that
# want them before any processor touches the logits, lets vLLM's sampler run (engine-wide
# ``logprobs_mode="processed_logprobs"``), and right after vLLM's ``Sampler.sample`` (before the
# logprobs of the sampled token are gathered) puts the enforced token in place of the sampled
# one and the raw logprobs in place of the processed ones for those rows. Other rows of the batch
# are left untouched.
ENFORCED_TOKENS_ARG = "poc_enforced_token_ids"
LOGPROBS_MODE_ARG = "poc_logprobs_mode"
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")


class _RowState:
    __slots__ = ("enforced", "raw", "output")

    def __init__(self, enforced: list[int] | None, raw: bool, output: list[int]):
        self.enforced, self.raw, self.output = enforced, raw, output


class InferenceLogitsProcessor(LogitsProcessor):
    """Per-row state of the network's extensions for the sampler hook; leaves logits unchanged."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        args = sampling_params.extra_args or {}
        mode = args.get(LOGPROBS_MODE_ARG)
        if mode is not None and mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {list(LOGPROBS_MODES)}, got {mode!r}")
        enforced = args.get(ENFORCED_TOKENS_ARG)
        if enforced is not None and (not isinstance(enforced, list) or not enforced
                                     or not all(isinstance(t, int) and t >= 0 for t in enforced)):
            raise ValueError("enforced tokens must be a non-empty list of token ids")

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.rows: dict[int, _RowState] = {}
        self.device = device

    def is_argmax_invariant(self) -> bool:
        return True  # it changes no logit

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: Any) -> None:
        if not batch_update:
            return
        rows = self.rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            args = getattr(params, "extra_args", None) or {}
            enforced, raw = args.get(ENFORCED_TOKENS_ARG), args.get(LOGPROBS_MODE_ARG) == "raw_logprobs"
            if enforced or raw:
                rows[index] = _RowState(list(enforced) if enforced else None, raw, output)
            else:
                rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            a_state, b_state = rows.pop(a, None), rows.pop(b, None)
            if a_state is not None:
                rows[b] = a_state
            if b_state is not None and direction == MoveDirectionality.SWAP:
                rows[a] = b_state

    def step_plan(self, num_rows: int) -> tuple[list[int], list[int], list[int]] | None:
        """(rows to enforce, their tokens, rows wanting raw logprobs) for this step, or None.
        The position of a row's next token is the length of its output list (async scheduling
        keeps a placeholder there for a token still in flight, so the length holds)."""
        if not self.rows:
            return None
        enforced_rows, tokens, raw_rows = [], [], []
        for index, state in self.rows.items():
            if index >= num_rows:
                continue
            if state.raw:
                raw_rows.append(index)
            if state.enforced is not None:
                position = len(state.output)
                if position < len(state.enforced):
                    enforced_rows.append(index)
                    tokens.append(state.enforced[position])
        return (enforced_rows, tokens, raw_rows) if enforced_rows or raw_rows else None


def install_sampler_hook(sampler: torch.nn.Module) -> bool:
    """Wrap ``sampler.forward`` and ``sampler.sample`` (instance attributes; idempotent) as the
    section comment above says. Returns False if it was already installed."""
    if getattr(sampler, "_poc_hooked", False):
        return False
    forward, sample = sampler.forward, sampler.sample
    step: dict[str, Any] = {}

    def hooked_forward(logits: torch.Tensor, sampling_metadata: Any, *args: Any, **kwargs: Any) -> Any:
        proc = next((p for p in sampling_logits_processors(sampling_metadata)
                     if isinstance(p, InferenceLogitsProcessor)), None)
        plan = proc.step_plan(logits.shape[0]) if proc is not None else None
        if plan is None:
            return forward(logits, sampling_metadata, *args, **kwargs)
        enforced_rows, tokens, raw_rows = plan
        raw = None
        if raw_rows and sampling_max_num_logprobs(sampling_metadata) is not None:
            # Before any processor: vLLM's raw_logprobs (log-softmax of the model's logits).
            raw_index = torch.tensor(raw_rows, device=logits.device)
            raw = (raw_index, logits.index_select(0, raw_index).log_softmax(dim=-1, dtype=torch.float32))
        enforced = None
        if enforced_rows:
            enforced = (torch.tensor(enforced_rows, device=logits.device),
                        torch.tensor(tokens, device=logits.device))
        step["plan"] = (enforced, raw)
        try:
            return forward(logits, sampling_metadata, *args, **kwargs)
        finally:
            step.pop("plan", None)

    def hooked_sample(logits: torch.Tensor, sampling_metadata: Any, *args: Any, **kwargs: Any) -> Any:
        sampled, processed = sample(logits, sampling_metadata, *args, **kwargs)
        plan = step.get("plan")
        if plan is not None:
            enforced, raw = plan
            if enforced is not None:
                sampled = sampled.clone()
                sampled[enforced[0]] = enforced[1].to(sampled.dtype)
            if raw is not None and processed is not None:
                processed[raw[0]] = raw[1]
        return sampled, processed

    sampler.forward = hooked_forward
    sampler.sample = hooked_sample
    sampler._poc_hooked = True
    return True


class PoCWorkerExtension:
    """Methods added to vLLM workers (``self`` is the worker)."""

    def poc_compute(self, block_hash: str, public_key: str, seq_len: int, randomization: str,
                    nonces: list[int], forward_size: int, fuse_qk_norm_rope: bool = True,
                    flash_attention: bool = True, last_position_only: bool = True,
                    return_hidden: bool = False) -> dict[str, Any] | None:
        """v1: forward ``nonces`` in forwards of exactly ``forward_size`` nonces and post-process
        them into distances (spec section 2). ``len(nonces)`` must be a multiple of
        ``forward_size``. The three flags choose kernels and work of the forward
        (``EngineConfig.poc_forward_options``).

        Returns ``{"distances": [...], "hidden": [[...]] | None}`` on the last pipeline stage and
        ``None`` on the others. Tensor-parallel ranks all run the same call.
        """
        def post(last: torch.Tensor, chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return nonce_distances(last, block_hash, public_key, chunk, randomization), last

        layer_map = layer_transform if randomization == "layer_hooks" else None
        outs = self._run_forwards(block_hash, public_key, seq_len, nonces, forward_size, layer_map, post,
                                  fuse_qk_norm_rope, flash_attention, last_position_only)
        if outs is None:
            return None
        # Plain lists: collective_rpc results must be msgspec-serialisable.
        return {"distances": torch.cat([d for d, _ in outs]).cpu().tolist(),
                "hidden": torch.cat([h for _, h in outs]).cpu().tolist() if return_hidden else None}

    def poc_artifacts(self, block_hash: str, public_key: str, seq_len: int, nonces: list[int], forward_size: int,
                      k_dim: int, stronger_rng: bool = False, fuse_qk_norm_rope: bool = True,
                      flash_attention: bool = True, last_position_only: bool = True) -> dict[str, Any] | None:
        """v2 (poc-v2.md section 1): the same forwards with every layer's output reflected, then
        each nonce's k-value binary16 artifact. Only the artifacts leave the last stage:
        ``{"artifacts": [vector_b64 | None, ...]}``, None for a non-finite artifact (section 3),
        and ``None`` on other stages."""
        def post(last: torch.Tensor, chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return nonce_artifacts(last, block_hash, public_key, chunk, k_dim)

        outs = self._run_forwards(block_hash, public_key, seq_len, nonces, forward_size, layer_reflection, post,
                                  fuse_qk_norm_rope, flash_attention, last_position_only, stronger_rng)
        if outs is None:
            return None
        artifacts = torch.cat([a for a, _ in outs]).cpu()
        finite = torch.cat([f for _, f in outs]).cpu().tolist()
        return {"artifacts": [encode_artifact(row) if ok else None for row, ok in zip(artifacts, finite)]}

    def _run_forwards(self, block_hash: str, public_key: str, seq_len: int, nonces: list[int], forward_size: int,
                      layer_map: LayerMap | None, post: Callable[[torch.Tensor, list[int]], Any],
                      fuse_qk_norm_rope: bool, flash_attention: bool, last_position_only: bool,
                      stronger_rng: bool = False) -> list[Any] | None:
        """The one PoC forward routine of v1 and v2: the forwards of ``nonces`` with every layer's
        output mapped by ``layer_map`` (None: unchanged), and ``post(last hidden states, nonces)``
        of each forward on the last pipeline stage (None on the others)."""
        if not nonces or len(nonces) % forward_size:
            raise ValueError(f"{len(nonces)} nonces are not a positive multiple of forward_size {forward_size}")
        model = worker_model(self)
        decoder = decoder_stack(model)
        hidden_size = model.config.hidden_size
        device = next(model.parameters()).device
        dtype = model_dtype(self)
        pp = get_pp_group()
        hooks = (householder_layer_hooks(decoder, block_hash, hidden_size, device, layer_map)
                 if layer_map is not None else contextlib.nullcontext())
        fused = fused_qk_norm_rope(model, dtype) if fuse_qk_norm_rope else contextlib.nullcontext()
        attention = poc_attention(model, forward_size, seq_len, dtype, flash_attention, last_position_only)
        # platform_kernels: the same kernels whether the engine runs compiled (inference with CUDA
        # graphs) or eager, so a nonce's result does not depend on the engine's compile mode.
        with torch.inference_mode(), platform_kernels(model), attention, fused, hooks:
            positions = torch.arange(seq_len, device=device).repeat(forward_size)
            outs = []
            # No host sync between forwards: the CPU queues the next forward while the GPU runs this
            # one. Post-processing also runs per forward, so its reductions always see the same
            # number of rows (their summation order depends on it).
            for i in range(0, len(nonces), forward_size):
                chunk = nonces[i:i + forward_size]
                last = self._poc_forward(decoder, pp, block_hash, public_key, chunk, seq_len, positions,
                                         hidden_size, device, dtype, stronger_rng)
                if last is not None:
                    outs.append(post(last, chunk))
            return outs if pp.is_last_rank else None

    def _poc_forward(self, decoder: torch.nn.Module, pp: Any, block_hash: str, public_key: str,
                     nonces: list[int], seq_len: int, positions: torch.Tensor, hidden_size: int,
                     device: torch.device, dtype: torch.dtype, stronger_rng: bool) -> torch.Tensor | None:
        """One forward of this stage; the float32 last-position hidden states on the last stage."""
        batch = len(nonces)
        embeds, intermediate = None, None
        if pp.is_first_rank:
            embeds = input_embeddings(block_hash, public_key, nonces, seq_len, hidden_size, device, dtype,
                                      stronger_rng=stronger_rng).view(batch * seq_len, hidden_size)
        else:
            intermediate = IntermediateTensors(pp.recv_tensor_dict(all_gather_group=get_tp_group()))
        with model_call_context(self, batch * seq_len):
            out = decoder.forward(input_ids=None, positions=positions,
                                  intermediate_tensors=intermediate, inputs_embeds=embeds)
        if not pp.is_last_rank:
            pp.send_tensor_dict(out.tensors, all_gather_group=get_tp_group())
            return None
        # [batch * seq_len, hidden], or [batch, hidden] when the final layer ran last positions only
        return out.view(batch, -1, hidden_size)[:, -1].float()

    def poc_memory_probe(self, seq_len: int, num_nonces: int, forward_size: int, fuse_qk_norm_rope: bool = True,
                         flash_attention: bool = True, last_position_only: bool = True) -> dict[str, Any]:
        """Run one PoC call of ``num_nonces`` nonces in both v1 modes and as v2, and report this
        worker's GPU memory: the call's peak above the resting allocation, what is still available
        after it (free device memory plus the allocator's unused cache), and the kernels in use
        (fused q/k-norm + rotary or not; attention "fa3", "fa2" or "sdpa"). Flags as for
        :meth:`poc_compute`."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resting = torch.cuda.memory_allocated()
        options = (fuse_qk_norm_rope, flash_attention, last_position_only)
        for mode in ("sign_flips", "layer_hooks"):
            self.poc_compute("memory_probe", "memory_probe", seq_len, mode, list(range(num_nonces)), forward_size,
                             *options)
        self.poc_artifacts("memory_probe", "memory_probe", seq_len, list(range(num_nonces)), forward_size, 1, False,
                           *options)
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        model, dtype = worker_model(self), model_dtype(self)
        return {"peak_bytes": torch.cuda.max_memory_allocated() - resting,
                "available_bytes": free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated(),
                "total_bytes": total,
                "fused_qk_norm_rope": fuse_qk_norm_rope and uses_fused_qk_norm_rope(model, dtype),
                "attention": attention_kernel(flash_attention, dtype)}

    def poc_install_sampler_hook(self) -> bool:
        """Install the network's inference extensions on this worker's sampler (see
        :func:`install_sampler_hook`); True if installed now, False if already there."""
        return install_sampler_hook(model_runner_sampler(self))
