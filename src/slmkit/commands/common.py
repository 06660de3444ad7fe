"""Argument helpers shared by the CLI verbs: recipe arguments, opening a run folder, running stages."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmkit.config import Recipe, load_recipe, to_dict
from slmkit.errors import SlmError
from slmkit.pipeline.rundir import (
    RunDir,
    default_run_dir,
    recipe_differences,
    resolve_checkpoint,
    run_of_checkpoint,
)


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """RECIPE, key=value overrides, --out and --force."""
    parser.add_argument("recipe", metavar="RECIPE", help="recipe YAML file (see recipes/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, e.g. train.max_steps=30"
    )
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<recipe name>)")
    parser.add_argument(
        "--force", action="store_true",
        help="use a run folder that holds a different recipe: what the changed keys made is discarded and rebuilt",
    )


@contextlib.contextmanager
def opened_run(args: argparse.Namespace, verb: str) -> Iterator[tuple[Recipe, RunDir]]:
    """Load the recipe (every value checked first), then lock the run folder and adopt the recipe."""
    recipe = load_recipe(args.recipe, args.overrides)
    if args.out is not None and not args.out.strip():
        raise SlmError("--out is empty; name a run folder (or leave --out out for runs/<recipe name>)")
    run = RunDir(Path(args.out) if args.out else default_run_dir(recipe))
    with run.writing(f"slm {verb}"):
        run.adopt(recipe, force=args.force)
        yield recipe, run


def run_stage_command(args: argparse.Namespace, verb: str, stage: str, progress: bool = True) -> dict[str, Any]:
    """`slm VERB RECIPE`: one stage of the recipe (with the earlier stages it still needs)."""
    from slmkit.pipeline.stages import run_stages

    def log(text: str) -> None:  # the stage itself reports; only reuse is worth a line here
        if ": reusing " in text:
            print(text.split(": ", 1)[1], file=sys.stderr, flush=True)

    with opened_run(args, verb) as (recipe, run):
        return run_stages(recipe, run, [stage], log=log, progress=progress, record=False)


def add_run_or_ckpt_args(parser: argparse.ArgumentParser, what: str) -> None:
    """RUN_OR_CKPT and key=value overrides of the run's recipe (for eval and sample)."""
    parser.add_argument("target", metavar="RUN_OR_CKPT",
                        help=f"a run folder ({what} its latest checkpoint) or one of its ckpt/step-NNNNNN folders")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override keys of the run's recipe.yaml, e.g. eval.batches=4 (settings of this stage)")


@contextlib.contextmanager
def run_and_checkpoint(args: argparse.Namespace, verb: str) -> Iterator[tuple[Recipe, RunDir, Path]]:
    """The run folder (locked), its recipe with overrides, and the checkpoint RUN_OR_CKPT names."""
    from slmkit.pipeline.rundir import MODEL_CONFIG_FILE, RECIPE_FILE

    target = Path(args.target)
    if (target / RECIPE_FILE).is_file():
        run, ckpt = RunDir(target), None
    elif (target / MODEL_CONFIG_FILE).is_file():
        run, ckpt = run_of_checkpoint(target), resolve_checkpoint(target)
        if run is None:
            raise SlmError(f"{target} is a model folder outside a run folder; `slm {verb}` needs the run's "
                           "recipe and data (use `slm generate` for a bare model folder)")
    else:
        raise SlmError(f"{target}: not a run folder (no {RECIPE_FILE}) or a checkpoint folder (no {MODEL_CONFIG_FILE})")
    saved, recipe = load_recipe(run.recipe), load_recipe(run.recipe, args.overrides)
    changed = recipe_differences(to_dict(saved), to_dict(recipe))
    if changed:
        raise SlmError(f"slm {verb} cannot change {', '.join(changed[:5])} of an existing run (only settings such "
                       "as eval.* and sample.*); train a new run with `slm train RECIPE --out DIR` instead")
    with run.writing(f"slm {verb}"):
        yield recipe, run, ckpt or run.require_checkpoint()


def human_bytes(n: int) -> str:
    """'1.25 GiB', '3.40 MiB', '12.00 KiB' or '512 B'."""
    for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {suffix}"
    return f"{n} B"
