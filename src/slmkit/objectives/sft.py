"""Supervised fine-tuning: loss on response tokens only, phi-1.5 prompt formats as chat templates.

The tokenizer stage copies the `train.init_from` checkpoint's tokenizer (there is no data stage:
examples are read from `sft.path` and packed on the fly).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError
from slmkit.objectives.base import Objective

if TYPE_CHECKING:
    import numpy as np

    from slmkit.config import Recipe
    from slmkit.pipeline.rundir import RunDir


class SFTObjective(Objective):
    name = "sft"
    description = "fine-tuning on prompt/response pairs (sft.path), loss on response tokens only"
    stages = ("tokenizer", "train", "eval", "sample", "report")

    def check(self, recipe: Recipe) -> None:
        from slmkit.data.sft import get_template

        get_template(recipe.sft.template)
        if not recipe.sft.path:
            raise SlmError("recipe key 'sft.path' is required for task: sft (a jsonl of prompt/response pairs)")

    def preflight(self, recipe: Recipe, run: RunDir, stages: list[str]) -> None:
        from slmkit.data.sft import resolve_sft_path

        resolve_sft_path(recipe.sft.path)
        if recipe.sft.val_path:
            resolve_sft_path(recipe.sft.val_path, "sft.val_path")
        super().preflight(recipe, run, stages)

    # ------------------------------------------------------------------ tokenizer: the init_from checkpoint's

    def _source_tokenizer(self, recipe: Recipe) -> Path | None:
        from slmkit.tokenizer import TOKENIZER_FILE

        return Path(recipe.train.init_from) / TOKENIZER_FILE if recipe.train.init_from else None

    def tokenizer_is_current(self, recipe: Recipe, run: RunDir) -> bool:
        return run.tokenizer.is_file()

    def make_tokenizer(self, recipe: Recipe, run: RunDir, progress: bool = True) -> Path:
        from slmkit.fileio import atomic_write_bytes

        src = self._source_tokenizer(recipe)
        if src is None or not src.is_file():
            where = f"{src} does not exist" if src else "train.init_from is not set"
            raise SlmError(
                f"task: sft needs a tokenizer: {where}; set train.init_from to a checkpoint folder "
                "holding tokenizer.json (e.g. runs/quickstart/ckpt/latest)"
            )
        atomic_write_bytes(run.tokenizer, src.read_bytes())
        return run.tokenizer

    # ------------------------------------------------------------------ training

    def train_loader(self, recipe: Recipe, run: RunDir, tokenizer: Any, batch_size: int, seed: int,
                     rank: int = 0, world_size: int = 1) -> Any:
        from slmkit.data.sft import build_sft_loader

        return build_sft_loader(recipe, tokenizer, "train", batch_size, seed, rank, world_size)

    def eval_batches(self, recipe: Recipe, run: RunDir, tokenizer: Any, batch_size: int,
                     max_batches: int | None) -> Any:
        from slmkit.data.sft import iter_sft_eval_batches

        return iter_sft_eval_batches(recipe, tokenizer, batch_size, max_batches)

    def chat_template(self, recipe: Recipe) -> str | None:
        from slmkit.data.sft import chat_template

        return chat_template(recipe.sft.template)

    # ------------------------------------------------------------------ eval and sample

    def train_token_counts(self, recipe: Recipe, run: RunDir, tokenizer: Any, vocab_size: int) -> np.ndarray:
        import numpy as np

        from slmkit.data.sft import load_sft_split, tokenize_examples

        counts = np.zeros(vocab_size, dtype=np.int64)
        conversations = load_sft_split(recipe, "train")
        examples, _ = tokenize_examples(tokenizer, recipe.sft.template, conversations, recipe.data.seq_len + 1)
        for ex in examples:
            counts += np.bincount(ex.ids[1:][ex.trained[1:]], minlength=vocab_size)[:vocab_size]
        return counts

    def sample_prompts(self, recipe: Recipe) -> list[str]:
        from slmkit.data.sft import format_prompt

        return [format_prompt(recipe.sft.template, p) for p in super().sample_prompts(recipe)]

    def sample_settings(self, recipe: Recipe) -> dict[str, Any]:
        return {**super().sample_settings(recipe), "template": recipe.sft.template}
