"""`slm tokenizer train RECIPE`: train a byte-level BPE on the recipe's sources -> RUN/tokenizer.json."""

from __future__ import annotations

import argparse
import json

from slmkit.commands.common import add_recipe_args, run_stage_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    verbs = parser.add_subparsers(dest="tokenizer_command", metavar="VERB", required=True)
    train = verbs.add_parser(
        "train",
        help="train RUN/tokenizer.json from the recipe's sources",
        description="Train a byte-level BPE (HF tokenizers) with the recipe's vocab size and special tokens "
        "on a sample of its data sources (tokenizer.max_train_bytes). Reuses an identical earlier result.",
    )
    add_recipe_args(train)
    train.set_defaults(handler=train_command)


def train_command(args: argparse.Namespace) -> int:
    from slmkit.pipeline.rundir import RunDir
    from slmkit.tokenizer import eos_id, load_tokenizer, mask_id, pad_id

    path = RunDir(run_stage_command(args, "tokenizer train", "tokenizer")["run_dir"]).tokenizer
    tok = load_tokenizer(path)
    result = {
        "tokenizer": str(path),
        "vocab_size": tok.get_vocab_size(),
        "eos_id": eos_id(tok),
        "pad_id": pad_id(tok),
        "mask_id": mask_id(tok),
    }
    print(json.dumps(result))
    return 0
