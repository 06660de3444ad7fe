"""One ModelConfig describes every decoder variant (LLaMA family, phi family)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from slmkit.errors import SlmError, check_choice, did_you_mean

FAMILIES = ("llama", "phi")
NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "gelu")


@dataclass
class ModelConfig:
    """Shape and block style of a decoder-only transformer.

    LLaMA family: norm="rmsnorm", mlp="swiglu", parallel_block=False, bias=False.
    phi family:   norm="layernorm", mlp="gelu", parallel_block=True, bias=True,
                  rotary_fraction=0.5, lm_head_bias=True.
    Either with bidirectional=True is the denoiser of a masked-diffusion LM: the same weights and
    FLOPs, attention without the causal mask (objectives/masked_diffusion.py).
    """

    family: str = "llama"  # "llama" | "phi": which HF transformers class it maps to
    vocab_size: int = 32000
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    d_ff: int | None = None  # None = LLaMA rule 2/3*4d rounded up to multiple_of (swiglu) or 4d (gelu)
    multiple_of: int = 256
    max_seq_len: int = 2048
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    norm_eps: float = 1e-6
    mlp: str = "swiglu"  # "swiglu" | "gelu"
    parallel_block: bool = False  # phi: attention and MLP read the same normed input
    rotary_fraction: float = 1.0  # phi-1.5: 32 of 64 head dims are rotated
    rope_theta: float = 10000.0
    bias: bool = False  # biases in attention and MLP projections
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    init_std: float = 0.02
    dropout: float = 0.0
    bidirectional: bool = False  # masked diffusion: every token attends to every other (no causal mask)

    # ------------------------------------------------------------------ derived sizes

    @property
    def head_dim(self) -> int:
        """Width of one attention head (d_model / n_heads)."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (n_kv_heads, or n_heads without grouped-query attention)."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """MLP hidden width: d_ff, else 2/3*4d rounded up to multiple_of (swiglu) or 4d (gelu)."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            hidden = int(2 * 4 * self.d_model / 3)
            return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
        return 4 * self.d_model

    @property
    def rotary_dim(self) -> int:
        """Number of head dims that rotary embeddings rotate (even)."""
        return int(self.head_dim * self.rotary_fraction)

    # ------------------------------------------------------------------ helpers

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed (unknown field names raise SlmError)."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise SlmError(f"unknown model key {key!r}{did_you_mean(key, names)}")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view of the fields."""
        return dataclasses.asdict(self)

    def validate(self) -> ModelConfig:
        """Check cross-field constraints; raise SlmError naming the `model.` key at fault."""
        for key, allowed in (("family", FAMILIES), ("norm", NORMS), ("mlp", MLPS)):
            check_choice(getattr(self, key), allowed, f"model key 'model.{key}'")
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
            if getattr(self, key) < 1:
                raise SlmError(f"model key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            raise SlmError(
                f"model key 'model.d_model' ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise SlmError(
                f"model key 'model.n_kv_heads' ({self.n_kv_heads}) must divide model.n_heads ({self.n_heads})"
            )
        if self.d_ff is not None and self.d_ff < 1:
            raise SlmError(f"model key 'model.d_ff' must be >= 1 or null, got {self.d_ff}")
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise SlmError(f"model key 'model.rotary_fraction' must be in (0, 1], got {self.rotary_fraction}")
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise SlmError(
                f"model key 'model.rotary_fraction': {self.rotary_fraction} * head_dim {self.head_dim} = "
                f"{self.head_dim * self.rotary_fraction:g} rotary dims; it must be an even integer >= 2"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise SlmError(f"model key 'model.dropout' must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0 or self.init_std <= 0 or self.rope_theta <= 0:
            raise SlmError("model keys 'model.norm_eps', 'model.init_std', 'model.rope_theta' must be > 0")
        if self.tie_embeddings and self.lm_head_bias:
            raise SlmError("model keys 'model.tie_embeddings' and 'model.lm_head_bias' cannot both be true")
        return self
