"""The stage registry and runner: tokenizer -> data -> train -> eval -> sample -> report.

`STAGES` is the one list of stages. `slm run` runs the recipe's `stages` in order and every stage
is also a CLI verb of its own (`Stage.command` names its module), built from this registry by
`slmkit.cli`. A stage knows when its output in the run folder is complete and current; such a
stage is reused, not redone. What a stage means for a kind of training is the objective's business
(`slmkit.objectives`): this module never looks at the task's name.

A stage runs its prerequisites (`requires`, those that apply to the objective) first when their
output is missing or was made from other inputs, so `slm train` on a fresh folder trains the
tokenizer and prepares the data through the same runner as `slm run`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError, did_you_mean
from slmkit.fileio import atomic_write_json
from slmkit.pipeline.rundir import RunDir

if TYPE_CHECKING:
    from slmkit.config import Recipe


@dataclass(frozen=True)
class Stage:
    """One step of a recipe.

    is_current(recipe, run): its output is complete and made from the current inputs (reuse it).
    is_made(recipe, run): cheaper test used for prerequisites: the output exists for these inputs.
    run(recipe, run, progress): makes the output.
    """

    name: str
    command: str  # module of the CLI verb that runs this stage alone
    output: Callable[[RunDir], Path]  # where it writes, for messages
    requires: tuple[str, ...]
    is_current: Callable[[Recipe, RunDir], bool]
    run: Callable[..., Any]
    is_made: Callable[[Recipe, RunDir], bool] | None = None


# --------------------------------------------------------------------------- stage functions


def _objective(recipe: Recipe):
    from slmkit.objectives import get_objective

    return get_objective(recipe.task, recipe)


def _tokenizer_current(recipe: Recipe, run: RunDir) -> bool:
    return _objective(recipe).tokenizer_is_current(recipe, run)


def _run_tokenizer(recipe: Recipe, run: RunDir, progress: bool = True) -> Any:
    return _objective(recipe).make_tokenizer(recipe, run, progress=progress)


def _data_current(recipe: Recipe, run: RunDir) -> bool:
    from slmkit.data.prepare import data_is_current

    return data_is_current(recipe, run)


def _data_made(recipe: Recipe, run: RunDir) -> bool:
    from slmkit.data.prepare import data_is_current

    return data_is_current(recipe, run, verify=False)  # the trainer verifies the shards it reads


def _run_data(recipe: Recipe, run: RunDir, progress: bool = True) -> Any:
    from slmkit.data.prepare import prepare_data

    return prepare_data(recipe, run, progress=progress)


def _train_current(recipe: Recipe, run: RunDir) -> bool:
    """Finished: the latest checkpoint reached train.max_steps or spent the train.max_minutes budget.

    A run stopped by a signal or a kill resumes; a larger max_steps or max_minutes continues it.
    """
    from slmkit.train.budget import finished, is_auto, recorded_max_steps
    from slmkit.train.checkpoint import read_trainer_state

    ckpt = run.latest_checkpoint()
    if ckpt is None:
        return False
    state = read_trainer_state(ckpt)
    tc = recipe.train
    total = recorded_max_steps(state, run, tc.max_minutes) if is_auto(tc.max_steps) else tc.max_steps
    return finished(state, total, tc.max_minutes) is not None


def _has_checkpoint(recipe: Recipe, run: RunDir) -> bool:
    return run.latest_checkpoint() is not None


def _run_train(recipe: Recipe, run: RunDir, progress: bool = True) -> Any:
    from slmkit.train.loop import train

    return train(recipe, run, resume=True, progress=progress)


def _eval_current(recipe: Recipe, run: RunDir) -> bool:
    from slmkit.eval.stage import eval_stage_is_current

    return eval_stage_is_current(recipe, run)


def _run_eval(recipe: Recipe, run: RunDir, progress: bool = True) -> Any:
    from slmkit.eval.stage import run_eval_stage

    return run_eval_stage(recipe, run, progress=progress)


def _sample_current(recipe: Recipe, run: RunDir) -> bool:
    from slmkit.pipeline.sample import samples_are_current

    return samples_are_current(recipe, run)


def _run_sample(recipe: Recipe, run: RunDir, progress: bool = True) -> Any:
    from slmkit.pipeline.sample import sample_run

    return sample_run(recipe, run)


def _report_current(recipe: Recipe, run: RunDir) -> bool:
    from slmkit.pipeline.report import report_is_current

    return report_is_current(run)


def _run_report(recipe: Recipe, run: RunDir, progress: bool = True) -> Any:
    from slmkit.pipeline.report import write_report

    return write_report(run)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("tokenizer", "slmkit.commands.tokenizer", lambda run: run.tokenizer, (), _tokenizer_current,
              _run_tokenizer),
        Stage("data", "slmkit.commands.data", lambda run: run.manifest, ("tokenizer",), _data_current, _run_data,
              _data_made),
        Stage("train", "slmkit.commands.train", lambda run: run.ckpt_root, ("tokenizer", "data"), _train_current,
              _run_train, _has_checkpoint),
        Stage("eval", "slmkit.commands.eval", lambda run: run.eval_dir, (), _eval_current, _run_eval),
        Stage("sample", "slmkit.commands.sample", lambda run: run.samples_md, (), _sample_current, _run_sample),
        Stage("report", "slmkit.commands.report", lambda run: run.report, (), _report_current, _run_report),
    )
}


# --------------------------------------------------------------------------- recipe checks


def check_stages(recipe: Recipe, names: list[str] | None = None, where: str = "recipe key 'stages': ") -> None:
    """Every name in `names` (default: the recipe's `stages`) is a stage that applies to its objective."""
    objective = _objective(recipe)
    for stage in recipe.stages if names is None else names:
        if stage not in STAGES:
            raise SlmError(f"{where}unknown stage {stage!r}{did_you_mean(stage, STAGES)}; stages: {', '.join(STAGES)}")
        if stage not in objective.stages:
            raise SlmError(f"{where}stage {stage!r} does not apply to task: {objective.name} "
                           f"(its stages: {', '.join(objective.stages)})")


# --------------------------------------------------------------------------- runner


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def plan(recipe: Recipe, run: RunDir, names: list[str]) -> list[tuple[str, bool]]:
    """(stage, requested) in run order: `names`, each preceded by the prerequisites it still needs."""
    applies = _objective(recipe).stages
    out: list[tuple[str, bool]] = []

    def add(name: str, requested: bool) -> None:
        if any(n == name for n, _ in out):
            return
        stage = STAGES[name]
        for dep in stage.requires:
            if dep in applies and dep not in names:
                made = STAGES[dep].is_made or STAGES[dep].is_current
                if not made(recipe, run):
                    add(dep, False)
        out.append((name, requested))

    for name in names:
        add(name, True)
    return out


def prerequisites(recipe: Recipe, run: RunDir, name: str) -> list[str]:
    """The earlier stages `name` needs that are not made yet, in run order."""
    return [n for n, requested in plan(recipe, run, [name]) if not requested]


def run_stages(recipe: Recipe, run: str | Path | RunDir, names: list[str] | None = None,
               log: Callable[[str], None] = _log, progress: bool = True, record: bool = True,
               preflight_for: list[str] | None = None) -> dict[str, Any]:
    """Run `names` (default: the recipe's `stages`) in order with their missing prerequisites,
    reusing complete outputs. Returns {"run_dir", "stages": [{"name", "status", "seconds"}], "train"?}
    and, with `record`, writes it to RUN/run.json. Inputs of `preflight_for` (default: `names`) are
    checked before anything runs."""
    run = RunDir.of(run)
    names = list(recipe.stages if names is None else names)
    check_stages(recipe, names, where="")
    _objective(recipe).preflight(recipe, run, names if preflight_for is None else preflight_for)
    steps = plan(recipe, run, names)
    result: dict[str, Any] = {"run_dir": str(run.root), "stages": []}
    for i, (name, requested) in enumerate(steps, start=1):
        stage = STAGES[name]
        prefix = f"[{i}/{len(steps)}] {name}" + ("" if requested else " (needed first)")
        start = time.perf_counter()
        if stage.is_current(recipe, run):
            log(f"{prefix}: reusing {stage.output(run)}")
            status = "reused"
        else:
            log(f"{prefix}: running")
            output = stage.run(recipe, run, progress=progress)
            status = "ran"
            if name == "train":
                result["train"] = output
        seconds = round(time.perf_counter() - start, 2)
        result["stages"].append({"name": name, "status": status, "seconds": seconds})
        log(f"{prefix}: {status} in {seconds:.1f}s")
        stopped = (result.get("train") or {}).get("stopped") if name == "train" else None
        if stopped in ("SIGINT", "SIGTERM"):  # the user asked to stop: the later stages wait for a rerun
            log(f"stopped by {stopped} after the train stage; run the same command again to continue")
            result["stopped"] = stopped
            break
    if record:
        atomic_write_json(run.run_record, result)
    return result


def results_summary(run: str | Path | RunDir) -> str:
    """Where the results are: report, checkpoint, val numbers, samples (only what exists)."""
    from slmkit.eval.perplexity import format_line

    run = RunDir.of(run)
    lines = [f"results in {run.root}"]
    if run.report.is_file():
        lines.append(f"  report:     {run.report}")
    ckpt = run.latest_checkpoint()
    if ckpt is not None:
        lines.append(f"  checkpoint: {run.root / run.label(ckpt)}")
    val = run.read_json(run.val_results)
    if isinstance(val, dict):
        lines.append(f"  val loss:   {format_line(val)}")
    if run.samples_md.is_file():
        lines.append(f"  samples:    {run.samples_md}")
    return "\n".join(lines)
