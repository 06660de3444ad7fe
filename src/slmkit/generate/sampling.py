"""Sampling settings and their one validation, shared by `slm generate` options and the recipe's
`sample` section. Plain data (no torch), so recipes are checked at load without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from slmkit.errors import SlmError

MIN_TEMPERATURE = 1e-6  # smallest non-zero temperature; below it fp32 logits / t can overflow
CLI_NAMES = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p"}


@dataclass
class SamplingConfig:
    """How the next token is chosen. temperature 0 = greedy (top_k/top_p ignored)."""

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None

    def validate(self, names: dict[str, str] = CLI_NAMES) -> SamplingConfig:
        """Self, or SlmError naming the option (`names`: field -> how the user spelled it).
        NaN and infinities are refused, not sampled with."""
        t = self.temperature
        if not math.isfinite(t) or t < 0:
            raise SlmError(f"{names['temperature']} must be a finite number >= 0 (0 = greedy), got {t}")
        if 0 < t < MIN_TEMPERATURE:  # logits / t would overflow to inf
            raise SlmError(f"{names['temperature']} must be 0 (greedy) or >= {MIN_TEMPERATURE:g}, got {t}")
        if self.top_k is not None and self.top_k < 1:
            raise SlmError(f"{names['top_k']} must be >= 1, got {self.top_k}")
        if self.top_p is not None and not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise SlmError(f"{names['top_p']} must be a number in (0, 1], got {self.top_p}")
        return self
