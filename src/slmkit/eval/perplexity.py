"""Eval stage: validation loss and bits per byte of the latest checkpoint beside a unigram baseline.

Writes RUN/eval/val.json:
    {"checkpoint", "step", "params", "task", "split": "val", "bytes_per_token",
     "model":   {"loss", "bpb", "tokens"},      loss in nats per target token
     "unigram": {"loss", "bpb", "tokens"}}      add-one-smoothed train-token frequencies, same targets

Both numbers are measured on exactly the same target tokens (the first `train.eval_batches` batches
of the val split; for `task: sft` the response tokens of the val examples).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json

VAL_FILE = Path("eval") / "val.json"


def checkpoint_info(run_dir: Path) -> tuple[Path, int]:
    """(latest checkpoint folder, its step), SlmError when the run has none."""
    from slmkit.train.checkpoint import latest_checkpoint, read_trainer_state

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise SlmError(f"{run_dir}: no checkpoint yet; run the train stage first (slm run RECIPE)")
    return ckpt, int(read_trainer_state(ckpt).get("step", 0))


def checkpoint_label(run_dir: Path, ckpt: Path) -> str:
    """The checkpoint path relative to the run folder (ckpt/step-000200)."""
    try:
        return str(ckpt.resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(ckpt)


def saved_for_latest_checkpoint(run_dir: str | Path, path: Path) -> dict | None:
    """The JSON at `path` when it was written for the run's latest checkpoint, else None."""
    import json

    from slmkit.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if ckpt is None or saved.get("checkpoint") != checkpoint_label(Path(run_dir), ckpt):
        return None
    return saved


def train_token_counts(recipe: Any, run_dir: Path, tokenizer: Any, vocab_size: int) -> np.ndarray:
    """Token frequencies of the training data: the train shards, or for SFT the train response tokens."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    if recipe.task == "sft":
        from slmkit.data.sft import load_sft_split, tokenize_examples

        conversations = load_sft_split(recipe, "train")
        examples, _ = tokenize_examples(tokenizer, recipe.sft.template, conversations, recipe.data.seq_len + 1)
        for ex in examples:
            counts += np.bincount(ex.ids[1:][ex.trained[1:]], minlength=vocab_size)[:vocab_size]
        return counts
    from slmkit.data.loader import open_stream

    for shard in open_stream(Path(run_dir) / "data", "train").maps:
        counts += np.bincount(np.asarray(shard), minlength=vocab_size)[:vocab_size]
    return counts


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """log p(token) with add-one smoothing: (count + 1) / (total + vocab)."""
    return np.log(counts + 1.0) - math.log(float(counts.sum()) + len(counts))


class TargetCounter:
    """Passes batches through while counting their target tokens (labels != -100) and their text bytes."""

    def __init__(self, batches: Iterable[dict], vocab_size: int, tokenizer: Any = None) -> None:
        self.batches = batches
        self.counts = np.zeros(vocab_size, dtype=np.int64)
        self.tokenizer = tokenizer  # when given, decode targets to count UTF-8 bytes (SFT bits per byte)
        self.nbytes = 0

    def __iter__(self) -> Iterator[dict]:
        for batch in self.batches:
            labels = batch["labels"]
            targets = labels[labels != -100].numpy()
            self.counts += np.bincount(targets, minlength=len(self.counts))[: len(self.counts)]
            if self.tokenizer is not None:
                text = self.tokenizer.decode(targets.tolist(), skip_special_tokens=True)
                self.nbytes += len(text.encode("utf-8"))
            yield batch


def evaluate_run(recipe: Any, run_dir: str | Path, max_batches: int | None = None, progress: bool = True) -> dict:
    """Evaluate the latest checkpoint on the val split, write RUN/eval/val.json and return it."""
    import torch

    from slmkit.interop.hf import load_hf_folder
    from slmkit.tokenizer import load_tokenizer
    from slmkit.train.batches import eval_batches, val_bytes_per_token
    from slmkit.train.distributed import resolve_device
    from slmkit.eval.loss import bits_per_byte, evaluate

    run_dir = Path(run_dir)
    ckpt, step = checkpoint_info(run_dir)
    max_batches = recipe.train.eval_batches if max_batches is None else max_batches
    start = time.perf_counter()
    device = resolve_device(recipe.train.device)
    model = load_hf_folder(ckpt, device=device)
    tokenizer = load_tokenizer(ckpt)
    vocab = model.config.vocab_size
    batches = eval_batches(recipe, run_dir, tokenizer, recipe.train.batch_size, max_batches)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=max_batches, desc="eval", unit="batch", leave=False)
    counter = TargetCounter(batches, vocab, tokenizer if recipe.task == "sft" else None)
    with torch.inference_mode():
        result = evaluate(model, counter, device=device)
    if not result["tokens"]:
        raise SlmError(f"{run_dir}: the val split gave no target tokens to evaluate")
    bytes_per_token = (
        counter.nbytes / result["tokens"] if recipe.task == "sft" else val_bytes_per_token(recipe, run_dir)
    )
    log_p = unigram_log_probs(train_token_counts(recipe, run_dir, tokenizer, vocab))
    unigram_loss = float(-(counter.counts * log_p).sum() / counter.counts.sum())
    report = {
        "task": recipe.task,
        "split": "val",
        "checkpoint": checkpoint_label(run_dir, ckpt),
        "step": step,
        "params": sum(p.numel() for p in model.parameters()),
        "max_batches": max_batches,
        "bytes_per_token": bytes_per_token,
        "model": {"loss": result["loss"], "bpb": bits_per_byte(result["loss"], bytes_per_token),
                  "tokens": result["tokens"]},
        "unigram": {"loss": unigram_loss, "bpb": bits_per_byte(unigram_loss, bytes_per_token),
                    "tokens": int(counter.counts.sum())},
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(run_dir / VAL_FILE, report)
    return report


def eval_is_current(recipe: Any, run_dir: str | Path) -> bool:
    """True when eval/val.json was computed for the latest checkpoint with the current settings."""
    saved = saved_for_latest_checkpoint(run_dir, Path(run_dir) / VAL_FILE)
    return saved is not None and saved.get("max_batches") == recipe.train.eval_batches


def format_table(report: dict) -> str:
    """A small text table: model vs unigram, loss / bpb / perplexity."""
    lines = [f"{'val':<10} {'loss':>8} {'bpb':>8} {'ppl':>10} {'tokens':>10}"]
    for name in ("model", "unigram"):
        entry = report[name]
        bpb = f"{entry['bpb']:.4f}" if entry.get("bpb") is not None else "-"
        ppl = math.exp(entry["loss"]) if entry["loss"] < 50 else float("inf")
        lines.append(f"{name:<10} {entry['loss']:>8.4f} {bpb:>8} {ppl:>10.2f} {entry['tokens']:>10,}")
    return "\n".join(lines)
