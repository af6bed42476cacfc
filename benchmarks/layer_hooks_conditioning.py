"""How strongly each randomisation mode amplifies rounding: CPU, the Qwen3-0.6B-shaped random model.

Compares distances and final hidden states (a) with inputs perturbed by a relative 1e-3 (the size
of bfloat16 rounding) in float32 and in bfloat16, and (b) bfloat16 against float32 on the same
inputs, through the independent transformers reference of tests/reference.py. A mode whose
result moves by more than the validation tolerance under (b) cannot be reproduced across
layouts or GPUs. About two minutes on two cores:

    PYTHONPATH=$PWD .venv/bin/python benchmarks/layer_hooks_conditioning.py
"""

from __future__ import annotations

import os

import torch

from poc_serve.models.tiny import build_random_checkpoint
from poc_serve.poc import input_embeddings, nonce_distances
from tests.reference import layer_hooks_forward, load_reference_model

MODEL_DIR = "/tmp/poc_qwen3_0.6b_cpu"
BH, PK, NONCES, SEQ_LEN = "gpu_check_block", "gpu_check_key", list(range(6)), 64


def last_hidden(model, emb: torch.Tensor, mode: str) -> torch.Tensor:
    with torch.inference_mode():
        if mode == "sign_flips":
            return model(inputs_embeds=emb).last_hidden_state[:, -1].float()
        return layer_hooks_forward(model, emb, BH)[:, -1].float()


def main() -> None:
    if not os.path.exists(os.path.join(MODEL_DIR, "config.json")):
        build_random_checkpoint(MODEL_DIR, "qwen3", "qwen3-0.6b-shape")
    torch.manual_seed(0)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_reference_model(MODEL_DIR, dtype)
        emb = input_embeddings(BH, PK, NONCES, SEQ_LEN, model.config.hidden_size, "cpu", dtype)
        perturbed = emb * (1 + 1e-3 * torch.randn(emb.shape)).to(dtype)
        for tag, inputs in (("clean", emb), ("perturbed", perturbed)):
            for mode in ("sign_flips", "layer_hooks"):
                hidden = last_hidden(model, inputs, mode)
                out[dtype, tag, mode] = (hidden, nonce_distances(hidden, BH, PK, NONCES, mode))
    for label, a, b in (("fp32, inputs x (1 + 1e-3 noise)", (torch.float32, "clean"), (torch.float32, "perturbed")),
                        ("bf16, inputs x (1 + 1e-3 noise)", (torch.bfloat16, "clean"), (torch.bfloat16, "perturbed")),
                        ("bf16 vs fp32, same inputs", (torch.float32, "clean"), (torch.bfloat16, "clean"))):
        for mode in ("sign_flips", "layer_hooks"):
            (ha, da), (hb, db) = out[a + (mode,)], out[b + (mode,)]
            cos = torch.nn.functional.cosine_similarity(ha, hb, dim=-1).min().item()
            print(f"{label:34s} {mode:12s} max |distance change| {(da - db).abs().max().item():.2e}   "
                  f"min cos(hidden) {cos:.4f}")


if __name__ == "__main__":
    main()
