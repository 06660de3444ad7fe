"""Natural language to code data for the two-stage objectives (codefusion, ar-code).

Stage 1 (pretraining) reads code alone: the documents of `data.sources` other than type
`codefusion` (those benchmark pairs are there for the tokenizer), each cut into pieces of at most
`code.code_len` tokens. Stage 2 (fine-tuning) reads the (utterance, code) pairs of the benchmark's
train split; validation and the eval tasks use its "test" split (the shared copy's dev split).

`PairLoader` is the trainer's resumable batch source: batch i of rank r is a pure function of
(seed, i, r), so its state is one counter and a resume continues exactly. Its first
`pretrain_batches` batches are stage 1, the rest stage 2; an objective supplies the functions that
turn token lists into its batches (`Collate`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmkit.data.paths import datasets_dir
from slmkit.data.sources import CODEFUSION_FILES
from slmkit.errors import SlmError, did_you_mean

log = logging.getLogger(__name__)

LANGUAGES = CODEFUSION_FILES  # language -> benchmark file name (the `codefusion` data source's table)
BENCHMARK_FOLDER = ("codefusion", "benchmarks")


# ---------------------------------------------------------------------------- benchmark items


def canonical_language(language: str, key: str = "recipe key 'code.language'") -> str:
    """'bash' -> 'Bash'; SlmError naming the closest language when unknown."""
    for name in LANGUAGES:
        if str(language).lower() == name.lower():
            return name
    raise SlmError(f"{key}: unknown language {language!r}{did_you_mean(str(language), LANGUAGES)}; "
                   f"choose one of {', '.join(LANGUAGES)}")


def benchmark_path(language: str, benchmark: str | None = None, root: Path | None = None) -> Path:
    """The benchmark file: `benchmark` when given, else the shared datasets' file of `language`."""
    if benchmark:
        path = Path(benchmark).expanduser()
    else:
        path = (root or datasets_dir()).joinpath(*BENCHMARK_FOLDER, LANGUAGES[canonical_language(language)])
    if not path.is_file():
        raise SlmError(f"benchmark file {path} not found; set code.benchmark to a CodeFusion benchmark JSON "
                       "(or SLMKIT_DATASETS to the folder holding the shared datasets)")
    return path


@dataclass(frozen=True)
class Pair:
    """One benchmark item: utterance, code, and (CF) the Data table and Labels."""

    id: str
    utterance: str
    code: str
    data: list | None = None
    labels: list | None = None


def _item_id(item: Any, index: int) -> str:
    return str(item.get("ID", f"#{index}")) if isinstance(item, dict) else f"#{index}"


def check_item(item: Any, index: int, path: Path, split: str) -> Pair | None:
    """A Pair from one raw item; None for an item with a null utterance or code (upstream has a few);
    SlmError naming the file, split and item ID when it is malformed."""
    where = f"{path}: {split} item {_item_id(item, index)}"
    if not isinstance(item, dict):
        raise SlmError(f"{where}: expected an object with 'NL Utterance' and 'Code', got {type(item).__name__}")
    for key in ("NL Utterance", "Code"):
        if key not in item:
            raise SlmError(f"{where}: missing key {key!r}{did_you_mean(key, [str(k) for k in item])}")
        if item[key] is not None and not isinstance(item[key], str):
            raise SlmError(f"{where}: {key!r} must be a string, got {type(item[key]).__name__}")
    if item["NL Utterance"] is None or item["Code"] is None or not item["Code"].strip():
        return None
    data, labels = item.get("Data"), item.get("Labels")
    if data is not None and (not isinstance(data, list) or not all(isinstance(r, list) for r in data)):
        raise SlmError(f"{where}: 'Data' must be a list of rows (lists)")
    if labels is not None and not isinstance(labels, list):
        raise SlmError(f"{where}: 'Labels' must be a list")
    return Pair(_item_id(item, index), item["NL Utterance"].strip(), item["Code"].strip(), data, labels)


def load_pairs(path: Path, split: str) -> list[Pair]:
    """The usable pairs of one split (null items skipped with a warning; malformed ones raise)."""
    from slmkit.data.sources import codefusion_items

    items = codefusion_items(path, split)
    pairs = [check_item(item, i, path, split) for i, item in enumerate(items)]
    kept = [p for p in pairs if p is not None]
    if len(kept) < len(items):
        log.warning("%s: skipped %d %s items with a null utterance or empty code", path, len(items) - len(kept), split)
    if not kept:
        raise SlmError(f"{path}: the {split} split has no usable items")
    return kept


def recipe_pairs(recipe: Any, split: str) -> list[Pair]:
    """The recipe's benchmark pairs of `split` (train | test)."""
    return load_pairs(benchmark_path(recipe.code.language, recipe.code.benchmark), split)


# ---------------------------------------------------------------------------- tokenized data


def encode_all(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts (HF tokenizers' batch encoder, no special tokens added)."""
    return [enc.ids for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]


def pretraining_snippets(recipe: Any, tokenizer: Any) -> list[list[int]]:
    """Stage-1 code: documents of the non-`codefusion` sources, cut into pieces of <= code_len tokens."""
    from slmkit.data.sources import load_sources

    configs = [s for s in recipe.data.sources if s.type != "codefusion"]
    if not configs:
        raise SlmError(
            f"code.pretrain_steps is {recipe.code.pretrain_steps} but data.sources has no code source for stage 1 "
            "(a source of type codefusion-pretrain, python-stdlib, text, ...); add one or set code.pretrain_steps=0"
        )
    texts = [doc.text for src in load_sources(configs) for doc in src.docs]
    size = recipe.code.code_len
    pieces = [ids[i:i + size] for ids in encode_all(tokenizer, texts) for i in range(0, len(ids), size)]
    pieces = [p for p in pieces if p]
    if not pieces:
        raise SlmError("the stage-1 code sources hold no text")
    return pieces


@dataclass
class TokenizedPairs:
    """Utterance and code ids of the pairs of one split, cut to the recipe's lengths."""

    utterances: list[list[int]]
    codes: list[list[int]]

    def __len__(self) -> int:
        return len(self.codes)


def tokenize_pairs(pairs: list[Pair], tokenizer: Any, utterance_len: int, code_len: int) -> TokenizedPairs:
    utterances = [ids[:utterance_len] for ids in encode_all(tokenizer, [p.utterance for p in pairs])]
    codes = [ids[:code_len] for ids in encode_all(tokenizer, [p.code for p in pairs])]
    return TokenizedPairs(utterances, codes)


# ---------------------------------------------------------------------------- the loader


@dataclass
class Collate:
    """How an objective turns token lists into batches.

    pretrain(codes, rng) -> batch of stage 1; finetune(utterances, codes) -> batch of stage 2."""

    pretrain: Callable[[list[list[int]], np.random.Generator], dict[str, torch.Tensor]]
    finetune: Callable[[list[list[int]], list[list[int]]], dict[str, torch.Tensor]]


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _take(n: int, seed: int, start: int, count: int) -> list[int]:
    """Items start..start+count-1 of an endless sequence of seeded epoch permutations of range(n)."""
    out = []
    for g in range(start, start + count):
        epoch, pos = divmod(g, n)
        out.append(int(_epoch_order(n, seed, epoch)[pos]))
    return out


class PairLoader:
    """Endless, exactly resumable batches: stage 1 for the first `pretrain_batches`, then stage 2."""

    def __init__(self, snippets: list[list[int]] | None, pairs: TokenizedPairs, collate: Collate, batch_size: int,
                 seed: int, pretrain_batches: int, rank: int = 0, world_size: int = 1) -> None:
        if pretrain_batches and not snippets:
            raise SlmError("stage 1 needs pretraining code; none was loaded")
        self.snippets, self.pairs, self.collate = snippets or [], pairs, collate
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.pretrain_batches = pretrain_batches
        self.batches = 0

    def _indices(self, n: int, seed: int, index: int) -> list[int]:
        start = (index * self.world_size + self.rank) * self.batch_size
        return _take(n, seed, start, self.batch_size)

    def next_batch(self) -> dict[str, torch.Tensor]:
        i = self.batches
        self.batches += 1
        if i < self.pretrain_batches:
            rows = self._indices(len(self.snippets), self.seed, i)
            rng = np.random.default_rng([self.seed, 1, i, self.rank])
            return self.collate.pretrain([self.snippets[j] for j in rows], rng)
        rows = self._indices(len(self.pairs), self.seed + 1, i - self.pretrain_batches)
        return self.collate.finetune([self.pairs.utterances[j] for j in rows], [self.pairs.codes[j] for j in rows])

    @property
    def stage(self) -> str:
        return "pretrain" if self.batches < self.pretrain_batches else "finetune"

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "pretrain_batches": self.pretrain_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])


def iter_pair_batches(pairs: TokenizedPairs, collate: Collate, batch_size: int,
                      max_batches: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """Stage-2 batches of the pairs in file order (validation)."""
    count = 0
    for start in range(0, len(pairs), batch_size):
        if max_batches is not None and count >= max_batches:
            return
        stop = start + batch_size
        yield collate.finetune(pairs.utterances[start:stop], pairs.codes[start:stop])
        count += 1


# ---------------------------------------------------------------------------- shared batch helpers


def pad_rows(rows: list[list[int]], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, width] (rows cut or padded with `pad`) and the 0/1 mask of real tokens."""
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[:width]
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


def hide_span(ids: list[int], fraction: float, mask_id: int, rng: np.random.Generator) -> list[int]:
    """GENIE's continuous paragraph denoising input: one contiguous span of about `fraction` of the
    tokens (at least one) replaced by a single mask token."""
    n = len(ids)
    span = max(1, round(fraction * n))
    start = int(rng.integers(0, n - span + 1))
    return [*ids[:start], mask_id, *ids[start + span:]]
