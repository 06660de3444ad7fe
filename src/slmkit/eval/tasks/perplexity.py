"""`ppl:<source>`: perplexity of any data source (a registered source type, e.g. ppl:python-docs).

Each document is scored whole with rolling windows of the model's context (lm-eval's
loglikelihood_rolling), and the corpus figures are ratios of sums, as lm-eval's wikitext reports:
word_perplexity, byte_perplexity, bits_per_byte, and nats per token. `ppl:val`, the run's own
validation split beside a unigram baseline, is scored by the run's objective (eval.perplexity).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from slmkit.eval.lm import ROLLING
from slmkit.eval.tasks.base import Metric, Task

PREFIX = "ppl:"
RUN_VALIDATION = "ppl:val"


class PerplexityTask(Task):
    family = "perplexity"
    request_type = ROLLING
    metrics = (Metric("word_perplexity", False), Metric("byte_perplexity", False), Metric("bits_per_byte", False),
               Metric("loss", False))

    def __init__(self, source_type: str, max_docs: int | None = None) -> None:
        from slmkit.data.sources import get_loader

        get_loader(source_type, f"task {PREFIX}{source_type}")  # unknown source: did-you-mean, exit 2
        self.source_type = source_type
        self.name = f"{PREFIX}{source_type}"
        self.source = f"data source {source_type}"
        self.max_docs = max_docs

    def docs(self, root: Path) -> list[dict]:
        from slmkit.config import SourceConfig
        from slmkit.data.sources import iter_source

        cfg = SourceConfig(name=self.source_type, type=self.source_type, max_docs=self.max_docs)
        return [{"id": doc.origin, "text": doc.text} for doc in iter_source(cfg) if doc.text.strip()]

    def requests(self, doc: dict, num_fewshot: int, root: Path) -> list[str]:
        return [doc["text"]]

    def score(self, doc: dict, responses: list[tuple[float, int]]) -> tuple[dict[str, float], dict[str, Any]]:
        logprob, tokens = responses[0]
        counts = {"loglikelihood": logprob, "tokens": tokens, "words": len(re.split(r"\s+", doc["text"])),
                  "bytes": len(doc["text"].encode("utf-8"))}
        return counts, {"id": doc["id"], **counts}

    def aggregate(self, values: dict[str, list[float]], records: list[dict]) -> dict[str, tuple[float, float | None]]:
        ll = sum(values["loglikelihood"])
        words, nbytes, tokens = sum(values["words"]), sum(values["bytes"]), sum(values["tokens"])
        return {"word_perplexity": (math.exp(-ll / words), None), "byte_perplexity": (math.exp(-ll / nbytes), None),
                "bits_per_byte": (-ll / nbytes / math.log(2), None), "loss": (-ll / tokens, None)}
