"""The one interface through which every task reaches a model (lm-evaluation-harness's shape).

A task never sees weights or tokenizers: it asks a `LanguageModel` for
- `loglikelihood([(context, continuation), ...])` -> [(log p(continuation | context), is_greedy)]
- `loglikelihood_rolling([text, ...])` -> [(log p(text), tokens scored)] over the whole text
- `generate([GenerationRequest, ...])` -> n completions per request

Autoregressive decoders implement all three (`eval.decoder_lm.DecoderLM`); a diffusion model that
cannot score continuations implements `generate` alone and says so in `capabilities`, and the
harness skips the task families it cannot run with a one-line reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LOGLIKELIHOOD, ROLLING, GENERATE = "loglikelihood", "loglikelihood_rolling", "generate"

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


class LanguageModel(ABC):
    """What the harness needs of a model. Results come back in request order."""

    name: str = "model"
    capabilities: frozenset[str] = frozenset({LOGLIKELIHOOD, ROLLING, GENERATE})

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

    def describe(self) -> dict:
        """What results files record about the model."""
        return {"name": self.name}
