"""`slm`: one verb per stage. Thin: parse, load the recipe, call one stage function, print results."""

from __future__ import annotations

import argparse
import importlib
import sys

from slmkit import __version__
from slmkit.errors import SlmError

# Each module in slmkit.commands exposes `register(subparsers)`; heavy imports stay inside handlers
# so that `slm --help` is fast.
COMMAND_MODULES = [
    "slmkit.commands.tokenizer",
    "slmkit.commands.data",
    "slmkit.commands.model",
    "slmkit.commands.generate",
    "slmkit.commands.train",
    "slmkit.commands.run",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm",
        description="slmkit: train a tokenizer, prepare data, train, evaluate and sample small language models.",
    )
    parser.add_argument("--version", action="version", version=f"slmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`--out DIR key=value`): argparse leaves those as extras.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except SlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
