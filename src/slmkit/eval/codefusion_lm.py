"""CodeFusion behind the eval package's interface: it answers `candidates` requests only.

A CodeFusion model reads the bare utterance with its encoder and denoises `k` noise draws in one
batch; the draws are decoded (cut at the first padding token), de-duplicated and ranked by the
model's own score (mean log-probability of its tokens), never by a reference. It cannot score a
given continuation, so loglikelihood tasks are skipped by the harness (see `capabilities`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from slmkit.errors import SlmError
from slmkit.eval.lm import CANDIDATES, Candidates, CandidateRequest, DiffusionLM, Progress, rank_distinct


class CodeFusionLM(DiffusionLM):
    capabilities = frozenset({CANDIDATES})
    what = "a CodeFusion model"

    def __init__(self, model: Any, tokenizer: Any, name: str = "codefusion", batch_size: int = 16,
                 autocast: Callable[[], Any] | None = None, steps: int | None = None, clamp: bool = False,
                 truncate: bool = True) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.truncate = truncate  # cut long utterances as training did (eval), or refuse them (slm generate)
        self.batch_size = max(1, batch_size)
        self.autocast = autocast or contextlib.nullcontext
        self.steps, self.clamp = steps, clamp  # defaults for requests that leave them unset
        self.seconds = 0.0  # time spent sampling (seconds per query in results)
        self.queries = 0

    @property
    def max_length(self) -> int:
        return self.model.config.max_utterance_len

    def generate(self, requests, progress=None):
        raise self._unsupported("generate")

    # ------------------------------------------------------------------ candidates

    def encode_utterance(self, text: str) -> list[int]:
        """Utterance ids, cut to the encoder's length (as in training) or, without `truncate`, SlmError."""
        ids = self.tokenizer.encode(text.strip(), add_special_tokens=False).ids or [self.model.config.pad_id]
        limit = self.model.config.max_utterance_len
        if self.truncate:
            return ids[:limit]
        if len(ids) > limit:
            raise SlmError(f"utterance of {len(ids)} tokens exceeds the encoder's {limit} "
                           f"(codefusion max_utterance_len): {text[:60]!r}...")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Code text of one draw: tokens up to the first padding token."""
        pad = self.model.config.pad_id
        ids = list(ids)
        if pad in ids:
            ids = ids[:ids.index(pad)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _check(self, request: CandidateRequest) -> None:
        if request.method != "sample":
            raise SlmError(f"{self.name}: CodeFusion draws candidates from noise; method {request.method!r} "
                           "(beam search) is for decoders")
        if isinstance(request.k, bool) or not isinstance(request.k, int) or request.k < 1:
            raise SlmError(f"number of candidates must be an integer >= 1, got {request.k!r}")
        T = self.model.config.diffusion_steps
        steps = request.steps or self.steps
        if steps is not None and not 1 <= steps <= T:
            raise SlmError(f"sampling steps must be in [1, T={T}] (the model's diffusion steps), got {steps}")

    def candidates(self, requests: Sequence[CandidateRequest],
                   progress: Progress | None = None) -> list[Candidates]:
        for request in requests:
            self._check(request)
        encoded = [self.encode_utterance(r.source) for r in requests]
        out: list[Candidates] = []
        for request, ids in zip(requests, encoded):
            out.append(self._one(request, ids))
            if progress is not None:
                progress(1)
        return out

    def _one(self, request: CandidateRequest, ids: list[int]) -> Candidates:
        """k draws for one utterance (each query has its own seed, so results do not depend on batching)."""
        generator = torch.Generator(device=self.device).manual_seed(request.seed)
        utterance = torch.tensor([ids], device=self.device)
        start = time.perf_counter()
        with self.autocast():
            result = self.model.sample(utterance, num_candidates=request.k, steps=request.steps or self.steps,
                                       clamp=request.clamp or self.clamp, generator=generator,
                                       return_intermediate_every=request.intermediate_every)
        self.seconds += time.perf_counter() - start
        self.queries += 1
        texts = [self.decode(row) for row in result["tokens"][0].tolist()]
        ranked = rank_distinct(texts, result["scores"][0].tolist())
        if request.intermediate_every:
            ranked.intermediate = [{"step": s["step"], "t": s["t"], "texts": [self.decode(r) for r in s["tokens"][0].tolist()]}
                                   for s in result["intermediate"]]
        return ranked

    def describe(self) -> dict:
        cfg = self.model.config
        return {"name": self.name, "kind": "codefusion", "params": self.model.num_params(),
                "diffusion_steps": cfg.diffusion_steps, "sampling_steps": self.steps or cfg.diffusion_steps,
                "clamp": self.clamp}


def load_codefusion_lm(folder: str | Path, device: str | None = None, batch_size: int = 16,
                       precision: str = "fp32", name: str | None = None, steps: int | None = None,
                       clamp: bool = False, truncate: bool = True) -> CodeFusionLM:
    """A CodeFusionLM over the model folder's weights and tokenizer."""
    from slmkit.device import autocast_for, resolve_device
    from slmkit.interop.folder import load_codefusion_folder
    from slmkit.tokenizer import load_tokenizer

    folder = Path(folder)
    dev = resolve_device(device or "auto", where="--device")
    model = load_codefusion_folder(folder, device=dev)
    tokenizer = load_tokenizer(folder)
    autocast = autocast_for(precision, dev)
    return CodeFusionLM(model, tokenizer, name=name or folder.name, batch_size=batch_size, autocast=autocast,
                        steps=steps, clamp=clamp, truncate=truncate)
