"""Decoder models: one config, one decoder (LLaMA and phi families), presets as data.

`slmkit.config` imports this package, so torch-backed names load lazily (keeps `slm --help` fast).
"""

from __future__ import annotations

import importlib
from typing import Any

from slmkit.models.config import ModelConfig
from slmkit.models.presets import PRESETS, get_preset, resolve_model_config

_LAZY = {"Decoder": "slmkit.models.decoder", "KVCache": "slmkit.models.decoder", "build_model": "slmkit.models.decoder"}

__all__ = ["PRESETS", "Decoder", "KVCache", "ModelConfig", "build_model", "get_preset", "resolve_model_config"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slmkit.models' has no attribute {name!r}")
