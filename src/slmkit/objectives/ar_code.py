"""task: ar-code: the autoregressive baseline for natural language to code, a decoder from `models/`.

Same tokenizer, same two stages and the same data as task: codefusion:
- stage 1: next-token prediction on each code piece, `<|endoftext|> code <|endoftext|>`;
- stage 2: `utterance <|assistant|> code <|endoftext|>` with the loss on the code and the final
  end-of-text only (the prompt positions are -100). `ar_prompt` is that prompt, so the eval task
  and `slm generate` give the decoder exactly what it was fine-tuned on.
Rows are padded to the longest in the batch (no packing: one example per row, like CodeFusion).
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

SEPARATOR = "<|assistant|>"


def ar_prompt(utterance: str) -> str:
    """What the fine-tuned decoder continues with code."""
    return f"{utterance.strip()}{SEPARATOR}"


def separator_id(tokenizer: Any) -> int:
    """The id of the prompt/code separator token; SlmError when the tokenizer lacks it."""
    sep = tokenizer.token_to_id(SEPARATOR)
    if sep is None:
        raise SlmError(f"the tokenizer lacks the separator token {SEPARATOR}; keep it in tokenizer.special_tokens")
    return sep


def row_len(recipe: Recipe) -> int:
    """The longest training row: utterance, separator, code, end-of-text."""
    return recipe.code.utterance_len + recipe.code.code_len + 2


class ArCodeObjective(Nl2CodeObjective):
    name = "ar-code"
    description = ("autoregressive baseline for CodeFusion: a decoder pretrained on code (stage 1), then "
                   "fine-tuned on utterance -> code pairs (code section)")

    def row_tokens(self, recipe: Recipe) -> tuple[int, str]:
        return row_len(recipe), "code.utterance_len + code.code_len + 2"

    def flops_per_token(self, model: torch.nn.Module, recipe: Recipe) -> float:
        from slmkit.models.accounting import flops_per_token

        return flops_per_token(model.config, row_len(recipe), training=True)

    def collate(self, recipe: Recipe, tokenizer: Any) -> Collate:
        from slmkit.tokenizer import eos_id, pad_id

        return ArCodeCollate(eos_id(tokenizer), pad_id(tokenizer), separator_id(tokenizer)).as_collate()


class ArCodeCollate:
    """input_ids / labels [B, longest row], labels[t] the target of position t (-100: no loss)."""

    def __init__(self, eos: int, pad: int, sep: int) -> None:
        self.eos, self.pad, self.sep = eos, pad, sep

    def _batch(self, rows: list[tuple[list[int], int]]) -> dict[str, Any]:
        """rows: (token ids, number of leading prompt tokens whose next token is not scored)."""
        import torch

        width = max(len(ids) for ids, _ in rows) - 1
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (ids, prompt) in enumerate(rows):
            n = len(ids) - 1
            input_ids[i, :n] = torch.tensor(ids[:-1])
            labels[i, :n] = torch.tensor(ids[1:])
            labels[i, :max(prompt - 1, 0)] = -100
        return {"input_ids": input_ids, "labels": labels}

    def pretrain(self, codes: list[list[int]], rng: np.random.Generator) -> dict[str, Any]:
        del rng
        return self._batch([([self.eos, *c, self.eos], 1) for c in codes])

    def finetune(self, utterances: list[list[int]], codes: list[list[int]]) -> dict[str, Any]:
        return self._batch([([*u, self.sep, *c, self.eos], len(u) + 1) for u, c in zip(utterances, codes)])

    def as_collate(self) -> Collate:
        from slmkit.data.nl2code import Collate

        return Collate(self.pretrain, self.finetune)
