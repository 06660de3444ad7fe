"""What the natural-language-to-code objectives share (CodeFusion, the AR baseline, later masked
diffusion): the `code` recipe section, the tokenizer of the data sources, two training stages
(code alone for `code.pretrain_steps` steps, then utterance/code pairs) and the codefusion-* eval task.

Both stages run in ONE trainer run (one optimizer, one schedule, one step counter), so resume after a
kill, DDP/FSDP, bad-step skipping, metrics and checkpoints are the trainer's own; the loader switches
from stage-1 to stage-2 batches after pretrain_steps * grad_accum micro-batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError
from slmkit.objectives.base import Objective

if TYPE_CHECKING:
    from slmkit.config import Recipe
    from slmkit.data.nl2code import Collate
    from slmkit.pipeline.rundir import RunDir


def eval_task_name(language: str) -> str:
    """The eval task of a benchmark language: codefusion-bash | codefusion-python | codefusion-cf."""
    return f"codefusion-{language.lower()}"


class Nl2CodeObjective(Objective):
    """Base of the two-stage objectives; subclasses give `collate` (and their model)."""

    stages = ("tokenizer", "train", "eval", "report")

    # ------------------------------------------------------------------ checks

    def check(self, recipe: Recipe) -> None:
        from slmkit.data.nl2code import canonical_language
        from slmkit.eval.tasks import RUN_VALIDATION

        code = recipe.code
        if not code.language:
            raise SlmError(f"recipe key 'code.language' is required for task: {self.name}; choose Bash, Python or CF")
        code.language = canonical_language(code.language)
        for key in ("utterance_len", "code_len"):
            if getattr(code, key) < 1:
                raise SlmError(f"recipe key 'code.{key}' must be >= 1, got {getattr(code, key)}")
        total = recipe.train.max_steps  # 'auto' is fixed only once training has measured itself
        if code.pretrain_steps < 0 or (isinstance(total, int) and code.pretrain_steps >= total):
            raise SlmError(f"recipe key 'code.pretrain_steps' must be in [0, train.max_steps={total}) "
                           f"so that fine-tuning gets steps, got {code.pretrain_steps}")
        for key in ("cpd_fraction", "span_fraction"):
            if not 0.0 <= getattr(code, key) <= 1.0:
                raise SlmError(f"recipe key 'code.{key}' must be in [0, 1], got {getattr(code, key)}")
        if not recipe.data.sources:
            raise SlmError("recipe key 'data.sources' is empty; the tokenizer is trained on them (add the "
                           "codefusion benchmark and code sources)")
        if recipe.eval.tasks == [RUN_VALIDATION]:  # the default: this objective's own task instead
            recipe.eval.tasks = [eval_task_name(code.language)]
        if RUN_VALIDATION in recipe.eval.tasks:
            raise SlmError(f"recipe key 'eval.tasks': {RUN_VALIDATION} does not apply to task: {self.name} (its "
                           f"validation loss is logged during training); use {eval_task_name(code.language)}")

    def preflight(self, recipe: Recipe, run: RunDir, stages: list[str]) -> None:
        from slmkit.data.nl2code import benchmark_path

        benchmark_path(recipe.code.language, recipe.code.benchmark)
        super().preflight(recipe, run, stages)

    # ------------------------------------------------------------------ tokenizer: trained on data.sources

    def tokenizer_is_current(self, recipe: Recipe, run: RunDir) -> bool:
        from slmkit.tokenizer import tokenizer_is_current

        return tokenizer_is_current(recipe, run)

    def make_tokenizer(self, recipe: Recipe, run: RunDir, progress: bool = True) -> Path:
        from slmkit.tokenizer import train_tokenizer

        return train_tokenizer(recipe, run, progress=progress)

    # ------------------------------------------------------------------ data

    def collate(self, recipe: Recipe, tokenizer: Any) -> Collate:
        raise NotImplementedError

    def train_loader(self, recipe: Recipe, run: RunDir, tokenizer: Any, batch_size: int, seed: int,
                     rank: int = 0, world_size: int = 1) -> Any:
        from slmkit.data.nl2code import PairLoader, pretraining_snippets, recipe_pairs, tokenize_pairs

        code = recipe.code
        snippets = pretraining_snippets(recipe, tokenizer) if code.pretrain_steps else None
        pairs = tokenize_pairs(recipe_pairs(recipe, "train"), tokenizer, code.utterance_len, code.code_len)
        return PairLoader(snippets, pairs, self.collate(recipe, tokenizer), batch_size, seed,
                          code.pretrain_steps * recipe.train.grad_accum, rank, world_size)

    def eval_batches(self, recipe: Recipe, run: RunDir, tokenizer: Any, batch_size: int,
                     max_batches: int | None) -> Any:
        from slmkit.data.nl2code import iter_pair_batches, recipe_pairs, tokenize_pairs

        code = recipe.code
        pairs = tokenize_pairs(recipe_pairs(recipe, "test"), tokenizer, code.utterance_len, code.code_len)
        return iter_pair_batches(pairs, self.collate(recipe, tokenizer), batch_size, max_batches)

    def sample_prompts(self, recipe: Recipe) -> list[str]:
        raise SlmError(f"task: {self.name} has no sample stage; use slm generate CKPT --prompt TEXT --num-candidates N")
