"""The eval stage of a run: the recipe's `eval.tasks` on the latest (or a given) checkpoint.

`ppl:val` (the default) writes RUN/eval/val.json through the run's objective; every other task
runs through the harness into RUN/eval/tasks.json (+ tasks.samples.jsonl, tasks.md), stamped with
the checkpoint and settings so that an unchanged run reuses it. A CodeFusion run's checkpoint is
scored through CodeFusionLM (codefusion-* tasks, default candidate settings), a decoder's through
DecoderLM.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from slmkit.eval.tasks import RUN_VALIDATION
from slmkit.pipeline.rundir import RunDir


def benchmark_tasks(recipe: Any) -> list[str]:
    """The recipe's eval tasks other than ppl:val."""
    return [t for t in recipe.eval.tasks if t != RUN_VALIDATION]


def _settings(recipe: Any) -> dict[str, Any]:
    return {"tasks": benchmark_tasks(recipe), "limit": recipe.eval.limit, "num_fewshot": recipe.eval.num_fewshot}


def run_eval_stage(recipe: Any, run: str | Path | RunDir, ckpt: Path | None = None, progress: bool = True) -> dict:
    """Score the checkpoint on every eval task; return {"val": val.json or None, "tasks": results or None}."""
    from slmkit.eval.perplexity import evaluate_run, format_table

    run = RunDir.of(run)
    ckpt = ckpt or run.require_checkpoint()
    out: dict[str, Any] = {"val": None, "tasks": None}
    if RUN_VALIDATION in recipe.eval.tasks:
        out["val"] = evaluate_run(recipe, run, ckpt=ckpt, progress=progress)
        print(format_table(out["val"]), file=sys.stderr)
    if benchmark_tasks(recipe):
        out["tasks"] = _run_benchmarks(recipe, run, ckpt, progress)
    return out


def _run_benchmarks(recipe: Any, run: RunDir, ckpt: Path, progress: bool) -> dict:
    from slmkit.data.paths import datasets_dir
    from slmkit.eval.harness import EvalOptions, evaluate, load_lm, train_flops
    from slmkit.eval.results import results_entry, summary_lines, write_results
    from slmkit.eval.tasks import get_tasks

    settings = _settings(recipe)
    batch_size = recipe.eval.batch_size or recipe.train.batch_size
    lm = load_lm(ckpt, device=recipe.eval.device or recipe.train.device, batch_size=batch_size,
                 name=f"{run.root.name}/{ckpt.name}")  # a CodeFusion or a decoder checkpoint
    tasks = get_tasks(settings["tasks"], limit=settings["limit"])
    results, samples = evaluate(lm, tasks, EvalOptions(datasets_dir(), settings["limit"], settings["num_fewshot"],
                                                       progress))
    results["model"]["train_flops"] = train_flops(ckpt)
    results = results_entry({**results, "checkpoint": run.label(ckpt), "stage_settings": settings})
    write_results(run.task_results, results, samples)
    print("\n".join(summary_lines(results)), file=sys.stderr)
    return results


def eval_stage_is_current(recipe: Any, run: str | Path | RunDir) -> bool:
    """Every eval output exists for the latest checkpoint with the current settings."""
    from slmkit.eval.perplexity import eval_is_current

    run = RunDir.of(run)
    if RUN_VALIDATION in recipe.eval.tasks and not eval_is_current(recipe, run):
        return False
    if benchmark_tasks(recipe):
        saved = run.saved_for_latest_checkpoint(run.task_results)
        return saved is not None and saved.get("stage_settings") == _settings(recipe)
    return True
