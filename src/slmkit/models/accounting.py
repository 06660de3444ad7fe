"""Parameter, FLOP and memory accounting for a ModelConfig (no weights are allocated).

FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B), the same bookkeeping as the
Chinchilla appendix F without the small softmax/norm terms:

    forward  = 2 * N_matmul + 4 * n_layers * d_attn * seq_len
    training = 3 * forward  = 6 * N_matmul + 12 * n_layers * d_attn * seq_len

N_matmul is every parameter except the token-embedding table (an embedding lookup is not a matmul;
the LM head is). d_attn = n_heads * head_dim. The attention term counts QK^T and attention-times-V
over the full `seq_len` (no causal halving), as PaLM does for MFU.
"""

from __future__ import annotations

from typing import Any

from slmkit.models.config import ModelConfig


def count_params(cfg: ModelConfig) -> int:
    """Exact parameter count of the decoder (tied weights once), built on the meta device."""
    return _param_counts(cfg)[0]


def count_params_non_embedding(cfg: ModelConfig) -> int:
    """Parameters minus the token-embedding table (N_matmul above)."""
    return _param_counts(cfg)[1]


def _param_counts(cfg: ModelConfig) -> tuple[int, int]:
    import torch

    from slmkit.models.decoder import Decoder

    with torch.device("meta"):
        model = Decoder(cfg)
    return model.num_params(), model.num_params(non_embedding=True)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None, training: bool = False) -> float:
    """Model FLOPs per token at context `seq_len` (default max_seq_len): forward, or training (3x)."""
    seq_len = seq_len or cfg.max_seq_len
    forward = 2 * count_params_non_embedding(cfg) + 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return float(3 * forward if training else forward)


def memory_bytes(cfg: ModelConfig) -> dict[str, Any]:
    """Training memory of weights, gradients and Adam states (activations excluded), plus KV cache.

    fp32: fp32 weights and grads, two fp32 Adam moments (16 bytes/param).
    bf16: mixed precision: bf16 weights and grads, fp32 master weights and Adam moments (16 bytes/param);
    `weights` alone is what inference needs.
    """
    n = count_params(cfg)
    kv_per_token = 2 * cfg.n_layers * cfg.kv_heads * cfg.head_dim
    fp32 = {"weights": 4 * n, "grads": 4 * n, "adam_states": 8 * n, "master_weights": 0}
    bf16 = {"weights": 2 * n, "grads": 2 * n, "adam_states": 8 * n, "master_weights": 4 * n}
    for table in (fp32, bf16):
        table["total_training"] = sum(table.values())
    fp32["kv_cache_per_token"] = 4 * kv_per_token
    bf16["kv_cache_per_token"] = 2 * kv_per_token
    return {"fp32": fp32, "bf16": bf16}


def model_summary(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, Any]:
    """Everything `slm model info` reports, as plain data."""
    seq_len = seq_len or cfg.max_seq_len
    return {
        "params": count_params(cfg),
        "params_non_embedding": count_params_non_embedding(cfg),
        "seq_len": seq_len,
        "flops_per_token_forward": flops_per_token(cfg, seq_len, training=False),
        "flops_per_token_training": flops_per_token(cfg, seq_len, training=True),
        "memory": memory_bytes(cfg),
        "config": {**cfg.to_dict(), "head_dim": cfg.head_dim, "kv_heads": cfg.kv_heads, "ffn_hidden": cfg.ffn_hidden},
    }
