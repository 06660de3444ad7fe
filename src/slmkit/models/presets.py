"""Named model shapes, as data. Published presets match the HF parameter counts exactly."""

from __future__ import annotations

import dataclasses
from typing import Any

from slmkit.errors import SlmError, did_you_mean
from slmkit.models.config import ModelConfig

# Block style of each family; shapes below add sizes only.
LLAMA_STYLE: dict[str, Any] = dict(
    family="llama", norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", parallel_block=False,
    rotary_fraction=1.0, bias=False, lm_head_bias=False, tie_embeddings=False,
)
PHI_STYLE: dict[str, Any] = dict(
    family="phi", norm="layernorm", norm_eps=1e-5, mlp="gelu", parallel_block=True,
    rotary_fraction=0.5, bias=True, lm_head_bias=True, tie_embeddings=False,
)

PRESETS: dict[str, ModelConfig] = {
    # Small enough to train on 2 CPU cores (~15-17M parameters at vocab 8192).
    "tiny-llama": ModelConfig(
        **LLAMA_STYLE, vocab_size=8192, d_model=384, n_layers=6, n_heads=6, multiple_of=256, max_seq_len=1024
    ),
    "tiny-phi": ModelConfig(
        **PHI_STYLE, vocab_size=8192, d_model=384, n_layers=6, n_heads=6, d_ff=1536, max_seq_len=1024
    ),
    # phi-1.5 (Li et al. 2023; docs/REFERENCE.md): 24 layers, 32 heads of 64, MLP 8192, rotary dim 32, vocab 51200.
    "phi-1_5": ModelConfig(
        **PHI_STYLE, vocab_size=51200, d_model=2048, n_layers=24, n_heads=32, d_ff=8192, max_seq_len=2048
    ),
    # LLaMA (Touvron et al. 2023; docs/REFERENCE.md) Table 2; vocab 32000, context 2048.
    "llama-7b": ModelConfig(**LLAMA_STYLE, vocab_size=32000, d_model=4096, n_layers=32, n_heads=32),
    "llama-13b": ModelConfig(**LLAMA_STYLE, vocab_size=32000, d_model=5120, n_layers=40, n_heads=40),
    "llama-33b": ModelConfig(**LLAMA_STYLE, vocab_size=32000, d_model=6656, n_layers=60, n_heads=52),
    "llama-65b": ModelConfig(**LLAMA_STYLE, vocab_size=32000, d_model=8192, n_layers=80, n_heads=64),
}


def get_preset(name: str) -> ModelConfig:
    """A copy of the preset `name`; SlmError naming the closest preset when unknown."""
    if name not in PRESETS:
        raise SlmError(
            f"unknown model preset {name!r}{did_you_mean(name, PRESETS)}; presets: {', '.join(PRESETS)}"
        )
    return dataclasses.replace(PRESETS[name])


def resolve_model_config(model_recipe: Any, vocab_size: int | None = None) -> ModelConfig:
    """Preset + recipe overrides (slmkit.config.ModelRecipe); vocab_size from the tokenizer when given.

    An explicit `model.vocab_size` override wins over the tokenizer's size only if it is larger
    (a padded embedding); a smaller one would index out of range and is refused.
    """
    cfg = get_preset(model_recipe.preset)
    overrides = dict(model_recipe.overrides or {})
    if vocab_size is not None:
        wanted = overrides.get("vocab_size")
        if wanted is not None and wanted < vocab_size:
            raise SlmError(
                f"recipe key 'model.vocab_size' ({wanted}) is smaller than the tokenizer's vocabulary "
                f"({vocab_size}); remove the override or raise it"
            )
        overrides.setdefault("vocab_size", vocab_size)
    return cfg.replace(**overrides)
