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

from poc_serve.engine.forward import (
    LayerMap,
    attention_kernel,
    fused_qk_norm_rope,
    householder_layer_hooks,
    poc_attention,
    uses_fused_qk_norm_rope,
)
from poc_serve.engine.vllm_compat import (
    IntermediateTensors,
    decoder_stack,
    get_pp_group,
    get_tp_group,
    model_call_context,
    model_dtype,
    platform_kernels,
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
