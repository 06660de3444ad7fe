"""Dedup, train/val split by document hash, and the sampling mixture (LLaMA Table 1 semantics, docs/REFERENCE.md).

Each source gets `weight_norm * M` tokens of the train mixture, M = data.mixture_tokens or the sum of
unique train tokens. Its effective epochs = that / its unique train tokens: whole epochs repeat every
document, the fractional part takes a seeded random subset of documents (by tokens). All selected
documents are then shuffled together (seeded).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

HASH_BUCKETS = 10_000


def doc_hash(text: str) -> bytes:
    """Stable hash of a document's text (dedup key and train/val assignment)."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def is_val(digest: bytes, val_fraction: float) -> bool:
    """Whether a document (by hash) is held out for validation."""
    return int.from_bytes(digest[:8], "big") % HASH_BUCKETS < round(val_fraction * HASH_BUCKETS)


@dataclass
class SourcePlan:
    """How much of one source goes into the train mixture."""

    weight: float  # normalised sampling weight
    unique_tokens: int  # tokens of its unique train documents
    target_tokens: float  # weight * M
    epochs: float  # target / unique


def plan_mixture(unique_tokens: list[int], weights: list[float], mixture_tokens: int | None = None) -> list[SourcePlan]:
    """Normalised weights, target tokens and effective epochs per source."""
    total_w = float(sum(weights))
    if total_w <= 0 or any(w <= 0 for w in weights):
        raise ValueError("mixture weights must be > 0")
    size = float(mixture_tokens if mixture_tokens is not None else sum(unique_tokens))
    plans = []
    for unique, w in zip(unique_tokens, weights):
        target = w / total_w * size
        plans.append(SourcePlan(w / total_w, int(unique), target, target / unique if unique else 0.0))
    return plans


def sample_documents(lengths: np.ndarray, epochs: float, rng: np.random.Generator) -> np.ndarray:
    """Document indices for `epochs` passes over a source: whole repeats + a token-sized random subset."""
    n = len(lengths)
    whole = int(np.floor(epochs))
    parts = [np.tile(np.arange(n, dtype=np.int64), whole)]
    frac_tokens = (epochs - whole) * float(lengths.sum())
    if frac_tokens > 0 and n:
        order = rng.permutation(n)
        cum = np.cumsum(lengths[order])
        k = int(np.searchsorted(cum, frac_tokens))  # cum[k-1] < target <= cum[k]
        if k < n and (k == 0 or cum[k] - frac_tokens < frac_tokens - cum[k - 1]):
            k += 1  # take the document that brings us closest to the target
        parts.append(order[:k].astype(np.int64))
    return np.concatenate(parts)


def build_mixture(lengths: list[np.ndarray], epochs: list[float], seed: int) -> np.ndarray:
    """The shuffled train mixture as an (n, 2) int64 array of (source index, document index)."""
    rng = np.random.default_rng(seed)
    pieces = []
    for sid, (lens, ep) in enumerate(zip(lengths, epochs)):
        docs = sample_documents(np.asarray(lens), ep, rng)
        pieces.append(np.stack([np.full(len(docs), sid, dtype=np.int64), docs], axis=1))
    mixture = np.concatenate(pieces) if pieces else np.zeros((0, 2), dtype=np.int64)
    return mixture[rng.permutation(len(mixture))]
