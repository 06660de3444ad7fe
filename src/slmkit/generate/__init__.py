"""Sampling from decoders: the KV-cache engine (`engine`), the CPU packed-weight path (`cpu_packed`)
and the sampling settings (`sampling`, torch-free). Torch-backed names load lazily, so the recipe
check can use `sampling` without importing torch."""

from __future__ import annotations

import importlib
from typing import Any

from slmkit.generate.sampling import SamplingConfig

_LAZY = {"generate": "slmkit.generate.engine", "generate_tokens": "slmkit.generate.engine",
         "sample_next": "slmkit.generate.engine"}

__all__ = ["SamplingConfig", "generate", "generate_tokens", "sample_next"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slmkit.generate' has no attribute {name!r}")
