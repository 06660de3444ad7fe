"""`slm sample RUN_OR_CKPT [KEY=VALUE ...]`: the recipe's sample prompts completed by a checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from slmkit.commands.common import add_run_or_ckpt_args

    parser = subparsers.add_parser(
        "sample",
        help="complete the recipe's sample prompts with a run's checkpoint -> samples.md",
        description="The sample stage of `slm run`: one completion per sample.prompts entry, written to "
        "RUN/samples.json and RUN/samples.md. Settings: sample.max_new_tokens, temperature, top_k, top_p, "
        "seed, device. For free-form prompts use `slm generate`.",
    )
    add_run_or_ckpt_args(parser, "samples")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from slmkit.commands.common import run_and_checkpoint
    from slmkit.pipeline.sample import sample_run, samples_markdown

    with run_and_checkpoint(args, "sample") as (recipe, run, ckpt):
        data = sample_run(recipe, run, ckpt=ckpt)
    print(samples_markdown(data))
    return 0
