"""Sampling a masked-diffusion LM: low-confidence remasking (LLaDA, Nie et al. 2025, Algorithm 5).

The answer starts as `length` mask tokens after the prompt. At each of `steps` steps the model
predicts every masked position at once; of those in the current block, the `ceil(remaining /
steps left)` most confident predictions are committed and the rest stay masked. With `block_size`
< length the answer is filled block by block, left to right (semi-autoregressive), the steps split
evenly across blocks. With temperature > 0 a prediction is a draw from softmax(logits / T) (the
distribution Gumbel-max sampling gives, drawn by inverting the CDF: one uniform per position rather
than Gumbel noise for every vocabulary entry), else the argmax; its confidence is its probability
under softmax(logits).
A draw stops once an end-of-text token is committed and everything before it is committed.

Written by hand: no library ships a sampler for a bidirectional denoiser over our decoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from slmkit.errors import SlmError


@dataclass(frozen=True)
class MaskedSampling:
    """Options of one sampling call (checked by `check`)."""

    length: int
    steps: int
    block_size: int | None = None  # None = the whole answer is one block
    temperature: float = 0.0

    @property
    def blocks(self) -> int:
        return self.length // (self.block_size or self.length)

    def check(self, prompt_len: int, context: int) -> MaskedSampling:
        """One-line SlmErrors for options that cannot work (the CLI turns them into exit 2)."""
        if self.length < 1:
            raise SlmError(f"--length must be >= 1, got {self.length}")
        if prompt_len + self.length > context:
            after = f" after a prompt of {prompt_len} tokens" if prompt_len else ""
            raise SlmError(f"--length {self.length}{after} exceeds the model context of {context} tokens; use "
                           f"--length <= {max(0, context - prompt_len)}")
        if self.block_size is not None and (self.block_size < 1 or self.length % self.block_size):
            raise SlmError(f"--block-size {self.block_size} must divide --length {self.length}")
        if not 1 <= self.steps <= self.length:
            raise SlmError(f"--steps must be in [1, --length={self.length}] (at least one token is committed per "
                           f"step), got {self.steps}")
        if self.steps < self.blocks:
            raise SlmError(f"--steps {self.steps} is fewer than the {self.blocks} blocks of --block-size "
                           f"{self.block_size}; each block needs a step")
        if not self.temperature >= 0 or not math.isfinite(self.temperature):
            raise SlmError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        return self


def block_steps(steps: int, blocks: int) -> list[int]:
    """Steps per block, as even as possible (earlier blocks take the remainder)."""
    base, extra = divmod(steps, blocks)
    return [base + (i < extra) for i in range(blocks)]


@torch.no_grad()
def masked_sample(model: nn.Module, prompt: list[int], mask_id: int, eos_id: int, options: MaskedSampling,
                  num_candidates: int = 1, generator: torch.Generator | None = None,
                  return_intermediate_every: int | None = None) -> dict:
    """k answers for one prompt, denoised together as one batch.

    Returns {"tokens": [k, length] committed answer ids (after the first end-of-text: end-of-text),
    "scores": [k] mean log-probability of each answer's tokens up to its first end-of-text at the
    moment they were committed, "steps": forward passes run, "intermediate": [{"step", "tokens"}]}
    where the intermediate tokens still hold `mask_id` at uncommitted positions.
    """
    options.check(len(prompt), model.config.max_seq_len)
    device = model.embed.weight.device
    k, P, L = num_candidates, len(prompt), options.length
    x = torch.full((k, P + L), mask_id, dtype=torch.long, device=device)
    x[:, :P] = torch.tensor(prompt, dtype=torch.long, device=device)
    logp = torch.zeros(k, L, device=device)  # log-probability of each committed token when it was committed
    done = torch.zeros(k, dtype=torch.bool, device=device)
    block = options.block_size or L
    intermediate: list[dict] = []
    step = 0
    for b, n_steps in enumerate(block_steps(options.steps, options.blocks)):
        lo, hi = P + b * block, P + (b + 1) * block
        cols = torch.arange(lo, hi, device=device)
        for s in range(n_steps):
            rows = (~done).nonzero().squeeze(-1)  # finished draws leave the batch
            region = x[rows, lo:hi]  # [r, block]
            in_block = region == mask_id
            if not bool(in_block.any()):
                break
            logits = model(x[rows], logits_at=cols.expand(len(rows), -1)).float()  # only the block is projected
            logits[..., mask_id] = float("-inf")  # a prediction is a real token, never the mask itself
            probs = logits.softmax(-1)
            if options.temperature > 0:  # the draw Gumbel-max noise gives, with one uniform per position
                tempered = probs if options.temperature == 1.0 else (logits / options.temperature).softmax(-1)
                cdf = tempered.cumsum(-1)  # inverse-CDF draw (torch.multinomial is ~10x slower on CPU here)
                u = torch.rand((*cdf.shape[:-1], 1), device=device, generator=generator) * cdf[..., -1:]
                pred = torch.searchsorted(cdf, u).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
            else:
                pred = logits.argmax(-1)
            confidence = probs.gather(-1, pred[..., None]).squeeze(-1)
            confidence = torch.where(in_block, confidence, torch.full_like(confidence, -1.0))
            quota = torch.ceil(in_block.sum(-1).float() / (n_steps - s)).long()  # [r]
            order = confidence.argsort(dim=-1, descending=True, stable=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(block, device=device).expand(len(rows), -1))
            commit = in_block & (rank < quota[:, None])
            x[rows, lo:hi] = torch.where(commit, pred, region)
            logp[rows, lo - P:hi - P] = torch.where(commit, confidence.clamp(min=1e-30).log(),
                                                    logp[rows, lo - P:hi - P])
            step += 1
            done |= _finished(x[:, P:], mask_id, eos_id)
            if return_intermediate_every and step % return_intermediate_every == 0:
                intermediate.append({"step": step, "tokens": x[:, P:].clone()})
            if bool(done.all()):
                break
        if bool(done.all()):
            break
    answer = _after_first_eos(x[:, P:], eos_id, mask_id)
    if return_intermediate_every and (not intermediate or intermediate[-1]["step"] != step):
        intermediate.append({"step": step, "tokens": answer.clone()})
    return {"tokens": answer, "scores": _scores(answer, logp, eos_id), "steps": step, "intermediate": intermediate}


def _finished(answer: Tensor, mask_id: int, eos_id: int) -> Tensor:
    """[k] bool: an end-of-text is committed with nothing masked before it."""
    is_eos = answer == eos_id
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), torch.full_like(is_eos[:, 0], answer.shape[1],
                                                                                   dtype=torch.long))
    before = torch.arange(answer.shape[1], device=answer.device)[None, :] < first[:, None]
    return is_eos.any(-1) & ~((answer == mask_id) & before).any(-1)


def _after_first_eos(answer: Tensor, eos_id: int, mask_id: int) -> Tensor:
    """Every position after a row's first end-of-text becomes end-of-text (masks left there are moot)."""
    after = (answer == eos_id).int().cumsum(-1) > 0
    return torch.where(after, torch.full_like(answer, eos_id), answer)


def _scores(answer: Tensor, logp: Tensor, eos_id: int) -> Tensor:
    """Mean committed log-probability over each answer's tokens up to and including its first end-of-text."""
    through_eos = ((answer == eos_id).int().cumsum(-1) - (answer == eos_id).int()) == 0
    return (logp * through_eos).sum(-1) / through_eos.sum(-1).clamp(min=1)
