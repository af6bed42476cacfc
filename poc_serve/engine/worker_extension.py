"""vLLM worker extension: the PoC computation on every worker of an engine.

vLLM mixes :class:`PoCWorkerExtension` into each worker class when the engine is built with
``worker_extension_cls="poc_serve.engine.worker_extension.PoCWorkerExtension"``;
``collective_rpc("poc_compute", kwargs=...)`` then runs :meth:`poc_compute` on all of them.
Only round parameters and nonces cross process boundaries: the first pipeline stage generates the
input embeddings on its own device, and only the last stage returns (small) results.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from poc_serve.engine.forward import causal_sdpa_attention, householder_layer_hooks
from poc_serve.engine.vllm_compat import (
    IntermediateTensors,
    decoder_stack,
    get_pp_group,
    get_tp_group,
    model_dtype,
    worker_model,
)
from poc_serve.poc import input_embeddings, nonce_distances


class PoCWorkerExtension:
    """Methods added to vLLM workers (``self`` is the worker)."""

    def poc_compute(self, block_hash: str, public_key: str, seq_len: int, randomization: str,
                    nonces: list[int], return_hidden: bool = False) -> dict[str, Any] | None:
        """Forward a batch of nonces and post-process it (spec section 2).

        Returns ``{"distances": [...], "hidden": [[...]] | None}`` on the last pipeline stage and
        ``None`` on the others. Tensor-parallel ranks all run the same call.
        """
        model = worker_model(self)
        decoder = decoder_stack(model)
        hidden_size = model.config.hidden_size
        device = next(model.parameters()).device
        batch = len(nonces)
        pp = get_pp_group()
        hooks = (householder_layer_hooks(decoder, block_hash, hidden_size, device)
                 if randomization == "layer_hooks" else contextlib.nullcontext())
        with torch.inference_mode(), causal_sdpa_attention(model, batch, seq_len), hooks:
            positions = torch.arange(seq_len, device=device).repeat(batch)
            embeds, intermediate = None, None
            if pp.is_first_rank:
                embeds = input_embeddings(block_hash, public_key, nonces, seq_len, hidden_size, device,
                                          model_dtype(self)).view(batch * seq_len, hidden_size)
            else:
                intermediate = IntermediateTensors(pp.recv_tensor_dict(all_gather_group=get_tp_group()))
            out = decoder.forward(input_ids=None, positions=positions,
                                  intermediate_tensors=intermediate, inputs_embeds=embeds)
            if not pp.is_last_rank:
                pp.send_tensor_dict(out.tensors, all_gather_group=get_tp_group())
                return None
            last = out.view(batch, seq_len, hidden_size)[:, -1].float()
            distances = nonce_distances(last, block_hash, public_key, nonces, randomization)
            # Plain lists: collective_rpc results must be msgspec-serialisable.
            return {"distances": distances.cpu().tolist(),
                    "hidden": last.cpu().tolist() if return_hidden else None}
