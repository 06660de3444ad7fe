"""`slm`: one verb per stage. Thin: parse, load the recipe, call one stage function, print results."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from slmkit import __version__
from slmkit.errors import BrokenInstallError, SlmError

# Verbs that are not pipeline stages; the stage verbs come from the stage registry.
TOOL_COMMANDS = ("slmkit.commands.run", "slmkit.commands.model", "slmkit.commands.generate", "slmkit.commands.import_",
                 "slmkit.commands.export", "slmkit.commands.quantize", "slmkit.commands.serve",
                 "slmkit.commands.chat", "slmkit.commands.plan", "slmkit.commands.sweep")


def command_modules() -> list[str]:
    """Every verb's module: one per stage of `slmkit.pipeline.stages.STAGES`, then the tools."""
    from slmkit.pipeline.stages import STAGES

    return list(dict.fromkeys([*(stage.command for stage in STAGES.values()), *TOOL_COMMANDS]))


def build_parser() -> argparse.ArgumentParser:
    """The `slm` parser. Each command module exposes `register(subparsers)`; heavy imports stay inside
    handlers so that `slm --help` is fast. A module that cannot be imported is an error, never a
    silently missing verb."""
    parser = argparse.ArgumentParser(
        prog="slm",
        description="slmkit: plan, train a tokenizer, prepare data, train, evaluate, sample, quantize, export and "
        "serve small language models.",
    )
    parser.add_argument("--version", action="version", version=f"slmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise BrokenInstallError(
                f"the command module {name} cannot be imported ({type(exc).__name__}: {exc}); "
                "reinstall slmkit (pip install -e .)"
            ) from None
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except SlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
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
    except BrokenPipeError:  # `slm ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
