"""FP8 checkpoints in the layout the network's models ship: block-quantised weights plus a
``quantization_config`` in config.json, made from a 16-bit checkpoint.

The network's FP8 models (Qwen3-235B-A22B-Instruct-2507-FP8 and the like) store every linear layer
of attention and of the experts as ``float8_e4m3fn`` with one float32 scale per 128 x 128 block
(``weight_scale_inv``, the factor that turns the stored values back into weights), and keep the
embeddings, norms, the router (``mlp.gate``) and the LM head in 16 bits; activations are
quantised on the fly (``activation_scheme: dynamic``). vLLM reads such a checkpoint as
``quant_method: fp8`` with ``weight_block_size``. Real checkpoints cannot be downloaded here, so
PoC on FP8 is checked on random models converted by :func:`quantize_checkpoint_fp8`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

BLOCK = 128
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                       "weight_block_size": [BLOCK, BLOCK]}
# Linear layers quantised, by the last part of their module name (as in the network's models).
_QUANTISED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize_block_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fp8 weight, scale_inv)`` of a 2-D weight, one scale per ``BLOCK`` x ``BLOCK`` block (the
    edge blocks may be smaller): ``weight ~= fp8 * scale_inv`` block by block."""
    rows, cols = weight.shape
    nr, nc = -(-rows // BLOCK), -(-cols // BLOCK)
    padded = torch.zeros(nr * BLOCK, nc * BLOCK, dtype=torch.float32, device=weight.device)
    padded[:rows, :cols] = weight.float()
    blocks = padded.view(nr, BLOCK, nc, BLOCK)
    scale_inv = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / FP8_MAX
    quantised = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return quantised.view(nr * BLOCK, nc * BLOCK)[:rows, :cols].contiguous(), scale_inv


def dequantize_block_fp8(quantised: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """The float32 weight a block-FP8 pair stands for."""
    rows, cols = quantised.shape
    scale = scale_inv.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:rows, :cols]
    return quantised.float() * scale


def is_quantised(name: str) -> bool:
    """Whether the checkpoint tensor ``name`` is a weight that FP8 checkpoints store in FP8."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in _QUANTISED


def quantize_checkpoint_fp8(source: str | Path, target: str | Path) -> Path:
    """Write an FP8 copy of the 16-bit safetensors checkpoint ``source`` to ``target``: quantised
    linear weights with their ``weight_scale_inv``, everything else unchanged, tokenizer files
    copied, and config.json with :data:`QUANTIZATION_CONFIG`. Quantises on a GPU where there is one."""
    from safetensors.torch import load_file, save_file

    device = "cuda" if torch.cuda.is_available() else "cpu"
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    index = "model.safetensors.index.json"
    weight_map: dict[str, str] = {}
    for path in source.iterdir():
        if path.suffix == ".safetensors":
            tensors = {}
            for name, tensor in load_file(path, device=device).items():
                if is_quantised(name):
                    tensors[name], tensors[name + "_scale_inv"] = quantize_block_fp8(tensor)
                else:
                    tensors[name] = tensor
            save_file({k: v.cpu() for k, v in tensors.items()}, target / path.name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, path.name))
        elif path.name not in ("config.json", index) and path.is_file():
            shutil.copy(path, target / path.name)
    if (source / index).exists():  # sharded: the index must name the new scale tensors too
        (target / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = QUANTIZATION_CONFIG
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target
