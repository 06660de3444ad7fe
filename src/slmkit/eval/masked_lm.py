"""A masked-diffusion LM behind the eval package's interface: `candidates` and `generate`.

It reads the prompt exactly as it was fine-tuned (for natural language to code the AR baseline's
`utterance <|assistant|>`), fills an answer of `length` mask tokens with the low-confidence
remasking sampler (`generate.masked_diffusion`), k draws per query in one batch, and ranks the
distinct answers by the model's own score (mean log-probability of the committed tokens). It cannot
score a given continuation exactly (its likelihood is only bounded), so loglikelihood tasks are
skipped by the harness (see `capabilities`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from slmkit.errors import SlmError
from slmkit.eval.lm import CANDIDATES, GENERATE, Candidates, CandidateRequest, DiffusionLM, GenerationRequest, \
    Progress, rank_distinct
from slmkit.generate.masked_diffusion import MaskedSampling, masked_sample

DEFAULT_LENGTH = 64


class MaskedDiffusionLM(DiffusionLM):
    capabilities = frozenset({CANDIDATES, GENERATE})
    what = "a masked-diffusion model"
    answers = "its likelihood is only bounded; candidates and generate only"

    def __init__(self, model: Any, tokenizer: Any, name: str = "masked-diffusion", batch_size: int = 16,
                 autocast: Callable[[], Any] | None = None, answer_len: int | None = None, steps: int | None = None,
                 block_size: int | None = None, truncate: bool = True) -> None:
        from slmkit.tokenizer import eos_id, mask_id

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.batch_size = max(1, batch_size)
        self.autocast = autocast or contextlib.nullcontext
        self.mask_id, self.eos_id = mask_id(tokenizer), eos_id(tokenizer)
        self.answer_len = answer_len or DEFAULT_LENGTH  # the length it was fine-tuned to fill
        self.steps, self.block_size = steps, block_size  # defaults for requests that leave them unset
        self.truncate = truncate  # cut long prompts from the left (eval), or refuse them (slm generate)
        self.seconds = 0.0
        self.queries = 0

    @property
    def max_length(self) -> int:
        return self.model.config.max_seq_len

    # ------------------------------------------------------------------ sampling

    def options(self, length: int | None, steps: int | None, block_size: int | None,
                temperature: float) -> MaskedSampling:
        """The sampling options of a request: its own values, else this LM's, else the answer length."""
        length = length or self.answer_len
        return MaskedSampling(length=length, steps=steps or self.steps or length,
                              block_size=block_size or self.block_size, temperature=temperature)

    def encode_prompt(self, text: str, length: int) -> list[int]:
        """Prompt ids; too long for the context with the answer: cut from the left, or SlmError."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        room = self.max_length - length
        if len(ids) > room:
            if not self.truncate or room < 1:
                raise SlmError(f"prompt of {len(ids)} tokens plus --length {length} exceeds the model context of "
                               f"{self.max_length} tokens: {text[:60]!r}")
            ids = ids[len(ids) - room:]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text: tokens before the first end-of-text."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _sample(self, prompt: str, options: MaskedSampling, k: int, seed: int,
                intermediate_every: int | None = None) -> dict:
        ids = self.encode_prompt(prompt, options.length)
        options.check(len(ids), self.max_length)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        start = time.perf_counter()
        with self.autocast():
            result = masked_sample(self.model, ids, self.mask_id, self.eos_id, options, num_candidates=k,
                                   generator=generator, return_intermediate_every=intermediate_every)
        self.seconds += time.perf_counter() - start
        self.queries += 1
        return result

    def candidates(self, requests: Sequence[CandidateRequest],
                   progress: Progress | None = None) -> list[Candidates]:
        checked = []
        for r in requests:
            if r.method != "sample":
                raise SlmError(f"{self.name}: a masked-diffusion model draws candidates by sampling; method "
                               f"{r.method!r} (beam search) is for decoders")
            if isinstance(r.k, bool) or not isinstance(r.k, int) or r.k < 1:
                raise SlmError(f"number of candidates must be an integer >= 1, got {r.k!r}")
            options = self.options(r.length, r.steps, r.block_size, r.temperature)
            options.check(0, self.max_length)
            checked.append(options)
        out = []
        for r, options in zip(requests, checked):
            result = self._sample(r.prompt, options, r.k, r.seed, r.intermediate_every)
            texts = [self.decode(row) for row in result["tokens"].tolist()]
            ranked = rank_distinct(texts, result["scores"].tolist())
            if r.intermediate_every:
                ranked.intermediate = [{"step": s["step"], "t": s["step"],
                                        "texts": [self.decode(row) for row in s["tokens"].tolist()]}
                                       for s in result["intermediate"]]
            out.append(ranked)
            if progress is not None:
                progress(1)
        return out

    def generate(self, requests: Sequence[GenerationRequest], progress: Progress | None = None) -> list[list[str]]:
        """n answers of max_new_tokens positions (steps: this LM's, else one token per step), cut at stops."""
        out = []
        for r in requests:
            options = self.options(r.max_new_tokens, None, None, r.temperature)
            result = self._sample(r.prompt, options, r.n, r.seed)
            texts = []
            for row in result["tokens"].tolist():
                text = self.decode(row)
                cuts = [text.find(s) for s in r.until if s and s in text]
                texts.append(text[:min(cuts)] if cuts else text)
            out.append(texts)
            if progress is not None:
                progress(1)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "kind": "masked-diffusion", "params": self.model.num_params(),
                "answer_len": self.answer_len, "sampling_steps": self.steps or self.answer_len,
                "block_size": self.block_size}


def masked_metadata(folder: str | Path) -> dict | None:
    """The "masked_diffusion" entry of a checkpoint's config.json (None for other model folders)."""
    from slmkit.interop.folder import read_config_json
    from slmkit.objectives.masked_diffusion import METADATA_KEY

    ours = read_config_json(folder).get("slmkit")
    entry = ours.get(METADATA_KEY) if isinstance(ours, dict) else None
    return entry if isinstance(entry, dict) else None


def load_masked_lm(folder: str | Path, device: str | None = None, batch_size: int = 16, precision: str = "fp32",
                   name: str | None = None, steps: int | None = None, length: int | None = None,
                   block_size: int | None = None, truncate: bool = True) -> MaskedDiffusionLM:
    """A MaskedDiffusionLM over a masked-diffusion checkpoint's weights and tokenizer."""
    from slmkit.device import autocast_for, resolve_device
    from slmkit.interop.hf import load_hf_folder
    from slmkit.tokenizer import load_tokenizer

    folder = Path(folder)
    dev = resolve_device(device or "auto", where="--device")
    model = load_hf_folder(folder, device=dev)
    meta = masked_metadata(folder) or {}
    answer_len = length or meta.get("answer_len")
    return MaskedDiffusionLM(model, load_tokenizer(folder), name=name or folder.name, batch_size=batch_size,
                             autocast=autocast_for(precision, dev), answer_len=answer_len if isinstance(answer_len, int)
                             else None, steps=steps, block_size=block_size, truncate=truncate)


def masked_sampling_for(folder: str | Path, length: int | None, steps: int | None, block_size: int | None,
                        temperature: float | None) -> MaskedSampling:
    """The sampling options the command-line values give for a checkpoint, checked against its context
    before any weights load (SlmError: steps outside 1..length, a length beyond the context, a block
    size that does not divide the length)."""
    from slmkit.interop.hf import read_hf_config

    answer_len = (masked_metadata(folder) or {}).get("answer_len")
    length = length or (answer_len if isinstance(answer_len, int) else DEFAULT_LENGTH)
    options = MaskedSampling(length=length, steps=steps or length, block_size=block_size,
                             temperature=0.0 if temperature is None else temperature)
    return options.check(0, read_hf_config(folder).max_seq_len)
