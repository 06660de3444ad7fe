"""The objective interface: everything that differs between kinds of training, in one place.

An objective owns, for one kind of training: which stages apply, what the tokenizer stage means,
which model it builds, its batches, its loss, and what the eval and sample stages mean for it.
The trainer, the stages, eval and sample ask the run's objective (`slmkit.objectives.get_objective`);
nothing outside `slmkit.objectives` looks at `recipe.task`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from slmkit.errors import SlmError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from slmkit.config import Recipe
    from slmkit.pipeline.rundir import RunDir


class Objective:
    """Base class; subclasses set `name` and `stages` and fill in the data-dependent methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    stages: ClassVar[tuple[str, ...]] = ()  # the pipeline stages that mean something for it, in order
    bidirectional: ClassVar[bool] = False  # its decoder attends both ways (masked diffusion), not causally
    loss_is_bound: ClassVar[bool] = False  # its validation loss bounds the NLL from above (an ELBO)

    @classmethod
    def for_recipe(cls, recipe: Recipe | None) -> Objective:
        """The objective instance for a recipe (a task may take a different form per recipe)."""
        return cls()

    # ------------------------------------------------------------------ recipe checks

    def check(self, recipe: Recipe) -> None:
        """Load-time checks of the recipe keys this objective reads (no file access)."""

    def check_model(self, recipe: Recipe) -> None:
        """Load-time check of the `model` section (decoder objectives: a decoder preset whose attention,
        causal or bidirectional, is the objective's; masked diffusion sets model.bidirectional itself)."""
        from slmkit.config import check_decoder_model

        given = recipe.model.overrides.get("bidirectional")
        if given is not None and bool(given) != self.bidirectional:
            need = ("a bidirectional denoiser; remove the key or set it to true" if self.bidirectional else
                    "causal attention (it predicts the next token); use task: masked-diffusion for a bidirectional model")
            raise SlmError(f"recipe key 'model.bidirectional': task: {recipe.task} needs {need}")
        if self.bidirectional:
            recipe.model.overrides["bidirectional"] = True
        check_decoder_model(recipe, *self.row_tokens(recipe))

    def preflight(self, recipe: Recipe, run: RunDir, stages: list[str]) -> None:
        """Before any stage runs: the inputs the chosen stages will need exist."""
        if "sample" in stages:
            self.sample_prompts(recipe)
        if recipe.train.init_from and "train" in stages and run.latest_checkpoint() is None:
            from slmkit.pipeline.rundir import resolve_checkpoint

            if not Path(recipe.train.init_from).exists():
                raise SlmError(
                    f"recipe key 'train.init_from': {recipe.train.init_from} does not exist; train that run "
                    "first or set train.init_from=PATH to a checkpoint folder"
                )
            start = resolve_checkpoint(recipe.train.init_from)
            from slmkit.interop.folder import read_config_json
            from slmkit.interop.quantized_folder import quantization_spec

            if quantization_spec(read_config_json(start)) is not None:
                raise SlmError(f"recipe key 'train.init_from': {start} is a quantized checkpoint (slm quantize), "
                               "which cannot be trained; start from the checkpoint it was made from")

    # ------------------------------------------------------------------ tokenizer stage

    def tokenizer_is_current(self, recipe: Recipe, run: RunDir) -> bool:
        raise NotImplementedError

    def make_tokenizer(self, recipe: Recipe, run: RunDir, progress: bool = True) -> Path:
        raise NotImplementedError

    # ------------------------------------------------------------------ training

    def build_model(self, recipe: Recipe, tokenizer: Any) -> torch.nn.Module:
        """A fresh model for the recipe, or the `train.init_from` checkpoint's weights."""
        from slmkit.config import check_context
        from slmkit.models import build_model, resolve_model_config

        vocab_size = tokenizer.get_vocab_size()
        if recipe.train.init_from:
            from slmkit.interop.hf import load_hf_folder
            from slmkit.pipeline.rundir import resolve_checkpoint

            model = load_hf_folder(resolve_checkpoint(recipe.train.init_from)).train()
            if model.config.vocab_size < vocab_size:
                raise SlmError(
                    f"recipe key 'train.init_from': the model's vocabulary ({model.config.vocab_size}) is smaller "
                    f"than the run's tokenizer ({vocab_size}); use the checkpoint's tokenizer"
                )
            return model
        model = build_model(resolve_model_config(recipe.model, vocab_size=vocab_size))
        check_context(model.config.max_seq_len, *self.row_tokens(recipe))
        return model

    def row_tokens(self, recipe: Recipe) -> tuple[int, str]:
        """(longest training row in tokens, the recipe key(s) that set it) for a decoder."""
        return recipe.data.seq_len, "recipe key 'data.seq_len'"

    def batch_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Token positions one batch feeds the model (the trainer's tokens and tok/s)."""
        return batch["input_ids"].numel()

    def batch_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Positions the loss averages over (the weight of a batch in the validation loss)."""
        return int((batch["labels"] != -100).sum())

    def flops_per_token(self, model: torch.nn.Module, recipe: Recipe) -> float:
        """Training FLOPs (forward + backward) per token of `batch_tokens` (MFU and the FLOPs counter)."""
        from slmkit.models.accounting import flops_per_token

        return flops_per_token(model.config, recipe.data.seq_len, training=True)

    def language_model(self, model: torch.nn.Module, tokenizer: Any, batch_size: int, autocast: Any) -> Any:
        """The eval package's LanguageModel over the model being trained (train.eval_tasks)."""
        from slmkit.eval.decoder_lm import DecoderLM
        from slmkit.tokenizer import eos_id

        eos = eos_id(tokenizer)
        return DecoderLM(model, tokenizer, name="training", batch_size=batch_size, prefix_id=eos, eos_ids=[eos],
                         autocast=autocast)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over the batch's target tokens (labels != -100)."""
        return model.loss(batch)

    def train_loader(self, recipe: Recipe, run: RunDir, tokenizer: Any, batch_size: int, seed: int,
                     rank: int = 0, world_size: int = 1) -> Any:
        """This rank's endless, resumable batch source: next_batch(), state_dict(), load_state_dict()."""
        raise NotImplementedError

    def eval_batches(self, recipe: Recipe, run: RunDir, tokenizer: Any, batch_size: int,
                     max_batches: int | None) -> Any:
        """Validation batches in a fixed order (the same on every rank)."""
        raise NotImplementedError

    def val_bytes_per_token(self, recipe: Recipe, run: RunDir) -> float | None:
        """UTF-8 bytes per validation target token when known without decoding (for bits per byte)."""
        return None

    def folder_metadata(self, recipe: Recipe, tokenizer: Any) -> dict[str, Any] | None:
        """What each checkpoint's config.json records under "slmkit" for the model's users (None: nothing)."""
        return None

    def chat_template(self, recipe: Recipe) -> str | None:
        """The Jinja chat template stored with each checkpoint, if the objective has one."""
        return None

    # ------------------------------------------------------------------ eval and sample stages

    def train_token_counts(self, recipe: Recipe, run: RunDir, tokenizer: Any, vocab_size: int) -> np.ndarray:
        """Frequencies of the training target tokens (the unigram baseline of the eval stage)."""
        raise NotImplementedError

    def sample_prompts(self, recipe: Recipe) -> list[str]:
        """The sample stage's prompts as the model sees them."""
        if not recipe.sample.prompts:
            raise SlmError("recipe key 'sample.prompts' is empty; add prompts or drop the sample stage from 'stages'")
        return list(recipe.sample.prompts)

    def sample_settings(self, recipe: Recipe) -> dict[str, Any]:
        """What determines the samples besides the checkpoint and the prompts."""
        import dataclasses

        settings = dataclasses.asdict(recipe.sample)
        settings.pop("prompts")
        settings.pop("device")  # where it runs, not what it samples
        return settings
