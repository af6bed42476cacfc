"""Small random-weight checkpoints, built locally with a fixed seed.

PoC does not depend on weight values, so a random model of the right shape measures real speed and
a tiny one exercises every code path in tests and in the default configuration on a CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch

Architecture = Literal["qwen3", "llama", "qwen3_moe"]

# Shapes of the built-in models: "tiny" and "tiny-moe" for tests and the CPU default,
# "qwen3-0.6b-shape" for benchmarks (the real Qwen3-0.6B's layer shapes, random weights), and
# "qwen3-30b-a3b-8l-shape": Qwen3-30B-A3B's layer shapes (128 experts, 8 routed per token) with 8
# of its 48 layers, so that it builds and starts on one GPU in minutes (10 GB in bf16). Per-layer
# work per token is the real model's; a nonce costs 8/48 of its forward.
SHAPES: dict[str, dict[str, int | bool]] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, intermediate_size=256, vocab_size=1024, max_position_embeddings=1024),
    "tiny-moe": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=32, intermediate_size=256, moe_intermediate_size=64, num_experts=8,
                     num_experts_per_tok=2, norm_topk_prob=True, vocab_size=1024, max_position_embeddings=1024),
    "qwen3-0.6b-shape": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                             num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                             vocab_size=151936, max_position_embeddings=4096),
    "qwen3-30b-a3b-8l-shape": dict(hidden_size=2048, num_hidden_layers=8, num_attention_heads=32,
                                   num_key_value_heads=4, head_dim=128, intermediate_size=6144,
                                   moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                                   norm_topk_prob=True, vocab_size=151936, max_position_embeddings=4096),
}
# Names that `model` settings accept for the built-in checkpoints.
BUILTIN_MODELS: dict[str, tuple[Architecture, str]] = {
    "poc-tiny-qwen3": ("qwen3", "tiny"),
    "poc-tiny-llama": ("llama", "tiny"),
    "poc-tiny-qwen3-moe": ("qwen3_moe", "tiny-moe"),
    "poc-qwen3-0.6b-random": ("qwen3", "qwen3-0.6b-shape"),
    "poc-qwen3-30b-a3b-8l-random": ("qwen3_moe", "qwen3-30b-a3b-8l-shape"),
}
# transformers (config, model) classes of each architecture.
_ARCHITECTURES: dict[Architecture, tuple[str, str]] = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
}
# Bumped whenever what a built-in checkpoint contains changes, so caches are rebuilt.
_DONE_MARKER = "poc_serve_built_v2.json"
# A small corpus for the built-in byte-level BPE tokenizer (no download needed).
_TOKENIZER_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Proof of compute nodes check nonces and report "
    "those whose output lands near the target. Hello, how are you today? I am fine, thank you. "
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Validators recompute samples and flag fraud."
)
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_random_checkpoint(path: str | Path, architecture: Architecture = "qwen3", shape: str = "tiny",
                            dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """Write a random-weight causal LM (config.json + safetensors) to ``path`` and return it.
    Weights are drawn on a GPU where there is one (a GPU-sized model takes minutes on CPUs), so
    the same name may hold other random values on another machine; PoC checks compare the engine
    with a reference that loads the same checkpoint."""
    import transformers

    path = Path(path)
    config_cls, model_cls = _ARCHITECTURES[architecture]
    config = getattr(transformers, config_cls)(**SHAPES[shape], tie_word_embeddings=True)
    config.dtype = dtype
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = getattr(transformers, model_cls)(config).to(dtype)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    build_tokenizer(path, config.vocab_size)
    (path / _DONE_MARKER).write_text(json.dumps({"architecture": architecture, "shape": shape, "seed": seed}))
    return path


def build_tokenizer(path: str | Path, max_vocab: int) -> None:
    """Train a byte-level BPE tokenizer with a ChatML chat template on a built-in corpus and save
    it beside the checkpoint, so completions and chat work without a model hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(max_vocab, 1024), special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_TOKENIZER_CORPUS] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(path)


def default_cache_dir() -> Path:
    """Where built-in checkpoints are built: ``$POC_SERVE_CACHE`` or ``~/.cache/poc_serve``."""
    return Path(os.environ.get("POC_SERVE_CACHE", Path.home() / ".cache" / "poc_serve")) / "models"


def resolve_model(model: str, cache_dir: str | Path | None = None) -> str:
    """Turn a built-in model name into a local checkpoint path (built on first use).

    Anything else (a local path or a hub name) is returned unchanged for vLLM to load.
    """
    if model not in BUILTIN_MODELS:
        return model
    architecture, shape = BUILTIN_MODELS[model]
    target = Path(cache_dir or default_cache_dir()) / model
    if not (target / _DONE_MARKER).exists():
        # Build beside the target and rename, so a concurrent or interrupted build never leaves a
        # half-written checkpoint under the final name.
        tmp = target.with_name(f"{model}.tmp{os.getpid()}")
        build_random_checkpoint(tmp, architecture, shape)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / _DONE_MARKER).exists():
                raise
    return str(target)
