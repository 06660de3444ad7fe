"""Argument helpers shared by the CLI verbs."""

from __future__ import annotations

import argparse
from pathlib import Path

from slmkit.config import Recipe, load_recipe
from slmkit.pipeline.rundir import default_run_dir, open_run_dir


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """RECIPE, key=value overrides, --out and --force."""
    parser.add_argument("recipe", metavar="RECIPE", help="recipe YAML file (see recipes/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, e.g. train.max_steps=30"
    )
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--force", action="store_true", help="reuse a run folder that holds a different recipe")


def recipe_and_run_dir(args: argparse.Namespace) -> tuple[Recipe, Path]:
    """Load the recipe with overrides and open (create or reuse) its run folder."""
    recipe = load_recipe(args.recipe, args.overrides)
    out = Path(args.out) if args.out else default_run_dir(recipe)
    return recipe, open_run_dir(out, recipe, force=args.force)
