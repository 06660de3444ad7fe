"""`slm data prepare RECIPE`: tokenize, dedup, split, mix and shard the recipe's sources -> RUN/data/."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from slmkit.commands.common import add_recipe_args

    parser = subparsers.add_parser("data", help="prepare token shards from the recipe's data sources")
    verbs = parser.add_subparsers(dest="data_command", metavar="VERB", required=True)
    prepare = verbs.add_parser(
        "prepare",
        help="tokenize + mix the sources into RUN/data (shards + manifest.json)",
        description="Tokenize the recipe's sources (training the tokenizer first if needed), drop exact "
        "duplicates, hold out data.val_fraction of documents by hash, mix by weight (effective epochs per "
        "source) and write packed uint16/uint32 shards plus data/manifest.json. Reuses verified shards; "
        "rebuilds missing or corrupt ones.",
    )
    add_recipe_args(prepare)
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(handler=prepare_command)


def prepare_command(args: argparse.Namespace) -> int:
    from slmkit.commands.common import run_stage_command

    result = run_stage_command(args, "data prepare", "data", progress=not args.quiet)
    from slmkit.pipeline.rundir import RunDir

    print_summary(RunDir(result["run_dir"]).read_manifest())
    return 0


def print_summary(manifest: dict) -> None:
    """A per-source table (docs, tokens, weight, effective epochs, mixture tokens) on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data ({manifest['dtype']}, vocab {manifest['tokenizer']['vocab_size']})")
    for col in ("source", "type", "docs train/val", "unique tokens", "weight", "epochs", "mixture tokens", "dups"):
        table.add_column(col, justify="left" if col in ("source", "type") else "right")
    names = list(manifest["sources"])
    for name, src in manifest["sources"].items():
        table.add_row(
            name,
            src["type"],
            f"{src['docs']['train']:,}/{src['docs']['val']:,}",
            f"{src['tokens']['train']:,}",
            f"{src['weight']:.3f}",
            f"{src['epochs']:.2f}",
            f"{src['mixture_tokens']:,}",
            f"{src['duplicates_removed']:,}",
            end_section=name == names[-1],
        )
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    table.add_row("train", "", f"{train['docs']:,}", "", "", "", f"{train['tokens']:,}", "")
    table.add_row("val", "", f"{val['docs']:,}", f"{val['tokens']:,}", "", "", "", "")
    Console(width=120).print(table)
