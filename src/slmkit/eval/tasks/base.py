"""What a task is: data plus small functions (lm-evaluation-harness's shape).

A `Task` reads its documents from local files, turns each document into requests for one
`LanguageModel` method, and scores a document from the model's responses. The harness does the
rest (limits, batching across documents, aggregation, standard errors, the samples file).
"""

from __future__ import annotations

import csv
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError


class TaskDataMissing(SlmError):
    """A task's data file is not there: the task is skipped with this one line, the others still run."""


@dataclass(frozen=True)
class Metric:
    """How a per-document value is aggregated: mean (with stderr) or a corpus-level ratio."""

    name: str
    higher_is_better: bool = True


class Task(ABC):
    """One benchmark. `request_type` is the LanguageModel method its requests go to."""

    name: str
    family: str  # "multiple_choice" | "generation" | "perplexity"
    request_type: str
    metrics: tuple[Metric, ...]
    default_fewshot: int = 0
    max_fewshot: int = 0  # 0: zero-shot only (no split to draw examples from)
    source: str = ""  # where the data comes from, for results files

    @abstractmethod
    def docs(self, root: Path) -> list[dict]:
        """The evaluation documents, in a fixed order (limit takes the first N)."""

    @abstractmethod
    def requests(self, doc: dict, num_fewshot: int, root: Path) -> list[Any]:
        """The requests for one document (arguments of `request_type`)."""

    @abstractmethod
    def score(self, doc: dict, responses: list[Any]) -> tuple[dict[str, float], dict[str, Any]]:
        """(metric values, what to record in the samples file) for one document."""

    def limit_docs(self, docs: list[dict], limit: int | None) -> list[dict]:
        """The documents a --limit keeps (the first N; mmlu: the first N of each subject)."""
        return docs if limit is None else docs[:limit]

    def score_all(self, docs: list[dict], responses: list[list[Any]]) -> list[tuple[dict[str, float], dict]]:
        """`score` for every document (code tasks run their sandboxed checks in parallel)."""
        return [self.score(doc, r) for doc, r in zip(docs, responses)]

    def aggregate(self, values: dict[str, list[float]], records: list[dict]) -> dict[str, tuple[float, float | None]]:
        """metric -> (value, stderr). Default: the mean and its standard error."""
        del records
        return {name: mean_and_stderr(vals) for name, vals in values.items()}

    def check_fewshot(self, k: int) -> None:
        """SlmError when this task cannot build k-shot prompts."""
        if k < 0:
            raise SlmError(f"--num-fewshot must be >= 0, got {k}")
        if k > self.max_fewshot:
            have = (f"at most {self.max_fewshot}" if self.max_fewshot else
                    "0 (no split to draw examples from is shipped)")
            raise SlmError(f"task {self.name}: {k}-shot is not supported; use {have}")


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std / sqrt(n), as lm-eval reports it); stderr None for n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), None
    mu = sum(values) / n
    if n < 2:
        return mu, None
    return mu, math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


# ---------------------------------------------------------------------------- data files


def need_file(path: Path, task: str, hint: str = "") -> Path:
    """`path`, or TaskDataMissing naming it and how to provide it."""
    if not path.is_file():
        how = hint or "set --data-root (or SLMKIT_DATASETS) to the folder holding the shared datasets"
        raise TaskDataMissing(f"task {task}: data file {path} not found; {how}")
    return path


def read_jsonl(path: Path, task: str, hint: str = "") -> list[dict]:
    """Objects of a JSON-lines file; SlmError naming the file and line when one is not an object."""
    from slmkit.data.jsonl import iter_json_objects

    return [record for _, record in iter_json_objects(need_file(path, task, hint))]


def read_lines(path: Path, task: str) -> list[str]:
    """Non-empty stripped lines of a text file (label files)."""
    with open(need_file(path, task), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_csv(path: Path, task: str) -> list[list[str]]:
    """Rows of a header-less CSV file."""
    with open(need_file(path, task), encoding="utf-8", newline="") as f:
        return [row for row in csv.reader(f) if row]


def field(doc: dict, key: str, path: Path | str, kind: type = str) -> Any:
    """doc[key] checked for type; SlmError naming the file and key otherwise."""
    value = doc.get(key)
    if not isinstance(value, kind):
        raise SlmError(f"{path}: item {doc.get('id', '')!s:.40} has no {kind.__name__} field {key!r}")
    return value
