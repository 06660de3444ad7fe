"""One ModelConfig describes every decoder variant (LLaMA family, phi family)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Shape and block style of a decoder-only transformer.

    LLaMA family: norm="rmsnorm", mlp="swiglu", parallel_block=False, bias=False.
    phi family:   norm="layernorm", mlp="gelu", parallel_block=True, bias=True,
                  rotary_fraction=0.5, lm_head_bias=True.
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
