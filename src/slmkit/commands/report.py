"""`slm report RUN`: write RUN/report.html from whatever the run folder holds."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write RUN/report.html: loss curves, eval numbers, samples and settings of a run",
        description="The report stage of `slm run`: one self-contained HTML page (with RUN/loss.png) from the "
        "run folder's recipe, metrics, eval results, samples and data manifest.",
    )
    parser.add_argument("run", metavar="RUN", help="a run folder (holding recipe.yaml)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from slmkit.errors import SlmError
    from slmkit.pipeline.report import write_report
    from slmkit.pipeline.rundir import RunDir

    run = RunDir(args.run)
    if not run.recipe.is_file():
        raise SlmError(f"{run.root}: not a run folder (no {run.recipe.name})")
    with run.writing("slm report"):
        path = write_report(run)
    print(path)
    return 0
