"""`slm eval RUN_OR_CKPT [KEY=VALUE ...]`: validation loss and bits per byte beside a unigram baseline."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from slmkit.commands.common import add_run_or_ckpt_args

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a run's checkpoint: validation loss, bits per byte, unigram baseline",
        description="Score a checkpoint of a run on the run's validation split (the eval stage of `slm run`) "
        "and write RUN/eval/val.json. Settings: eval.batches, eval.batch_size, eval.device (default: the "
        "train section's eval_batches, batch_size and device).",
    )
    add_run_or_ckpt_args(parser, "evaluates")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or lines")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from slmkit.commands.common import run_and_checkpoint
    from slmkit.eval.perplexity import evaluate_run, format_table

    with run_and_checkpoint(args, "eval") as (recipe, run, ckpt):
        result = evaluate_run(recipe, run, ckpt=ckpt, progress=args.progress)
    print(json.dumps(result) if args.json else f"{result['checkpoint']} (step {result['step']})\n{format_table(result)}")
    return 0
