"""Pretraining: next-token prediction on the packed, mixed shards of the data stage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError
from slmkit.objectives.base import Objective

if TYPE_CHECKING:
    import numpy as np

    from slmkit.config import Recipe
    from slmkit.pipeline.rundir import RunDir


class PretrainObjective(Objective):
    name = "pretrain"
    description = "next-token prediction on the recipe's data mixture (tokenizer and data stages)"
    stages = ("tokenizer", "data", "train", "eval", "sample", "report")

    def tokenizer_is_current(self, recipe: Recipe, run: RunDir) -> bool:
        from slmkit.tokenizer import tokenizer_is_current

        return tokenizer_is_current(recipe, run)

    def make_tokenizer(self, recipe: Recipe, run: RunDir, progress: bool = True) -> Path:
        from slmkit.tokenizer import train_tokenizer

        return train_tokenizer(recipe, run, progress=progress)

    def train_loader(self, recipe: Recipe, run: RunDir, tokenizer: Any, batch_size: int, seed: int,
                     rank: int = 0, world_size: int = 1) -> Any:
        from slmkit.data.loader import BlockLoader

        return BlockLoader(run.data, "train", recipe.data.seq_len, batch_size, seed, rank=rank,
                           world_size=world_size, verify=True)

    def eval_batches(self, recipe: Recipe, run: RunDir, tokenizer: Any, batch_size: int,
                     max_batches: int | None) -> Any:
        from slmkit.data.loader import iter_eval_batches

        return iter_eval_batches(run.data, "val", recipe.data.seq_len, batch_size, max_batches)

    def val_bytes_per_token(self, recipe: Recipe, run: RunDir) -> float | None:
        try:
            val = run.read_manifest()["splits"]["val"]
        except (KeyError, TypeError, SlmError):
            return None
        tokens, nbytes = val.get("tokens"), val.get("bytes")
        return nbytes / tokens if tokens and nbytes else None

    def train_token_counts(self, recipe: Recipe, run: RunDir, tokenizer: Any, vocab_size: int) -> np.ndarray:
        import numpy as np

        from slmkit.data.loader import open_stream

        counts = np.zeros(vocab_size, dtype=np.int64)
        for shard in open_stream(run.data, "train").maps:
            counts += np.bincount(np.asarray(shard), minlength=vocab_size)[:vocab_size]
        return counts
