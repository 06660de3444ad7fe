"""`slm data prepare`: sources -> dedup -> train/val split -> tokens -> mixture -> shards + manifest.

Writes into RUN/data/: train-00000.bin ..., val-00000.bin ..., train.docs.npy / val.docs.npy
((start offset, source index) per document of the split's token stream) and manifest.json, last.
A rerun with the same fingerprint and intact shards reuses them; a bad shard triggers a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from slmkit.config import Recipe, SourceConfig
from slmkit.data.mixture import build_mixture, doc_hash, is_val, plan_mixture
from slmkit.data.shards import ShardWriter, dtype_for, gather, record_verified, shard_problems
from slmkit.data.sources import LoadedSource, load_sources
from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json, sha256_file
from slmkit.pipeline.rundir import RunDir, read_manifest

FORMAT_VERSION = 1
SPLITS = ("train", "val")
CHUNK_BYTES = 4 << 20  # text per encode_batch call (progress granularity)
GATHER_DOCS = 1 << 16  # documents per vectorised gather when writing shards


@dataclass
class SplitTokens:
    """The unique documents of one source in one split, tokenised: EOT after each document."""

    tokens: np.ndarray  # concatenated ids
    starts: np.ndarray  # int64 start of each document in `tokens`
    lengths: np.ndarray  # int64 tokens per document (including its EOT)
    nbytes: np.ndarray  # int64 UTF-8 bytes per document

    @property
    def docs(self) -> int:
        return len(self.lengths)


@dataclass
class SourceData:
    config: SourceConfig
    splits: dict[str, SplitTokens] = field(default_factory=dict)
    duplicates_removed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def data_fingerprint(recipe: Recipe, tokenizer_sha256: str) -> str:
    """Hash of everything that determines the shards (data config except workers, tokenizer file)."""
    data = asdict(recipe.data)
    data.pop("workers", None)
    spec = {"format": FORMAT_VERSION, "tokenizer": tokenizer_sha256, "data": data}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest_file(data_dir: str | Path) -> dict | None:
    """The manifest in `data_dir`, or None when absent or unreadable."""
    try:
        return read_manifest(data_dir)
    except SlmError:
        return None


def data_is_current(recipe: Recipe, run: str | Path | RunDir, verify: bool = True) -> bool:
    """RUN/data was built for this recipe and the run's current tokenizer (and, with `verify`, every
    shard still matches its recorded hash)."""
    run = RunDir.of(run)
    if not run.tokenizer.is_file():
        return False
    manifest = read_manifest_file(run.data)
    fingerprint = data_fingerprint(recipe, sha256_file(run.tokenizer))
    if not verify:
        return bool(manifest) and manifest.get("fingerprint") == fingerprint
    return reusable(manifest, fingerprint, run.data)[0]


def reusable(manifest: dict | None, fingerprint: str, data_dir: Path) -> tuple[bool, list[str]]:
    """Whether an existing manifest matches and all its shards verify; problems found otherwise."""
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return False, []
    problems = []
    for split in SPLITS:
        problems += shard_problems(data_dir, manifest["splits"][split]["shards"], manifest["dtype"])
    return not problems, problems


# --------------------------------------------------------------------------- stages


def split_documents(loaded: list[LoadedSource], val_fraction: float, dedup: bool) -> list[tuple[dict, int]]:
    """Per source: ({"train": [texts], "val": [texts]}, duplicates removed). First occurrence wins."""
    seen: set[bytes] = set()
    out = []
    for src in loaded:
        texts: dict[str, list[str]] = {"train": [], "val": []}
        dups = 0
        for doc in src.docs:
            digest = doc_hash(doc.text)
            if dedup:
                if digest in seen:
                    dups += 1
                    continue
                seen.add(digest)
            texts["val" if is_val(digest, val_fraction) else "train"].append(doc.text)
        out.append((texts, dups))
    return out


def tokenize_texts(tok, texts: list[str], eot: int, dtype: str, bar=None) -> SplitTokens:
    """Encode texts in chunks with the Rust batch encoder (all cores); append EOT after each."""
    token_parts, length_parts, byte_parts = [], [], []
    i = 0
    while i < len(texts):
        j, size = i, 0
        while j < len(texts) and (size < CHUNK_BYTES or j == i):
            size += len(texts[j])
            j += 1
        chunk = texts[i:j]
        encodings = tok.encode_batch_fast(chunk, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lens.sum()))
        del encodings, ids  # now, not when the next batch replaces them: two batches' Encodings at once double the peak
        token_parts.append(np.insert(flat, np.cumsum(lens), eot).astype(dtype, copy=False))
        length_parts.append(lens + 1)
        nbytes = np.fromiter((len(t.encode("utf-8")) for t in chunk), dtype=np.int64, count=len(chunk))
        byte_parts.append(nbytes)
        if bar is not None:
            bar.update(int(nbytes.sum()))
        i = j
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
    tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, dtype)
    starts = np.cumsum(lengths) - lengths
    nbytes = np.concatenate(byte_parts) if byte_parts else np.zeros(0, np.int64)
    try:  # glibc keeps the freed Encodings (~100 B a token) mapped; return them so later stages don't add to them
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return SplitTokens(tokens, starts, lengths, nbytes)


def write_split(
    data_dir: Path, split: str, sources: list[SplitTokens], order: np.ndarray, shard_tokens: int, dtype: str
) -> dict:
    """Write the documents `order` ((source, doc) rows) as shards; also SPLIT.docs.npy. Returns split stats."""
    bases = np.cumsum([0] + [len(s.tokens) for s in sources[:-1]]).astype(np.int64)
    all_tokens = np.concatenate([s.tokens for s in sources]) if sources else np.zeros(0, dtype)
    starts = np.concatenate([s.starts + b for s, b in zip(sources, bases)]) if sources else np.zeros(0, np.int64)
    lengths = np.concatenate([s.lengths for s in sources]) if sources else np.zeros(0, np.int64)
    nbytes = np.concatenate([s.nbytes for s in sources]) if sources else np.zeros(0, np.int64)
    doc_base = np.cumsum([0] + [s.docs for s in sources[:-1]]).astype(np.int64)
    global_ids = doc_base[order[:, 0]] + order[:, 1] if len(order) else np.zeros(0, np.int64)
    out_lengths = lengths[global_ids]
    with ShardWriter(data_dir, split, shard_tokens, dtype) as writer:
        for k in range(0, len(global_ids), GATHER_DOCS):
            ids = global_ids[k : k + GATHER_DOCS]
            writer.write(gather(all_tokens, starts[ids], lengths[ids]))
        shards = writer.close()
    index = np.stack([np.cumsum(out_lengths) - out_lengths, order[:, 0]], axis=1).astype(np.int64)
    _atomic_save_npy(data_dir / f"{split}.docs.npy", index)
    return {
        "tokens": int(out_lengths.sum()),
        "docs": int(len(order)),
        "bytes": int(nbytes[global_ids].sum()),
        "shards": shards,
        "doc_index": f"{split}.docs.npy",
    }


def shuffled_documents(counts: list[int], seed: int) -> np.ndarray:
    """Every (source, document) pair once, in a seeded random order (val: any prefix is a fair sample)."""
    rows = [np.stack([np.full(n, i), np.arange(n)], axis=1) for i, n in enumerate(counts)]
    order = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)
    return order[np.random.default_rng(seed).permutation(len(order))]


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _remove_stale(data_dir: Path, manifest: dict) -> None:
    """Delete shards of an earlier build that the new manifest does not list, and temp files of killed runs."""
    keep = {s["path"] for split in SPLITS for s in manifest["splits"][split]["shards"]}
    for split in SPLITS:
        for path in [*data_dir.glob(f"{split}-*.bin"), *data_dir.glob(f".{split}-*.tmp")]:
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _set_workers(workers: int) -> None:
    if workers > 0:  # the Rust thread pool reads this once, at its first parallel call
        os.environ.setdefault("RAYON_NUM_THREADS", str(workers))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- entry point


def prepare_data(recipe: Recipe, run: str | Path | RunDir, progress: bool = True) -> dict:
    """Build (or reuse) RUN/data: shards + manifest for the recipe. Returns the manifest."""
    from slmkit.progress import progress_bar
    from slmkit.tokenizer import eos_id, load_tokenizer

    cfg = recipe.data
    _set_workers(cfg.workers)
    run = RunDir.of(run)
    tok_path = run.tokenizer  # made by the tokenizer stage, which the stage runner runs first
    if not tok_path.is_file():
        raise SlmError(f"{tok_path} is missing; make it first: slm tokenizer train {run.recipe} --out {run.root}")
    tok = load_tokenizer(tok_path)
    tok.encode_special_tokens = True  # a special token spelled inside a document is text, not a separator
    tok_sha = sha256_file(tok_path)
    fingerprint = data_fingerprint(recipe, tok_sha)
    data_dir = run.data
    ok, problems = reusable(read_manifest_file(data_dir), fingerprint, data_dir)
    if ok:
        _log(f"reusing {data_dir} (same recipe and tokenizer, all shard hashes verified)")
        return read_manifest_file(data_dir)
    if problems:
        _log(f"rebuilding {data_dir}: {'; '.join(problems)}")

    loaded = load_sources(cfg.sources)
    split_texts = split_documents(loaded, cfg.val_fraction, cfg.dedup)
    vocab = tok.get_vocab_size()
    dtype = dtype_for(vocab)
    eot = eos_id(tok)
    sources: list[SourceData] = []
    total = sum(len(t) for texts, _ in split_texts for split in SPLITS for t in texts[split])
    with progress_bar(total, "tokenize", unit="B", unit_scale=True, enabled=progress) as bar:
        for src, (texts, dups) in zip(loaded, split_texts):
            data = SourceData(src.config, duplicates_removed=dups, skipped=dict(src.stats.skipped))
            for split in SPLITS:
                data.splits[split] = tokenize_texts(tok, texts[split], eot, dtype, bar)
            sources.append(data)
    for data in sources:
        if data.splits["train"].docs == 0:
            raise SlmError(
                f"source {data.config.name!r} has no train documents after dedup and the val split "
                f"({data.duplicates_removed} duplicates removed); add documents or lower data.val_fraction"
            )

    unique = [int(d.splits["train"].lengths.sum()) for d in sources]
    plans = plan_mixture(unique, [d.config.weight for d in sources], cfg.mixture_tokens)
    mixture = build_mixture([d.splits["train"].lengths for d in sources], [p.epochs for p in plans], cfg.seed)
    val_order = shuffled_documents([d.splits["val"].docs for d in sources], cfg.seed + 1)

    data_dir.mkdir(parents=True, exist_ok=True)
    run.manifest.unlink(missing_ok=True)  # the manifest is written last: no manifest = no build
    splits = {
        "train": write_split(data_dir, "train", [d.splits["train"] for d in sources], mixture, cfg.shard_tokens, dtype),
        "val": write_split(data_dir, "val", [d.splits["val"] for d in sources], val_order, cfg.shard_tokens, dtype),
    }
    manifest = {
        "version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "tokenizer": {"path": run.label(run.tokenizer), "vocab_size": vocab, "sha256": tok_sha, "eos_id": eot},
        "dtype": dtype,
        "seq_len": cfg.seq_len,
        "seed": cfg.seed,
        "mixture_tokens_target": int(round(sum(p.target_tokens for p in plans))),
        "sources": {
            d.config.name: _source_entry(d, plan, mixture, i) for i, (d, plan) in enumerate(zip(sources, plans))
        },
        "splits": splits,
    }
    record_verified(data_dir, [s for split in SPLITS for s in splits[split]["shards"]])
    atomic_write_json(run.manifest, manifest)
    _remove_stale(data_dir, manifest)
    _log(f"data: {data_dir} ({splits['train']['tokens']:,} train / {splits['val']['tokens']:,} val tokens)")
    return manifest


def _source_entry(data: SourceData, plan, mixture: np.ndarray, index: int) -> dict:
    train, val = data.splits["train"], data.splits["val"]
    picked = mixture[mixture[:, 0] == index, 1]
    return {
        "type": data.config.type,
        "weight": plan.weight,
        "epochs": round(plan.epochs, 6),
        "docs": {"train": train.docs, "val": val.docs},
        "tokens": {"train": int(train.lengths.sum()), "val": int(val.lengths.sum())},
        "bytes": {"train": int(train.nbytes.sum()), "val": int(val.nbytes.sum())},
        "mixture_tokens": int(train.lengths[picked].sum()),
        "mixture_docs": int(len(picked)),
        "duplicates_removed": data.duplicates_removed,
        "skipped": data.skipped,
    }
