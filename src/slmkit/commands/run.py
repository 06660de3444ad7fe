"""`slm run RECIPE`: every stage the recipe names, in order; complete outputs are reused."""

from __future__ import annotations

import argparse

from slmkit.commands.common import add_recipe_args, opened_run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a recipe's stages (tokenizer, data, train, eval, sample, report); resumable",
        description=(
            "Run the stages listed in the recipe's `stages` key, in order. A stage whose output in the "
            "run folder is complete and current is reused; training resumes from the latest checkpoint. "
            "Choose stages with an override, e.g. stages=[eval,report]. Each stage is also a verb of its "
            "own (slm tokenizer train, slm data prepare, slm train, slm eval, slm sample, slm report)."
        ),
    )
    add_recipe_args(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars or lines")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import signal

    from slmkit.pipeline.stages import results_summary, run_stages

    with opened_run(args, "run") as (recipe, run):
        result = run_stages(recipe, run, progress=args.progress)
    print(results_summary(run))
    stopped = result.get("stopped")
    return 128 + int(getattr(signal, stopped)) if stopped else 0
