"""Sampling from a Decoder: static KV cache, batched prompts (left padding), stop strings, streaming.

Two layers:
- `generate_tokens(model, prompt_ids, ...)`: token ids in, token ids out (no tokenizer).
- `generate(model, tokenizer, prompts, ...)`: text in, completion text out, with stop strings and
  a `stream(row, text_delta)` callback that only ever sees text that is final.

Temperature 0 is greedy decoding. Rows of a batch are left-padded; positions and the attention
mask make each row's result equal to decoding it alone.
On CPU the decode steps run Linear layers from oneDNN-prepacked weight copies kept on the model
(`slmkit.generate.cpu_packed.decode_layout`): ~1.5-2x faster matrix-vector products than `aten::mm`,
same results.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from slmkit.errors import SlmError
from slmkit.generate.cpu_packed import decode_layout
from slmkit.generate.sampling import SamplingConfig
from slmkit.tokenizer import EOT, PAD

StreamFn = Callable[[int, str], None]
def sample_next(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """Next token ids [B] from last-position logits [B, V]."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > cfg.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class _Batch:
    """Left-padded prompts laid out in cache slots."""

    ids: Tensor  # [B, L] prompt tokens, left padded
    pad: Tensor  # [B] number of pad slots per row
    mask: Tensor | None  # [B, L + max_new] 1 = real token; None when no row is padded


def _layout(prompt_ids: Sequence[Sequence[int]], total: int, pad_id: int, device: torch.device) -> _Batch:
    longest = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), longest), pad_id, dtype=torch.long)
    pad = torch.tensor([longest - len(p) for p in prompt_ids], dtype=torch.long)
    for row, p in enumerate(prompt_ids):
        ids[row, longest - len(p):] = torch.tensor(list(p), dtype=torch.long)
    mask = None
    if int(pad.max()) > 0:
        mask = (torch.arange(total)[None, :] >= pad[:, None]).long().to(device)
    return _Batch(ids.to(device), pad.to(device), mask)


@torch.inference_mode()
def generate_tokens(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    eos_id: int | Collection[int] | None = None,
    pad_id: int = 0,
    on_step: Callable[[list[list[int]]], list[bool] | None] | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (eos excluded); stops a row at eos (one id or several).

    on_step(new_ids_per_row) may return per-row "done" flags (e.g. a stop string was seen).
    Raises SlmError when a prompt is empty or longer than the model context; generation is cut
    to fit the context otherwise.
    """
    sampling = (sampling or SamplingConfig()).validate()
    eos_ids = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    cfg = model.config
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise SlmError("every prompt needs at least one token")
    longest = max(len(p) for p in prompt_ids)
    if longest >= cfg.max_seq_len:
        raise SlmError(
            f"prompt of {longest} tokens does not fit the model context of {cfg.max_seq_len} tokens "
            "(leave room for at least one new token); shorten the prompt"
        )
    max_new_tokens = min(max_new_tokens, cfg.max_seq_len - longest)
    device = model.embed.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    batch = _layout(prompt_ids, longest + max_new_tokens, pad_id, device)
    B = len(prompt_ids)
    cache = model.new_cache(B, longest + max_new_tokens)
    positions = None
    if batch.mask is not None:
        positions = (torch.arange(longest, device=device)[None, :] - batch.pad[:, None]).clamp(min=0)
    logits = model(batch.ids, kv_cache=cache, attention_mask=_mask_upto(batch.mask, longest),
                   positions=positions, last_only=True)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    with decode_layout(model):  # the prompt pass above keeps the usual layout
        for step in range(max_new_tokens):
            token = sample_next(logits[:, -1], sampling, generator)
            values = token.tolist()
            for row, value in enumerate(values):
                if done[row]:
                    continue
                if value in eos_ids:
                    done[row] = True
                else:
                    out[row].append(value)
            if on_step is not None:
                flags = on_step(out)
                if flags:
                    done = [a or b for a, b in zip(done, flags)]
            if all(done) or step == max_new_tokens - 1:
                break
            slot = longest + step
            if batch.mask is not None:
                positions = (slot - batch.pad)[:, None]
            logits = model(token[:, None], kv_cache=cache, start_pos=slot,
                           attention_mask=_mask_upto(batch.mask, slot + 1), positions=positions)
    return out

def _mask_upto(mask: Tensor | None, end: int) -> Tensor | None:
    return None if mask is None else mask[:, :end]


# ---------------------------------------------------------------------------- text level


@dataclass
class TextState:
    """Per-row completion text, stop-string truncation and what has been streamed."""

    stop: list[str]
    text: str = ""
    emitted: int = 0
    stopped: bool = False

    def update(self, text: str) -> str:
        """Set the full completion text; return the newly final part (safe to stream)."""
        cut = first_stop(text, self.stop)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        self.text = text
        safe = len(text) if self.stopped else len(text) - _holdback(text, self.stop)
        delta = text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return delta

    def finish(self) -> str:
        """Whatever was held back (a partial stop string that never completed)."""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta


def _holdback(text: str, stop: list[str]) -> int:
    """Characters at the end of `text` that may still become a stop string or a multi-byte char."""
    hold = 0
    if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence decodes to U+FFFD
        hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
    stream: StreamFn | None = None,
    stats: dict | None = None,
    eos_ids: Collection[int] | None = None,
    skip_special: bool = False,
) -> list[str]:
    """Completions (text after each prompt) from a `tokenizers.Tokenizer`; stops at eos or a stop string.

    stream(row, delta) receives each row's final text as it is produced (nothing is ever retracted).
    `stats`, when given, receives {"prompt_tokens", "new_tokens"} (tokens generated, all rows).
    eos_ids: the ids that end a completion (default: the end-of-text token).
    skip_special: return completions without special tokens (stop strings are still found in the text
    with them, then the text without them is cut at the first stop string: lm-eval's `hf` rule).
    """
    stop = [s for s in (stop or []) if s]
    eos_id = tokenizer.token_to_id(EOT)
    if eos_ids is None:
        eos_ids = [eos_id] if eos_id is not None else []
    pad = tokenizer.token_to_id(PAD)
    prompt_ids = [tokenizer.encode(p).ids or ([eos_id] if eos_id is not None else []) for p in prompts]
    states = [TextState(stop) for _ in prompts]

    def on_step(new_ids: list[list[int]]) -> list[bool]:
        for row, ids in enumerate(new_ids):
            state = states[row]
            if state.stopped:
                continue
            delta = state.update(tokenizer.decode(ids, skip_special_tokens=False))
            if delta and stream is not None:
                stream(row, delta)
        return [s.stopped for s in states]

    need_text = bool(stop) or stream is not None
    ids = generate_tokens(
        model, prompt_ids, max_new_tokens, SamplingConfig(temperature, top_k, top_p), seed=seed,
        eos_id=eos_ids, pad_id=pad if pad is not None else 0, on_step=on_step if need_text else None,
    )
    if stats is not None:
        stats.update(prompt_tokens=sum(map(len, prompt_ids)), new_tokens=sum(map(len, ids)))
    results = []
    for row, (state, new) in enumerate(zip(states, ids)):
        if not need_text:
            state.update(tokenizer.decode(new, skip_special_tokens=False))
        delta = state.finish()
        if delta and stream is not None:
            stream(row, delta)
        if skip_special:
            text = tokenizer.decode(new, skip_special_tokens=True)
            cut = first_stop(text, stop)
            results.append(text[:cut] if cut >= 0 else text)
        else:
            results.append(state.text)
    return results


def first_stop(text: str, stop: list[str]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
