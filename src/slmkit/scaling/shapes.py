"""A LLaMA-style model shape (layers, width, heads) for a parameter count.

Laws speak of N; memory, attention FLOPs and a recipe need a shape. Among widths 16, 32, 48 and
multiples of 64 (heads of 64; 32 below 128; 16 below 64) and depths 1..128, we take the shapes whose parameter count is
within 10% of the target (or, when none is, the nearest) and, of those, the one whose width/depth ratio is nearest 64 below
~1B parameters and 128 from ~10B (LLaMA-7B is 4096/32 = 128, our tiny-llama 384/6 = 64, phi-1.5 85);
Kaplan et al. found loss nearly flat over a wide range of such ratios.

Which parameters count as N is the caller's `count`: "total" (Chinchilla), "non-embedding" (every
weight but the input embedding table, as models/accounting.py) or "layers" (Kaplan: neither the
embedding nor the output head).
"""

from __future__ import annotations

import math

from slmkit.errors import SlmError, check_choice
from slmkit.models.config import ModelConfig
from slmkit.models.presets import LLAMA_STYLE
from slmkit.scaling.memory import total_params

COUNTS = ("total", "non-embedding", "layers")


def llama_config(d_model: int, n_layers: int, vocab_size: int, seq_len: int) -> ModelConfig:
    """The LLaMA-style ModelConfig of that width and depth (heads of 64; 32 below width 128; 16 below 64)."""
    head = 64 if d_model >= 128 else 32 if d_model >= 64 else 16
    multiple_of = 256 if d_model >= 512 else 64
    return ModelConfig(**LLAMA_STYLE, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                       n_heads=max(1, d_model // head), multiple_of=multiple_of, max_seq_len=seq_len)


def param_count(cfg: ModelConfig, count: str = "total") -> int:
    """Parameters of a config as `count` counts them, in closed form (memory.total_params, which equals
    accounting.count_params); "layers" keeps the final norm."""
    embed = cfg.vocab_size * cfg.d_model
    total = total_params(cfg)
    if count == "total":
        return total
    return total - embed - (0 if count == "non-embedding" or cfg.tie_embeddings else embed)


def _target_aspect(params: float) -> float:
    """Width/depth wanted: 64 up to 1e9 parameters, 128 from 1e10, log-linear between."""
    t = min(1.0, max(0.0, (math.log10(max(params, 1.0)) - 9.0)))
    return 64 * 2**t


def _widths() -> list[int]:
    """Candidate widths: 16, 32, 48 (CPU sweeps reach below one layer of width 64), then steps of 64 up to
    1024, 128 up to 4096, then 256."""
    return [16, 32, 48, *range(64, 1024, 64), *range(1024, 4096, 128), *range(4096, 32769, 256)]


def shape_for_params(params: float, vocab_size: int, seq_len: int, count: str = "total") -> ModelConfig:
    """The LLaMA-style shape nearest `params` (see the module docstring)."""
    check_choice(count, COUNTS, "parameter count")
    if not params > 0:
        raise SlmError(f"parameter count must be > 0, got {params}")
    aspect = _target_aspect(params)
    best = None
    for n_layers in range(1, 129):
        for d_model in _widths():
            n = param_count(llama_config(d_model, n_layers, vocab_size, seq_len), count)
            size_error = abs(math.log(n / params))
            # within 10% of the target any shape will do (then the aspect decides); beyond, the nearest size
            key = (max(0.0, size_error - math.log(1.1)), abs(math.log(d_model / n_layers / aspect)), size_error,
                   d_model, n_layers)
            best = key if best is None or key < best else best
            if n > 1.3 * params:
                break
    return llama_config(best[3], best[4], vocab_size, seq_len)


def smallest_params(vocab_size: int, seq_len: int, count: str = "total") -> int:
    """N of the smallest shape there is (one layer of the smallest width)."""
    return param_count(llama_config(_widths()[0], 1, vocab_size, seq_len), count)
