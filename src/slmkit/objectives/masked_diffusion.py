"""task: masked-diffusion: a masked (absorbing-state) discrete diffusion LM (MDLM, LLaDA).

The denoiser is a decoder from `models/` with `bidirectional: true` (no causal mask, no time
embedding): the same parameters and FLOPs as the AR decoder of the same shape. Per sequence,
t ~ U(eps, 1); each maskable token is replaced by the tokenizer's `<|mask|>` with probability t;
the loss is the cross-entropy on the masked positions weighted by 1/t, summed and divided by the
number of maskable tokens. Its expectation is an upper bound (the ELBO) on the negative
log-likelihood per token, so validation bits per byte are a bound on the model's bits per byte,
comparable to (never better than the true value of) an AR model's on the same data.

Two forms, chosen by the recipe:
- with `code.language` (natural language to code, like task: codefusion / ar-code): stage 1 rows
  are code pieces, all maskable; stage 2 rows are `utterance <|assistant|> answer`, where the answer
  is the code followed by end-of-text tokens up to `code.code_len + 1` tokens. The prompt is never
  masked; the padding end-of-text tokens are in the loss, so the model learns the output length.
- without: pretraining on the packed data mixture (tokenizer and data stages, like task: pretrain),
  every token maskable; validation bits per byte is the ELBO bound.

Sampling (low-confidence remasking, semi-autoregressive blocks) is `slmkit.generate.masked_diffusion`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from slmkit.errors import SlmError
from slmkit.objectives.ar_code import row_len, separator_id
from slmkit.objectives.nl2code import Nl2CodeObjective
from slmkit.objectives.pretrain import PretrainObjective

if TYPE_CHECKING:
    import numpy as np
    import torch

    from slmkit.config import Recipe
    from slmkit.data.nl2code import Collate

EPS = 1e-3  # smallest masking rate: the 1/t weight stays finite
EVAL_SEED = 0  # validation masks are drawn from a fixed seed, so the validation loss is repeatable
METADATA_KEY = "masked_diffusion"  # config.json "slmkit" entry of a masked-diffusion checkpoint
PRETRAIN_ANSWER_LEN = 64  # default sampling length of a pretrained (unconditional) model


def masked_diffusion_loss(model: torch.nn.Module, input_ids: torch.Tensor, maskable: torch.Tensor, mask_id: int,
                          attention_mask: torch.Tensor | None = None, eps: float = EPS) -> torch.Tensor:
    """sum over masked positions of CE / t, divided by the number of maskable tokens (nats per token).

    In eval mode the draws come from a seed fixed by the batch's content (a repeatable estimate of the
    bound whose masks still differ between batches)."""
    import torch
    import torch.nn.functional as F

    generator = None
    if not model.training:
        seed = EVAL_SEED + int(input_ids.sum())
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    B, T = input_ids.shape
    t = eps + (1.0 - eps) * torch.rand(B, 1, device=input_ids.device, generator=generator)
    masked = maskable & (torch.rand(B, T, device=input_ids.device, generator=generator) < t)
    noisy = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
    logits = model(noisy, attention_mask=attention_mask)
    ce = F.cross_entropy(logits[masked].float(), input_ids[masked], reduction="none")
    weight = (1.0 / t).expand(B, T)[masked]
    return (ce * weight).sum() / maskable.sum().clamp(min=1)


def _metadata(tokenizer: Any, answer_len: int, prompt_format: str | None) -> dict[str, Any]:
    from slmkit.tokenizer import mask_id

    return {METADATA_KEY: {"mask_token_id": mask_id(tokenizer), "answer_len": answer_len,
                           "prompt_format": prompt_format}}


class _MaskedDiffusionMixin:
    """What both forms share: the bidirectional model, the loss, FLOPs and the in-training LM."""

    loss_is_bound: ClassVar[bool] = True
    bidirectional: ClassVar[bool] = True
    name = "masked-diffusion"
    mask_token: int = -1

    def remember_mask(self, tokenizer: Any) -> None:
        """The loss's mask id (every path to the loss passes a tokenizer through one of these methods)."""
        from slmkit.tokenizer import mask_id

        self.mask_token = mask_id(tokenizer)

    def build_model(self, recipe: Recipe, tokenizer: Any) -> torch.nn.Module:
        self.remember_mask(tokenizer)
        model = super().build_model(recipe, tokenizer)  # type: ignore[misc]
        if not model.config.bidirectional:  # train.init_from a causal checkpoint: same weights, no causal mask
            model.config.bidirectional = True
            for block in model.layers:
                block.attn.causal = False
        return model

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return masked_diffusion_loss(model, batch["input_ids"], batch["maskable"], self.mask_token,
                                     batch.get("attention_mask"))

    def batch_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["maskable"].sum())

    def language_model(self, model: torch.nn.Module, tokenizer: Any, batch_size: int, autocast: Any) -> Any:
        from slmkit.eval.masked_lm import MaskedDiffusionLM

        return MaskedDiffusionLM(model, tokenizer, name="training", batch_size=batch_size, autocast=autocast,
                                 answer_len=self.answer_len())

    def answer_len(self) -> int:
        return PRETRAIN_ANSWER_LEN


class MaskedDiffusionObjective(_MaskedDiffusionMixin, PretrainObjective):
    """The pretraining form: the packed data mixture, every token maskable."""

    description = ("masked (absorbing-state) diffusion with a bidirectional decoder: the data mixture, or with "
                   "code.language natural language to code like codefusion / ar-code")
    stages = ("tokenizer", "data", "train", "eval", "report")

    @classmethod
    def for_recipe(cls, recipe: Recipe | None) -> Any:
        return MaskedCodeObjective() if recipe is not None and recipe.code.language else cls()

    def train_loader(self, recipe: Recipe, run: Any, tokenizer: Any, batch_size: int, seed: int,
                     rank: int = 0, world_size: int = 1) -> Any:
        self.remember_mask(tokenizer)
        return _AllMaskable(super().train_loader(recipe, run, tokenizer, batch_size, seed, rank, world_size))

    def eval_batches(self, recipe: Recipe, run: Any, tokenizer: Any, batch_size: int,
                     max_batches: int | None) -> Any:
        self.remember_mask(tokenizer)
        return (_all_maskable(b) for b in super().eval_batches(recipe, run, tokenizer, batch_size, max_batches))

    def folder_metadata(self, recipe: Recipe, tokenizer: Any) -> dict[str, Any] | None:
        return _metadata(tokenizer, PRETRAIN_ANSWER_LEN, None)

    def sample_prompts(self, recipe: Recipe) -> list[str]:
        raise SlmError("task: masked-diffusion has no sample stage; use slm generate CKPT --prompt TEXT "
                       "--num-candidates N --length L --steps S")


def _all_maskable(batch: dict[str, Any]) -> dict[str, Any]:
    """A packed block: its input tokens, all maskable (the shifted labels stay for counting targets only)."""
    import torch

    return {**batch, "maskable": torch.ones_like(batch["input_ids"], dtype=torch.bool)}


class _AllMaskable:
    """The block loader with masked-diffusion batches (its resume state is the loader's own)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def next_batch(self) -> dict[str, Any]:
        return _all_maskable(self.loader.next_batch())

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class MaskedCodeObjective(_MaskedDiffusionMixin, Nl2CodeObjective):
    """The natural-language-to-code form (recipes/masked-*.yaml)."""

    description = MaskedDiffusionObjective.description

    def __init__(self) -> None:
        self._answer_len = PRETRAIN_ANSWER_LEN  # set from the recipe by `collate`

    def row_tokens(self, recipe: Recipe) -> tuple[int, str]:
        return row_len(recipe), "code.utterance_len + code.code_len + 2"

    def flops_per_token(self, model: torch.nn.Module, recipe: Recipe) -> float:
        from slmkit.models.accounting import flops_per_token

        return flops_per_token(model.config, row_len(recipe), training=True)

    def answer_len(self) -> int:
        return self._answer_len

    def folder_metadata(self, recipe: Recipe, tokenizer: Any) -> dict[str, Any] | None:
        return _metadata(tokenizer, recipe.code.code_len + 1, "ar-code")

    def collate(self, recipe: Recipe, tokenizer: Any) -> Collate:
        from slmkit.tokenizer import eos_id, pad_id

        self.remember_mask(tokenizer)
        self._answer_len = recipe.code.code_len + 1
        return MaskedCodeCollate(eos_id(tokenizer), pad_id(tokenizer), separator_id(tokenizer),
                                 self._answer_len).as_collate()


class MaskedCodeCollate:
    """input_ids [B, longest row], maskable (the answer positions), attention_mask (0 on row padding).

    Stage 2 rows are `utterance <|assistant|> answer`, the answer being the code and end-of-text up to
    `answer_len` tokens (at least one end-of-text), so the model learns where code ends. Stage 1 rows
    are `code <|endoftext|>`, all maskable, padded only to the longest in the batch (like the AR
    baseline's rows: stage-1 compute goes to code, not to padding)."""

    def __init__(self, eos: int, pad: int, sep: int, answer_len: int) -> None:
        self.eos, self.pad, self.sep, self.answer_len = eos, pad, sep, answer_len

    def answer(self, code: list[int]) -> list[int]:
        code = code[: self.answer_len - 1]
        return [*code, *[self.eos] * (self.answer_len - len(code))]

    def _batch(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        """rows: (prompt ids, answer ids)."""
        import torch

        width = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        maskable = torch.zeros((len(rows), width), dtype=torch.bool)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (prompt, answer) in enumerate(rows):
            row = [*prompt, *answer]
            input_ids[i, :len(row)] = torch.tensor(row)
            maskable[i, len(prompt):len(row)] = True
            attention[i, :len(row)] = 1
        return {"input_ids": input_ids, "maskable": maskable, "attention_mask": attention}

    def pretrain(self, codes: list[list[int]], rng: np.random.Generator) -> dict[str, Any]:
        del rng  # the masking is drawn in the loss (torch's generator, restored on resume)
        return self._batch([([], [*c[: self.answer_len - 1], self.eos]) for c in codes])

    def finetune(self, utterances: list[list[int]], codes: list[list[int]]) -> dict[str, Any]:
        return self._batch([([*u, self.sep], self.answer(c)) for u, c in zip(utterances, codes)])

    def as_collate(self) -> Collate:
        from slmkit.data.nl2code import Collate

        return Collate(self.pretrain, self.finetune)
