"""Eval stage: validation loss and bits per byte of a checkpoint beside a unigram baseline.

Writes RUN/eval/val.json:
    {"checkpoint", "step", "params", "task", "split": "val", "bytes_per_token", "max_batches", "batch_size",
     "model":   {"loss", "bpb", "tokens"},      loss in nats per target token
     "unigram": {"loss", "bpb", "tokens"}}      add-one-smoothed train-token frequencies, same targets

Both numbers are measured on exactly the same target tokens: the first `eval.batches` validation
batches of the run's objective (pretraining: blocks of the val split; SFT: the response tokens of
the val examples). `val_rows` is the one view of that file that every renderer (the stage's table,
`slm run`'s summary, the report page) uses.
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
from slmkit.pipeline.rundir import RunDir

ROW_NAMES = {"model": "model", "unigram": "unigram baseline"}


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


def eval_settings(recipe: Any) -> dict[str, int]:
    """The eval section resolved: batches and batch size (older recipes fall back to the train section)."""
    cfg = recipe.eval
    return {
        "max_batches": cfg.batches if cfg.batches is not None else recipe.train.eval_batches,
        "batch_size": cfg.batch_size if cfg.batch_size is not None else recipe.train.batch_size,
    }


def evaluate_run(recipe: Any, run: str | Path | RunDir, ckpt: Path | None = None, progress: bool = True,
                 model: Any = None, write: bool = True) -> dict:
    """Evaluate `ckpt` (default: the latest checkpoint) on the val split, write RUN/eval/val.json, return it.

    `model`: score this model instead of loading `ckpt` (e.g. its quantized copy; `ckpt` still names the
    step and tokenizer); `write=False` leaves val.json alone.
    """
    import torch

    from slmkit.device import resolve_device
    from slmkit.eval.loss import bits_per_byte, evaluate
    from slmkit.interop.hf import load_hf_folder
    from slmkit.objectives import get_objective
    from slmkit.tokenizer import load_tokenizer
    from slmkit.train.checkpoint import read_trainer_state

    run = RunDir.of(run)
    objective = get_objective(recipe.task, recipe)
    ckpt = ckpt or run.require_checkpoint()
    step = int(read_trainer_state(ckpt).get("step", 0))
    settings = eval_settings(recipe)
    max_batches = settings["max_batches"]
    start = time.perf_counter()
    device = resolve_device(recipe.eval.device or recipe.train.device, where="recipe key 'eval.device'")
    model = load_hf_folder(ckpt, device=device) if model is None else model
    tokenizer = load_tokenizer(ckpt)
    vocab = model.config.vocab_size
    batches = objective.eval_batches(recipe, run, tokenizer, settings["batch_size"], max_batches)
    if progress:
        from slmkit.progress import progress_iter

        batches = progress_iter(batches, total=max_batches, desc="eval", unit="batch", leave=False)
    bytes_per_token = objective.val_bytes_per_token(recipe, run)
    counter = TargetCounter(batches, vocab, tokenizer if bytes_per_token is None else None)
    with torch.inference_mode():
        result = evaluate(model, counter, device=device, loss_fn=lambda batch: objective.loss(model, batch))
    if not result["tokens"]:
        raise SlmError(f"{run.root}: the val split gave no target tokens to evaluate")
    if bytes_per_token is None:
        bytes_per_token = counter.nbytes / result["tokens"]
    log_p = unigram_log_probs(objective.train_token_counts(recipe, run, tokenizer, vocab))
    unigram_loss = float(-(counter.counts * log_p).sum() / counter.counts.sum())
    report = {
        "task": recipe.task,
        "split": "val",
        "checkpoint": run.label(ckpt),
        "step": step,
        "params": sum(p.numel() for p in model.parameters()),
        **settings,
        "bytes_per_token": bytes_per_token,
        "model": {"loss": result["loss"], "bpb": bits_per_byte(result["loss"], bytes_per_token),
                  "tokens": result["tokens"], **({"bound": "elbo"} if objective.loss_is_bound else {})},
        "unigram": {"loss": unigram_loss, "bpb": bits_per_byte(unigram_loss, bytes_per_token),
                    "tokens": int(counter.counts.sum())},
        "seconds": round(time.perf_counter() - start, 2),
    }
    if write:
        atomic_write_json(run.val_results, report)
    return report


def eval_is_current(recipe: Any, run: str | Path | RunDir) -> bool:
    """True when eval/val.json was computed for the latest checkpoint with the current settings."""
    saved = RunDir.of(run).saved_for_latest_checkpoint(RunDir.of(run).val_results)
    if saved is None:
        return False
    settings = eval_settings(recipe)
    return saved.get("max_batches") == settings["max_batches"] and saved.get(
        "batch_size", recipe.train.batch_size) == settings["batch_size"]


def val_rows(report: dict) -> list[dict[str, Any]]:
    """One row per entry of val.json ("model", "unigram baseline"): name, loss, bpb, ppl, tokens."""
    rows = []
    for key, name in ROW_NAMES.items():
        entry = report.get(key) or {}
        loss = entry.get("loss")
        finite = isinstance(loss, (int, float)) and math.isfinite(loss)
        if entry.get("bound"):  # masked diffusion: the loss is an upper bound on the NLL (the ELBO)
            name = f"{name} (ELBO bound)"
        rows.append({"name": name, "loss": loss, "bpb": entry.get("bpb"),
                     "ppl": math.exp(loss) if finite and loss < 50 else None, "tokens": entry.get("tokens")})
    return [r for r in rows if r["loss"] is not None]


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """A small text table of `val_rows`: loss / bpb / perplexity / tokens."""
    lines = [f"{'val':<19} {'loss':>8} {'bpb':>8} {'ppl':>10} {'tokens':>10}"]
    for r in val_rows(report):
        lines.append(f"{r['name']:<19} {_num(r['loss'], '.4f'):>8} {_num(r['bpb'], '.4f'):>8} "
                     f"{_num(r['ppl'], '.2f'):>10} {_num(r['tokens'], ','):>10}")
    return "\n".join(lines)


def format_line(report: dict) -> str:
    """One line for summaries: model loss and bits per byte beside the baseline."""
    rows = {r["name"]: r for r in val_rows(report)}
    bound = (report.get("model") or {}).get("bound")
    model, base = rows.get("model (ELBO bound)" if bound else "model", {}), rows.get("unigram baseline", {})
    return (f"{_num(model.get('loss'), '.4f')} nats/token, {_num(model.get('bpb'), '.4f')} bits/byte"
            f"{' (ELBO upper bound)' if bound else ''} "
            f"(unigram baseline {_num(base.get('loss'), '.4f')}, {_num(base.get('bpb'), '.4f')})")


def run_validation_entry(ckpt: Path, progress: bool = True) -> dict[str, Any]:
    """The `ppl:val` task: val.json of a run's checkpoint as a results entry (loss, bpb, unigram baseline)."""
    from slmkit.config import load_recipe
    from slmkit.pipeline.rundir import run_of_checkpoint

    run = run_of_checkpoint(ckpt)
    if run is None:
        raise SlmError(f"task ppl:val needs a checkpoint of a run (its validation split); {ckpt} is a bare model "
                       "folder: use ppl:<source type> (e.g. ppl:python-docs) instead")
    recipe = load_recipe(run.recipe)
    with run.writing("slm eval"):
        report = evaluate_run(recipe, run, ckpt=ckpt, progress=progress)
    metrics = {"loss": report["model"]["loss"], "bits_per_byte": report["model"]["bpb"],
               "unigram_loss": report["unigram"]["loss"], "unigram_bits_per_byte": report["unigram"]["bpb"]}
    return {"task": "ppl:val", "family": "perplexity", "source": f"{run.root}/data (val split)",
            "n": report["model"]["tokens"], "num_fewshot": 0, "seconds": report["seconds"],
            "metrics": {name: {"value": value, "stderr": None, "higher_is_better": False}
                        for name, value in metrics.items()}}
