"""Where training batches come from: packed pretraining shards or SFT pairs (dispatch on `recipe.task`).

Every loader has the BlockLoader interface: next_batch() -> {"input_ids", "labels"} ([B, T] long),
state_dict() / load_state_dict() (JSON-serialisable, so the data position is saved with checkpoints).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError


def ensure_inputs(recipe, run_dir: Path, progress: bool = True) -> None:
    """Run the stages training needs when their outputs are missing (tokenizer, data shards).

    Pretraining: `slm data prepare` (which also trains the tokenizer). SFT: the tokenizer of the
    `train.init_from` checkpoint is copied into the run folder when the run has none.
    """
    if recipe.task == "sft":
        tok = run_dir / "tokenizer.json"
        src = Path(recipe.train.init_from) / "tokenizer.json" if recipe.train.init_from else None
        if not tok.is_file() and src is not None and src.is_file():
            tmp = run_dir / ".tokenizer.json.tmp"
            shutil.copyfile(src, tmp)
            tmp.replace(tok)
        if not tok.is_file():
            where = f"{src} does not exist" if src else "train.init_from is not set"
            raise SlmError(
                f"task: sft needs a tokenizer: {where}; set train.init_from to a checkpoint folder "
                "holding tokenizer.json (e.g. runs/quickstart/ckpt/latest)"
            )
        return
    if not (run_dir / "data" / "manifest.json").is_file():
        from slmkit.data.prepare import prepare_data

        prepare_data(recipe, run_dir, progress=progress)


def load_run_tokenizer(run_dir: Path):
    """The run's tokenizer.json as an HF tokenizer."""
    from slmkit.tokenizer import load_tokenizer

    path = run_dir / "tokenizer.json"
    if not path.is_file():
        raise SlmError(f"{path} is missing; run `slm tokenizer train` or `slm data prepare` first")
    return load_tokenizer(path)


def train_loader(recipe, run_dir: Path, tokenizer, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> Any:
    """The training batch source of this rank (its rows of each global batch)."""
    if recipe.task == "sft":
        from slmkit.data.sft import build_sft_loader

        return build_sft_loader(recipe, run_dir, tokenizer, "train", batch_size, seed, rank, world_size)
    from slmkit.data.loader import BlockLoader

    return BlockLoader(run_dir / "data", "train", recipe.data.seq_len, batch_size, seed,
                       rank=rank, world_size=world_size)


def eval_batches(recipe, run_dir: Path, tokenizer, batch_size: int, max_batches: int) -> Iterable[dict]:
    """Validation batches (the same on every rank), or nothing when the run has no validation split."""
    if recipe.task == "sft":
        from slmkit.data.sft import iter_sft_eval_batches

        return iter_sft_eval_batches(recipe, run_dir, tokenizer, batch_size, max_batches)
    from slmkit.data.loader import iter_eval_batches

    return iter_eval_batches(run_dir / "data", "val", recipe.data.seq_len, batch_size, max_batches)


def val_bytes_per_token(recipe, run_dir: Path) -> float | None:
    """Bytes of text per validation token (for bits per byte), from the data manifest; None if unknown."""
    if recipe.task == "sft":
        return None
    from slmkit.data.loader import read_manifest

    try:
        val = read_manifest(run_dir / "data")["splits"]["val"]
    except (KeyError, FileNotFoundError, SlmError):
        return None
    tokens, nbytes = val.get("tokens"), val.get("bytes")
    return nbytes / tokens if tokens and nbytes else None
