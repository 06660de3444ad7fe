"""The ordered stage runner behind `slm run`: tokenizer -> data -> train -> eval -> sample -> report.

Each stage knows when its output in the run folder is complete and current; such a stage is
reused, not redone. Training always goes through the trainer, which resumes from the latest
checkpoint and returns at once when the run is already finished.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.config import Recipe
from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json

RUN_FILE = "run.json"


@dataclass(frozen=True)
class Stage:
    """One step of a recipe: `is_current` says whether its output can be reused; `run` makes it."""

    name: str
    output: str  # what it writes, for messages
    is_current: Callable[[Recipe, Path], bool]
    run: Callable[[Recipe, Path], Any]


# --------------------------------------------------------------------------- stage functions


def _tokenizer_current(recipe: Recipe, run_dir: Path) -> bool:
    import json

    from slmkit.fileio import sha256_file
    from slmkit.tokenizer import META_FILE, TOKENIZER_FILE, tokenizer_fingerprint

    tok, meta = run_dir / TOKENIZER_FILE, run_dir / META_FILE
    try:
        saved = json.loads(meta.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return tok.is_file() and saved.get("fingerprint") == tokenizer_fingerprint(recipe) and saved.get(
        "sha256"
    ) == sha256_file(tok)


def _run_tokenizer(recipe: Recipe, run_dir: Path) -> Any:
    from slmkit.tokenizer import train_tokenizer

    return train_tokenizer(recipe, run_dir)


def _data_current(recipe: Recipe, run_dir: Path) -> bool:
    from slmkit.data.prepare import data_fingerprint, read_manifest_file, reusable
    from slmkit.fileio import sha256_file
    from slmkit.tokenizer import TOKENIZER_FILE

    tok = run_dir / TOKENIZER_FILE
    if not tok.is_file():
        return False
    data_dir = run_dir / "data"
    return reusable(read_manifest_file(data_dir), data_fingerprint(recipe, sha256_file(tok)), data_dir)[0]


def _run_data(recipe: Recipe, run_dir: Path) -> Any:
    from slmkit.data.prepare import prepare_data

    return prepare_data(recipe, run_dir)


def _train_current(recipe: Recipe, run_dir: Path) -> bool:
    """Finished: the latest checkpoint reached train.max_steps or spent the train.max_minutes budget.

    A run stopped by a signal or a kill resumes; a larger max_steps or max_minutes continues it.
    """
    from slmkit.train.checkpoint import latest_checkpoint, read_trainer_state

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return False
    state = read_trainer_state(ckpt)
    budget = recipe.train.max_minutes
    out_of_time = budget is not None and state.get("train_time_s", 0.0) >= 60 * budget
    return state.get("step", 0) >= recipe.train.max_steps or out_of_time


def _run_train(recipe: Recipe, run_dir: Path) -> Any:
    from slmkit.train.loop import train

    return train(recipe, run_dir, resume=True, progress=True)


def _eval_current(recipe: Recipe, run_dir: Path) -> bool:
    from slmkit.eval.perplexity import eval_is_current

    return eval_is_current(recipe, run_dir)


def _run_eval(recipe: Recipe, run_dir: Path) -> Any:
    from slmkit.eval.perplexity import evaluate_run, format_table

    result = evaluate_run(recipe, run_dir)
    print(format_table(result), file=sys.stderr)
    return result


def _sample_current(recipe: Recipe, run_dir: Path) -> bool:
    from slmkit.pipeline.sample import samples_are_current

    return samples_are_current(recipe, run_dir)


def _run_sample(recipe: Recipe, run_dir: Path) -> Any:
    from slmkit.pipeline.sample import sample_run

    return sample_run(recipe, run_dir)


def _report_current(recipe: Recipe, run_dir: Path) -> bool:
    from slmkit.pipeline.report import report_is_current

    return report_is_current(run_dir)


def _run_report(recipe: Recipe, run_dir: Path) -> Any:
    from slmkit.pipeline.report import write_report

    return write_report(run_dir)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("tokenizer", "tokenizer.json", _tokenizer_current, _run_tokenizer),
        Stage("data", "data/manifest.json", _data_current, _run_data),
        Stage("train", "ckpt/", _train_current, _run_train),
        Stage("eval", "eval/val.json", _eval_current, _run_eval),
        Stage("sample", "samples.md", _sample_current, _run_sample),
        Stage("report", "report.html", _report_current, _run_report),
    )
}


# --------------------------------------------------------------------------- runner


def preflight(recipe: Recipe, run_dir: Path) -> None:
    """Fail fast, before any stage runs, on inputs a later stage would miss (SFT data, init checkpoint)."""
    if recipe.task != "sft":
        return
    from slmkit.data.sft import get_template, resolve_sft_path

    get_template(recipe.sft.template)
    if not recipe.sft.path:
        raise SlmError("recipe key 'sft.path' is required for task: sft (a jsonl of prompt/response pairs)")
    resolve_sft_path(recipe.sft.path)
    if recipe.sft.val_path:
        resolve_sft_path(recipe.sft.val_path, "sft.val_path")
    if recipe.train.init_from and "train" in recipe.stages:
        from slmkit.train.checkpoint import latest_checkpoint, resolve_checkpoint

        if latest_checkpoint(run_dir) is None and not Path(recipe.train.init_from).exists():
            raise SlmError(
                f"recipe key 'train.init_from': {recipe.train.init_from} does not exist; pretrain first "
                "(slm run recipes/quickstart.yaml) or set train.init_from=PATH to a checkpoint folder"
            )
        resolve_checkpoint(recipe.train.init_from)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_stages(recipe: Recipe, run_dir: str | Path, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run the recipe's `stages` in order, reusing complete outputs; returns and writes RUN/run.json.

    run.json: {"run_dir", "stages": [{"name", "status": "ran" | "reused", "seconds"}], "train": summary}.
    """
    run_dir = Path(run_dir)
    preflight(recipe, run_dir)
    record: dict[str, Any] = {"run_dir": str(run_dir), "stages": []}
    names = list(recipe.stages)
    for i, name in enumerate(names, start=1):
        stage = STAGES[name]
        prefix = f"[{i}/{len(names)}] {name}"
        start = time.perf_counter()
        if stage.is_current(recipe, run_dir):
            log(f"{prefix}: reusing {run_dir / stage.output}")
            status = "reused"
        else:
            log(f"{prefix}: running")
            result = stage.run(recipe, run_dir)
            status = "ran"
            if name == "train":
                record["train"] = result
        seconds = round(time.perf_counter() - start, 2)
        record["stages"].append({"name": name, "status": status, "seconds": seconds})
        log(f"{prefix}: {status} in {seconds:.1f}s")
    atomic_write_json(run_dir / RUN_FILE, record)
    return record


def results_summary(run_dir: str | Path) -> str:
    """Where the results are: report, checkpoint, val numbers, samples (only what exists)."""
    import json

    from slmkit.train.checkpoint import latest_checkpoint

    run_dir = Path(run_dir)
    lines = [f"results in {run_dir}"]
    if (run_dir / "report.html").is_file():
        lines.append(f"  report:     {run_dir / 'report.html'}")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        lines.append(f"  checkpoint: {_relative(ckpt, run_dir)}")
    try:
        val = json.loads((run_dir / "eval" / "val.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        val = None
    if val:
        model, unigram = val["model"], val["unigram"]
        lines.append(
            f"  val loss:   {model['loss']:.4f} nats/token, {_bpb(model)} bits/byte "
            f"(unigram baseline {unigram['loss']:.4f}, {_bpb(unigram)})"
        )
    if (run_dir / "samples.md").is_file():
        lines.append(f"  samples:    {run_dir / 'samples.md'}")
    return "\n".join(lines)


def _bpb(entry: dict) -> str:
    return f"{entry['bpb']:.4f}" if entry.get("bpb") is not None else "-"


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(run_dir / path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)
