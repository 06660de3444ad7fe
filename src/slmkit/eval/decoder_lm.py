"""`DecoderLM`: the `LanguageModel` of our autoregressive Decoder (any checkpoint or HF folder we load).

Tokenization follows lm-evaluation-harness exactly, so scores are comparable with its `hf` backend:
trailing spaces of a context move to the continuation; the continuation's tokens are the tail of
encode(context + continuation) after len(encode(context)); an empty context is the prefix token
(bos, else eos); a pair longer than max_length + 1 tokens keeps its last max_length + 1.

Speed (why this is written here and not borrowed from lm-eval): every continuation that shares a
context is packed into ONE row after a single copy of the context. Each continuation's tokens
attend to the context and causally to themselves only, with positions restarting after the
context, so its log-likelihood is the one a separate forward would give; the context is computed
once per item instead of once per choice. Rows whose contexts share a long prefix (k-shot
examples, e.g. MMLU's first-n) batch together and run that prefix once per batch through a KV
cache copied to every row; other rows are sorted by length. Only the positions that are scored
are projected to the vocabulary.

Candidates (natural language to code): "sample" is the base class's k samples ranked by
log-probability; "beam" runs transformers' beam search on the model folder the DecoderLM was loaded
from (`load_decoder_lm` remembers it), ranked by the beams' length-normalized log-probability.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from slmkit.errors import SlmError, check_choice
from slmkit.eval.lm import (CANDIDATE_METHODS, CandidateRequest, Candidates, GenerationRequest, LanguageModel,
                            Progress, rank_distinct)

Encode = Callable[[str], list[int]]


def encode_pair(encode: Encode, context: str, continuation: str, prefix_id: int) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) the way lm-eval's causal models split them."""
    if not context:
        return [prefix_id], encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


def fit_to_window(context: list[int], continuation: list[int], max_length: int) -> tuple[tuple[int, ...], list[int]]:
    """Keep the last max_length + 1 tokens (lm-eval's truncation); the model input is all but the last."""
    whole = (context + continuation)[-(max_length + 1):]
    keep = min(len(continuation), len(whole) - 1)
    return tuple(whole[: len(whole) - keep]), whole[len(whole) - keep:]


@dataclass
class _Row:
    """One packed row: a context, then each continuation's input tokens (all but its last)."""

    context: tuple[int, ...]
    members: list[tuple[int, list[int]]] = field(default_factory=list)  # (request index, continuation)

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) - 1 for _, c in self.members)


PREFIX_KEY = 32  # tokens: contexts sharing their first PREFIX_KEY tokens get their common prefix cached


def shared_prefix_length(batch: list[_Row]) -> int:
    """Tokens every row's context starts with, keeping each row's last context token (it is scored)."""
    first = batch[0].context
    limit = min(len(r.context) for r in batch) - 1
    n = 0
    while n < limit and all(r.context[n] == first[n] for r in batch):
        n += 1
    return n if len(batch) > 1 else 0


def pack_rows(items: list[tuple[int, tuple[int, ...], list[int]]], max_length: int) -> list[_Row]:
    """Group (index, context, continuation) by context into rows of at most max(max_length, one item)."""
    by_context: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for index, context, continuation in items:
        by_context.setdefault(context, []).append((index, continuation))
    rows: list[_Row] = []
    for context, members in by_context.items():
        row = _Row(context)
        for index, continuation in members:
            if row.members and row.length + len(continuation) - 1 > max_length:
                rows.append(row)
                row = _Row(context)
            row.members.append((index, continuation))
        rows.append(row)
    return rows


def _row_tensors(row: _Row, width: int) -> tuple[list[int], list[int], torch.Tensor, list[tuple[int, list[int], list[int]]]]:
    """ids, positions, attend [width, width] and per member (index, continuation, scored positions)."""
    c = len(row.context)
    ids, positions = list(row.context), list(range(c))
    segment = torch.zeros(width, dtype=torch.long)  # 0 = context, k = k-th continuation, -1 = padding
    scored = []
    for k, (index, continuation) in enumerate(row.members, start=1):
        start = len(ids)
        body = continuation[:-1]
        ids += body
        positions += range(c, c + len(body))
        segment[start:start + len(body)] = k
        scored.append((index, continuation, [c - 1, *range(start, start + len(body))]))
    n = len(ids)
    segment[n:] = -1
    slot = torch.arange(width)
    causal = slot[None, :] <= slot[:, None]
    same = segment[:, None] == segment[None, :]
    to_context = (segment[None, :] == 0) & (segment[:, None] >= 0)
    attend = causal & (same | to_context)
    attend[n:] = False
    attend[slot, slot] = True  # padding attends to itself (no empty softmax rows)
    return ids + [0] * (width - n), positions + [0] * (width - n), attend, scored


class DecoderLM(LanguageModel):
    """Our Decoder + a `tokenizers.Tokenizer` behind the harness interface."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "model", batch_size: int = 16,
                 prefix_id: int | None = None, eos_ids: Sequence[int] = (), max_length: int | None = None,
                 autocast: Callable[[], Any] | None = None, folder: str | Path | None = None) -> None:
        self.model = model.eval()
        self.folder = Path(folder) if folder is not None else None  # for beam search through transformers
        self._hf_model: Any = None
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = max(1, int(batch_size))
        self.eos_ids = list(eos_ids)
        self.prefix_id = prefix_id if prefix_id is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self._max_length = max_length or model.config.max_seq_len
        self.autocast = autocast or contextlib.nullcontext
        self.device = model.embed.weight.device

    @property
    def max_length(self) -> int:
        return self._max_length

    def encode(self, text: str) -> list[int]:
        """Token ids with the tokenizer's own special-token rule (as `AutoTokenizer.encode` does)."""
        return self.tokenizer.encode(text).ids

    def describe(self) -> dict:
        cfg = self.model.config
        return {"name": self.name, "params": sum(p.numel() for p in self.model.parameters()),
                "max_length": self.max_length, "vocab_size": cfg.vocab_size,
                "dtype": str(self.model.embed.weight.dtype).removeprefix("torch."), "device": str(self.device)}

    # ------------------------------------------------------------------ scoring

    def loglikelihood(self, requests: Sequence[tuple[str, str]],
                      progress: Progress | None = None) -> list[tuple[float, bool]]:
        items = []
        for index, (context, continuation) in enumerate(requests):
            ctx, cont = encode_pair(self.encode, context, continuation, self.prefix_id)
            if not cont:
                items.append((index, (), []))
                continue
            ctx, cont = fit_to_window(ctx, cont, self.max_length)
            items.append((index, ctx, cont))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        self._score([i for i in items if i[2]], results, progress)
        if progress is not None:
            progress(sum(1 for i in items if not i[2]))
        return results

    def loglikelihood_rolling(self, texts: Sequence[str],
                              progress: Progress | None = None) -> list[tuple[float, int]]:
        items, owners = [], []
        for text_index, text in enumerate(texts):
            tokens = self.encode(text)
            for context, continuation in rolling_windows(tokens, self.prefix_id, self.max_length):
                items.append((len(owners), tuple(context), continuation))
                owners.append(text_index)
        window_results: list[tuple[float, bool]] = [(0.0, True)] * len(items)
        self._score(items, window_results, _in_whole_units(progress, len(texts), len(items)))
        totals = [[0.0, 0] for _ in texts]
        for (index, _, continuation), (logprob, _) in zip(items, window_results):
            totals[owners[index]][0] += logprob
            totals[owners[index]][1] += len(continuation)
        if progress is not None and not items:
            progress(len(texts))
        return [(float(lp), int(n)) for lp, n in totals]

    def _batches(self, rows: list[_Row]) -> list[list[_Row]]:
        """Rows in batches: those whose contexts start with the same PREFIX_KEY tokens (k-shot prompts
        of one subject) batch together, so their common prefix is computed once; the rest by length."""
        def key(row: _Row) -> tuple:
            shared = len(row.context) > 2 * PREFIX_KEY
            return (not shared, row.context[:PREFIX_KEY] if shared else (), -row.length)

        rows = sorted(rows, key=key)
        batches: list[list[_Row]] = []
        for row in rows:
            last = batches[-1] if batches else None
            if last and len(last) < self.batch_size and key(last[0])[:2] == key(row)[:2]:
                last.append(row)
            else:
                batches.append([row])
        return batches

    @torch.inference_mode()
    def _score(self, items: list[tuple[int, tuple[int, ...], list[int]]],
               results: list[tuple[float, bool]], progress: Progress | None) -> None:
        for batch in self._batches(pack_rows(items, self.max_length)):
            width = max(r.length for r in batch)
            built = [_row_tensors(r, width) for r in batch]
            ids = torch.tensor([b[0] for b in built], device=self.device)
            positions = torch.tensor([b[1] for b in built], device=self.device)
            attend = torch.stack([b[2] for b in built]).to(self.device)
            n_scored = max(sum(len(s[2]) for s in b[3]) for b in built)
            gather = torch.zeros(len(batch), n_scored, dtype=torch.long)
            for r, b in enumerate(built):
                flat = [p for s in b[3] for p in s[2]]
                gather[r, :len(flat)] = torch.tensor(flat)
            prefix = shared_prefix_length(batch) if width <= self.model.config.max_seq_len else 0
            with self.autocast():
                if prefix >= PREFIX_KEY:
                    logits = self._forward_after_prefix(ids, positions, attend, gather, prefix)
                else:
                    logits = self.model(ids, positions=positions, attend=attend, logits_at=gather.to(self.device))
            logprobs = F.log_softmax(logits.float(), dim=-1)
            for r, b in enumerate(built):
                offset = 0
                for index, continuation, where in b[3]:
                    rows_lp = logprobs[r, offset:offset + len(where)]
                    offset += len(where)
                    target = torch.tensor(continuation, device=self.device)
                    picked = rows_lp.gather(-1, target[:, None]).squeeze(-1)
                    greedy = bool((rows_lp.argmax(-1) == target).all())
                    results[index] = (float(picked.sum()), greedy)
            if progress is not None:
                progress(sum(len(r.members) for r in batch))

    def _forward_after_prefix(self, ids: torch.Tensor, positions: torch.Tensor, attend: torch.Tensor,
                              gather: torch.Tensor, prefix: int) -> torch.Tensor:
        """The batch's forward with its first `prefix` tokens (the same in every row) run once: their
        keys/values go into a cache copied to every row, then the rest attends to them."""
        rows, width = ids.shape
        one = self.model.new_cache(1, prefix)
        self.model(ids[:1, :prefix], kv_cache=one, logits_at=torch.zeros(1, 1, dtype=torch.long, device=self.device))
        cache = self.model.new_cache(rows, width)
        for (k1, v1), (k, v) in zip(one.layers, cache.layers):
            k[:, :, :prefix] = k1
            v[:, :, :prefix] = v1
        return self.model(ids[:, prefix:], kv_cache=cache, start_pos=prefix, positions=positions[:, prefix:],
                          attend=attend[:, prefix:], logits_at=(gather - prefix).to(self.device))

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[GenerationRequest],
                 progress: Progress | None = None) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in requests]
        # Greedy requests with the same stop strings batch together (longest prompts first);
        # sampled ones run one at a time, each with its own seed, so results do not depend on batching.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if r.temperature == 0:
                groups.setdefault((r.until, r.max_new_tokens), []).append(i)
        for members in groups.values():
            members.sort(key=lambda i: -len(requests[i].prompt))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                texts = self._generate_chunk([requests[i] for i in chunk], seed=None)
                for i, text in zip(chunk, texts):
                    out[i] = [text] * requests[i].n  # greedy: every sample is the same
                if progress is not None:
                    progress(len(chunk))
        for i, request in enumerate(requests):
            if request.temperature == 0:
                continue
            out[i] = [self._generate_chunk([request], seed=request.seed + k)[0] for k in range(request.n)]
            if progress is not None:
                progress(1)
        return out

    def _generate_chunk(self, requests: list[GenerationRequest], seed: int | None) -> list[str]:
        from slmkit.generate.engine import generate

        first = requests[0]
        budget = first.max_new_tokens
        prompts = [self._fit_prompt(r.prompt, budget) for r in requests]
        stop = list(first.until)
        with self.autocast():
            return generate(self.model, self.tokenizer, prompts, budget, temperature=first.temperature,
                            top_p=first.top_p, seed=seed, stop=stop, eos_ids=self.eos_ids,
                            skip_special=True)

    # ------------------------------------------------------------------ candidates

    def candidates(self, requests: Sequence[CandidateRequest],
                   progress: Progress | None = None) -> list[Candidates]:
        """k samples ranked by log-probability ("sample"), or the k best beams ("beam")."""
        for request in requests:
            check_choice(request.method, CANDIDATE_METHODS, "candidate method")
        out: list[Candidates | None] = [None] * len(requests)
        sampled = [i for i, r in enumerate(requests) if r.method == "sample"]
        if sampled:
            for i, result in zip(sampled, super().candidates([requests[i] for i in sampled], progress)):
                out[i] = result
        for i, request in enumerate(requests):
            if request.method == "beam":
                out[i] = self._beam(request)
                if progress is not None:
                    progress(1)
        return out  # type: ignore[return-value]

    def hf_model(self) -> Any:
        """The model folder loaded by transformers (once), on this model's device."""
        if self._hf_model is None:
            if self.folder is None:
                raise SlmError(f"{self.name}: beam search runs transformers on the model folder, and this DecoderLM "
                               "was built without one; load it with load_decoder_lm(folder)")
            from transformers import AutoModelForCausalLM
            from transformers.utils import logging as hf_logging

            from slmkit.interop.folder import read_config_json
            from slmkit.interop.quantized_folder import quantization_spec

            if quantization_spec(read_config_json(self.folder)) is not None:
                raise SlmError(f"{self.folder}: beam search runs transformers, which cannot load a quantized "
                               "folder; use --candidate-method sample")
            hf_logging.disable_progress_bar()
            try:
                self._hf_model = AutoModelForCausalLM.from_pretrained(self.folder).to(self.device).eval()
            finally:
                hf_logging.enable_progress_bar()
        return self._hf_model

    @torch.inference_mode()
    def _beam(self, request: CandidateRequest) -> Candidates:
        """The k best beams (transformers' `generate`), each cut at the first end-of-text token."""
        model = self.hf_model()
        ids = self.encode(self._fit_prompt(request.prompt, request.max_new_tokens))
        prompt = torch.tensor([ids], device=self.device)
        pad = model.config.pad_token_id
        with self.autocast():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 num_beams=request.k, num_return_sequences=request.k,
                                 max_new_tokens=request.max_new_tokens, eos_token_id=self.eos_ids or None,
                                 pad_token_id=self.prefix_id if pad is None else pad, output_scores=True,
                                 return_dict_in_generate=True)
        texts = [self._decode_until_eos(seq[len(ids):].tolist()) for seq in out.sequences]
        if getattr(out, "sequences_scores", None) is not None:
            scores = out.sequences_scores.float().tolist()
        else:  # k = 1 is greedy decoding: the same length-normalized log-probability
            steps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            scores = [float(steps[0].float().mean())]
        return rank_distinct(texts, scores)

    def _decode_until_eos(self, ids: list[int]) -> str:
        cut = next((i for i, t in enumerate(ids) if t in self.eos_ids), len(ids))
        return self.tokenizer.decode(ids[:cut], skip_special_tokens=True)

    def _fit_prompt(self, prompt: str, budget: int) -> str:
        """lm-eval keeps the last max_length - max_new_tokens prompt tokens; where the budget is larger
        than half the context (small models), the prompt keeps half and generation gets the rest."""
        ids = self.encode(prompt)
        room = max(self.max_length // 2, self.max_length - budget)
        return prompt if len(ids) <= room else self.tokenizer.decode(ids[-room:], skip_special_tokens=False)


def _in_whole_units(progress: Progress | None, total: int, parts: int) -> Progress | None:
    """A callback counting `parts` (windows) that reports whole units of `total` (texts) to `progress`."""
    if progress is None:
        return None
    done = {"parts": 0, "reported": 0}

    def update(n: int) -> None:
        done["parts"] += n
        whole = done["parts"] * total // max(1, parts)
        if whole > done["reported"]:
            progress(whole - done["reported"])
            done["reported"] = whole

    return update


def rolling_windows(tokens: list[int], prefix_id: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows (context_len 1): (input context, tokens to score) pairs."""
    windows: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return windows
    first = min(max_length, len(tokens))
    windows.append(([prefix_id], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_length)
        end = done + n
        context = tokens[max(0, end - max_length - 1): end - 1]
        windows.append((context[: len(context) - (n - 1)], tokens[end - n: end]))
        done = end
    return windows


def load_decoder_lm(folder: str | Path, device: str | None = None, batch_size: int = 16,
                    precision: str = "fp32", name: str | None = None) -> DecoderLM:
    """A DecoderLM for a checkpoint or HF folder (`slm eval`'s model loader)."""
    from slmkit.device import autocast_for, resolve_device
    from slmkit.interop.hf import load_hf_folder, model_special_ids
    from slmkit.tokenizer import load_tokenizer

    folder = Path(folder)
    dev = resolve_device(device or "auto", where="--device")
    model = load_hf_folder(folder, device=dev)
    tokenizer = load_tokenizer(folder)
    prefix, eos_ids = model_special_ids(folder, tokenizer)
    autocast = autocast_for(precision, dev)
    return DecoderLM(model, tokenizer, name=name or folder.name, batch_size=batch_size, prefix_id=prefix,
                     eos_ids=eos_ids, autocast=autocast, folder=folder)
