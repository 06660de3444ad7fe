"""`slm train RECIPE [KEY=VALUE ...] --out DIR`: pretrain or fine-tune a decoder, with checkpoints.

Distributed: `torchrun --nproc_per_node N -m slmkit.cli train RECIPE train.parallel=ddp|fsdp ...`.
"""

from __future__ import annotations

import argparse
import json
import signal

from slmkit.commands.common import add_recipe_args, opened_run

EPILOG = """\
examples:
  slm train recipes/quickstart.yaml train.max_steps=30 train.log_every=5 --out runs/q
  slm train recipes/quickstart.yaml train.max_steps=60 --out runs/q       # continue to step 60
  slm train recipes/quickstart.yaml train.max_steps=auto train.max_minutes=5 --out runs/q5
      # as many steps as fit 5 minutes here, measured in the first warm-up steps (docs/scaling.md)
  torchrun --nproc_per_node 2 -m slmkit.cli train recipes/quickstart.yaml train.parallel=fsdp --out runs/q2

recipe keys (train.*): max_steps (N | auto) max_minutes batch_size grad_accum optimizer (llama | phi-1_5) lr
  min_lr_ratio betas eps weight_decay grad_clip schedule (cosine | constant | linear | wsd) warmup_steps
  decay_fraction precision (auto | fp32 | bf16 | fp16) compile activation_checkpointing
  parallel (none | ddp | fsdp) reshard_after_forward device save_every log_every eval_every
  eval_batches keep_last seed max_bad_steps init_from

writes OUT/ckpt/step-NNNNNN/ (HF folder + optimizer state), OUT/ckpt/latest, OUT/metrics.jsonl, OUT/tb/
(and OUT/train_budget.json with max_steps: auto);
prints a JSON summary on stdout. Exit code 0 when done or stopped by train.max_minutes,
130/143 after SIGINT/SIGTERM (a checkpoint is written first; run again to resume).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a recipe (runs the tokenizer/data stages it still needs first)",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_recipe_args(parser)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_true", default=True,
                        help="continue from OUT/ckpt/latest when it exists (default)")
    resume.add_argument("--no-resume", dest="resume", action="store_false",
                        help="refuse to start if OUT already holds checkpoints")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Handler: load the recipe, open the run folder, run the missing earlier stages, train, print the summary."""
    import os

    from slmkit.pipeline.stages import prerequisites, run_stages
    from slmkit.train.loop import train

    def earlier_stages() -> None:  # rank 0 only, while the other ranks wait at a barrier
        run_stages(recipe, run, prerequisites(recipe, run, "train"), progress=args.progress, record=False,
                   preflight_for=["train"])

    with opened_run(args, "train") as (recipe, run):
        summary = train(recipe, run, resume=args.resume, progress=args.progress, prepare=earlier_stages)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    stopped = summary.get("stopped")
    if stopped in ("SIGINT", "SIGTERM"):
        return 128 + int(getattr(signal, stopped))
    return 0

