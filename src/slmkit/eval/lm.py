"""The one interface through which every task reaches a model (lm-evaluation-harness's shape).

A task never sees weights or tokenizers: it asks a `LanguageModel` for
- `loglikelihood([(context, continuation), ...])` -> [(log p(continuation | context), is_greedy)]
- `loglikelihood_rolling([text, ...])` -> [(log p(text), tokens scored)] over the whole text
- `generate([GenerationRequest, ...])` -> n completions per request
- `candidates([CandidateRequest, ...])` -> up to k distinct programs per utterance, best first by
  the model's own score (natural language to code tasks)

Autoregressive decoders implement all three (`eval.decoder_lm.DecoderLM`); a diffusion model that
cannot score continuations implements `generate` alone and says so in `capabilities`, and the
harness skips the task families it cannot run with a one-line reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LOGLIKELIHOOD, ROLLING, GENERATE = "loglikelihood", "loglikelihood_rolling", "generate"
CANDIDATES = "candidates"
CANDIDATE_METHODS = ("sample", "beam")

Progress = Callable[[int], None]  # called with the number of requests just finished


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete: greedy when temperature is 0; `n` samples (seeds seed..seed+n-1)."""

    prompt: str
    until: tuple[str, ...] = ()
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    n: int = 1
    seed: int = 0


@dataclass(frozen=True)
class CandidateRequest:
    """Up to `k` distinct programs for one utterance (k draws, de-duplicated, best first).

    A decoder continues `prompt` (the utterance in its fine-tuning format); an encoder-conditioned
    model (CodeFusion) reads `source` (the bare utterance). `method` "sample" draws k samples (seeds
    seed..seed+k-1; CodeFusion: k noise draws), "beam" keeps the k best beams (decoders only).
    `steps`, `clamp` and `intermediate_every` are diffusion sampling options (None = the model's own);
    `length` and `block_size` are masked diffusion's (answer positions; semi-autoregressive blocks)."""

    prompt: str
    source: str
    k: int = 5
    method: str = "sample"
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float | None = None
    seed: int = 0
    steps: int | None = None
    clamp: bool = False
    intermediate_every: int | None = None
    length: int | None = None
    block_size: int | None = None


@dataclass
class Candidates:
    """Ranked distinct candidates with the model's scores (higher is better), how many of the k draws
    gave each (`counts`, summing to k), and for diffusion models with `intermediate_every`:
    [{"step", "t", "texts": the k draws decoded at that step}] (the last entry is the final output)."""

    texts: list[str]
    scores: list[float]
    counts: list[int]
    intermediate: list[dict] | None = None

    def draws(self) -> list[str]:
        """The k draws as a list (each distinct text repeated by its count), best first."""
        return [t for t, c in zip(self.texts, self.counts) for _ in range(c)]


def rank_distinct(texts: Sequence[str], scores: Sequence[float]) -> Candidates:
    """De-duplicate (keeping each text's best score) and sort best first (ties: first drawn first)."""
    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    for text, score in zip(texts, scores):
        if text not in best or score > best[text]:
            best[text] = score
        counts[text] = counts.get(text, 0) + 1
    order = sorted(best, key=lambda t: -best[t])
    return Candidates(order, [best[t] for t in order], [counts[t] for t in order])


class LanguageModel(ABC):
    """What the harness needs of a model. Results come back in request order."""

    name: str = "model"
    capabilities: frozenset[str] = frozenset({LOGLIKELIHOOD, ROLLING, GENERATE, CANDIDATES})

    @property
    @abstractmethod
    def max_length(self) -> int:
        """Longest token sequence the model scores in one window."""

    @abstractmethod
    def loglikelihood(self, requests: Sequence[tuple[str, str]],
                      progress: Progress | None = None) -> list[tuple[float, bool]]:
        """(sum of log-probabilities of the continuation's tokens, whether greedy decoding gives them)."""

    @abstractmethod
    def loglikelihood_rolling(self, texts: Sequence[str],
                              progress: Progress | None = None) -> list[tuple[float, int]]:
        """(log p(text) under rolling windows of max_length, number of tokens scored) per text."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest],
                 progress: Progress | None = None) -> list[list[str]]:
        """`request.n` completions per request, each cut before the first stop string."""

    def candidates(self, requests: Sequence[CandidateRequest],
                   progress: Progress | None = None) -> list[Candidates]:
        """Decoders: k samples per request, de-duplicated and ranked by log p(candidate | prompt)."""
        from slmkit.errors import SlmError

        if any(r.method != "sample" for r in requests):
            raise SlmError(f"{self.name}: candidate method {requests[0].method!r} is not supported here; use sample")
        samples = self.generate([GenerationRequest(r.prompt, (), r.max_new_tokens, r.temperature, r.top_p, r.k,
                                                   r.seed) for r in requests], progress=progress)
        pairs = [(r.prompt, text) for r, texts in zip(requests, samples) for text in texts]
        logps = iter(self.loglikelihood(pairs)) if pairs else iter(())
        return [rank_distinct(texts, [next(logps)[0] for _ in texts]) for texts in samples]

    def describe(self) -> dict:
        """What results files record about the model."""
        return {"name": self.name}


class DiffusionLM(LanguageModel):
    """Base of the diffusion models' LanguageModels: no exact likelihood of a given continuation, so
    the loglikelihood request types raise (the harness skips those tasks through `capabilities`)."""

    name: str
    model: object
    what = "a diffusion model"  # for messages
    answers = "candidates only"

    @property
    def device(self):
        return self.model.embed.weight.device  # type: ignore[attr-defined]

    def _unsupported(self, what: str):
        from slmkit.errors import SlmError

        return SlmError(f"{self.name}: {self.what} cannot answer {what} requests ({self.answers})")

    def loglikelihood(self, requests, progress=None):
        raise self._unsupported("loglikelihood")

    def loglikelihood_rolling(self, texts, progress=None):
        raise self._unsupported("loglikelihood_rolling")
