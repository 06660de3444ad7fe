"""task: codefusion: CodeFusion's two-stage training (Singh et al. 2023).

Stage 1 on code alone, each row either
- unconditional: the encoder output is replaced by noise and the model learns to generate code, or
- continuous paragraph denoising (GENIE, `code.cpd`): the encoder reads the snippet with one
  contiguous span of about `code.span_fraction` of its tokens replaced by the mask token and the
  model learns to generate the whole snippet;
stage 2 on (utterance, code) pairs. The loss is the model's GENIE loss (models/codefusion.py).
The model's code_len and max_utterance_len come from the `code` section (one source of truth).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError
from slmkit.objectives.nl2code import Nl2CodeObjective

if TYPE_CHECKING:
    import numpy as np
    import torch

    from slmkit.config import Recipe
    from slmkit.data.nl2code import Collate

SHAPE_KEYS = ("code_len", "max_utterance_len", "vocab_size", "pad_id", "mask_id")


def encoder_len(recipe: Recipe) -> int:
    """Encoder width: utterances in stage 2, hidden-span snippets (<= code_len tokens) in stage 1."""
    return max(recipe.code.utterance_len, recipe.code.code_len)


def codefusion_config(recipe: Recipe, tokenizer: Any = None) -> Any:
    """The recipe's CodeFusionConfig: preset + model overrides + the code section's lengths (+ the
    tokenizer's vocabulary and pad/mask ids when given)."""
    from slmkit.models.codefusion_config import get_codefusion_preset

    overrides = dict(recipe.model.overrides)
    clash = [k for k in SHAPE_KEYS if k in overrides]
    if clash:
        raise SlmError(f"recipe key 'model.{clash[0]}' is set by the run (code.code_len, code.utterance_len and the "
                       "tokenizer decide it); remove it")
    cfg = get_codefusion_preset(recipe.model.preset).replace(
        **overrides, code_len=recipe.code.code_len, max_utterance_len=encoder_len(recipe))
    if tokenizer is not None:
        from slmkit.tokenizer import mask_id, pad_id

        cfg = cfg.replace(vocab_size=tokenizer.get_vocab_size(), pad_id=pad_id(tokenizer), mask_id=mask_id(tokenizer))
    return cfg


class CodeFusionObjective(Nl2CodeObjective):
    name = "codefusion"
    description = ("CodeFusion: diffusion over code embeddings conditioned on an utterance; stage 1 on code "
                   "(unconditional + hidden-span rows), stage 2 on pairs (code section)")

    def check_model(self, recipe: Recipe) -> None:
        from slmkit.models.codefusion_config import CODEFUSION_PRESETS, is_codefusion_preset

        if not is_codefusion_preset(recipe.model.preset):
            raise SlmError(f"recipe key 'model.preset': task: codefusion needs a CodeFusion preset "
                           f"({', '.join(CODEFUSION_PRESETS)}), got {recipe.model.preset!r}")
        codefusion_config(recipe)
        if recipe.train.init_from:
            raise SlmError("recipe key 'train.init_from' is not supported for task: codefusion (stage 1 is its "
                           "pretraining); remove it")

    def build_model(self, recipe: Recipe, tokenizer: Any) -> torch.nn.Module:
        from slmkit.models.codefusion import build_codefusion

        return build_codefusion(codefusion_config(recipe, tokenizer))

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.loss(batch)["loss"]

    def batch_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["utterance_ids"].numel() + batch["code_ids"].numel()

    def batch_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["code_ids"].numel()  # the loss averages over every code position (padding included)

    def flops_per_token(self, model: torch.nn.Module, recipe: Recipe) -> float:
        from slmkit.models.codefusion import codefusion_forward_flops

        width = encoder_len(recipe)
        return codefusion_forward_flops(model.config, width, training=True) / (width + recipe.code.code_len)

    def language_model(self, model: torch.nn.Module, tokenizer: Any, batch_size: int, autocast: Any) -> Any:
        from slmkit.eval.codefusion_lm import CodeFusionLM

        return CodeFusionLM(model, tokenizer, name="training", batch_size=batch_size, autocast=autocast)

    def collate(self, recipe: Recipe, tokenizer: Any) -> Collate:
        from slmkit.tokenizer import mask_id, pad_id

        return CodeFusionCollate(recipe, pad_id(tokenizer), mask_id(tokenizer)).as_collate()


class CodeFusionCollate:
    """Fixed-shape batches: utterance_ids/mask [B, encoder_len], code_ids/mask [B, code_len], unconditional [B]."""

    def __init__(self, recipe: Recipe, pad: int, mask: int) -> None:
        self.code = recipe.code
        self.width, self.pad, self.mask = encoder_len(recipe), pad, mask

    def _batch(self, utterances: list[list[int]], codes: list[list[int]], uncond: list[bool]) -> dict[str, Any]:
        import torch

        from slmkit.data.nl2code import pad_rows

        utt_ids, utt_mask = pad_rows(utterances, self.width, self.pad)
        code_ids, code_mask = pad_rows(codes, self.code.code_len, self.pad)
        return {"utterance_ids": utt_ids, "utterance_mask": utt_mask, "code_ids": code_ids, "code_mask": code_mask,
                "unconditional": torch.tensor(uncond, dtype=torch.bool)}

    def pretrain(self, codes: list[list[int]], rng: np.random.Generator) -> dict[str, Any]:
        from slmkit.data.nl2code import hide_span

        hidden = [self.code.cpd and rng.random() < self.code.cpd_fraction for _ in codes]
        utterances = [hide_span(c, self.code.span_fraction, self.mask, rng) if h else [self.pad]
                      for c, h in zip(codes, hidden)]
        return self._batch(utterances, codes, [not h for h in hidden])

    def finetune(self, utterances: list[list[int]], codes: list[list[int]]) -> dict[str, Any]:
        return self._batch([u or [self.pad] for u in utterances], codes, [False] * len(codes))

    def as_collate(self) -> Collate:
        from slmkit.data.nl2code import Collate

        return Collate(self.pretrain, self.finetune)
