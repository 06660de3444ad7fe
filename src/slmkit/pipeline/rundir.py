"""The run folder: the contract between stages (see DESIGN.md). Holds the resolved recipe.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slmkit.config import Recipe, dump_recipe, to_dict
from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_text

# Keys that may change between invocations on the same run folder (they do not change results
# already on disk): extending training, logging cadence, what to sample.
MUTABLE_PREFIXES = (
    "stages",
    "sample.",
    "train.max_steps",
    "train.max_minutes",
    "train.save_every",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.keep_last",
    "train.device",
    "data.workers",
)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipe mappings, ignoring mutable keys."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not k.startswith(MUTABLE_PREFIXES)]


def open_run_dir(out: str | Path, recipe: Recipe, force: bool = False) -> Path:
    """Create or reuse the run folder `out`, writing the resolved recipe.yaml.

    An existing folder whose recipe differs in a key that changes results is refused unless `force`.
    """
    out = Path(out)
    saved = out / "recipe.yaml"
    # A folder holding only recipe.yaml (an earlier attempt failed before any stage wrote) is free.
    has_products = out.is_dir() and any(p.name != "recipe.yaml" for p in out.iterdir())
    if saved.exists() and has_products and not force:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        diff = recipe_differences(old, to_dict(recipe))
        if diff:
            shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
            raise SlmError(
                f"run folder {out} holds a different recipe (differs in: {shown}); "
                "use another --out or pass --force to overwrite"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, dump_recipe(recipe))
    return out


def default_run_dir(recipe: Recipe) -> Path:
    """runs/NAME for a recipe without --out."""
    return Path("runs") / recipe.name
