"""`slm sweep isoflop RECIPE --budgets C1,C2,... --sizes auto --out DIR`: fit our own scaling law."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """example:
  slm sweep isoflop recipes/quickstart.yaml --budgets 3e12,1e13,3e13 --out runs/sweep
  slm plan --flops 1e14 --law runs/sweep/fit.json      use the fitted law

Every run is a normal run folder under DIR/runs/; a second invocation reuses finished runs and
resumes an interrupted one. See docs/scaling.md."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="train grids of tiny models at fixed budgets and fit a scaling law")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    iso = kinds.add_parser(
        "isoflop",
        help="IsoFLOP sweep: several model sizes per FLOP budget, then per-budget parabolas, N_opt = k C^a and "
        "the parametric L(N, D)",
        description="For each budget C, train LLaMA-style models of several sizes N on D = C / 6N tokens each "
        "(N counts the transformer layers' parameters, as Kaplan et al.). Tokenizer and data are prepared once. "
        "Then fit per-budget parabolas of loss against log N, the power laws N_opt = k C^a and D_opt = k C^b "
        "(Chinchilla approach 2) and L(N, D) = E + A/N^alpha + B/D^beta with a Huber loss on log-loss (approach 3), "
        "all with bootstrap intervals. Writes DIR/fit.json (usable as slm plan --law DIR/fit.json), "
        "DIR/isoflop.png and DIR/isoflop.html (the report page).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    iso.add_argument("recipe", metavar="RECIPE", help="a pretraining recipe (its tokenizer, data and train settings)")
    iso.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, e.g. train.lr=0.002")
    iso.add_argument("--budgets", required=True, metavar="C1,C2,...", help="FLOP budgets, e.g. 3e12,1e13,3e13")
    iso.add_argument("--sizes", default="auto", metavar="auto|N1,N2,...",
                     help="model sizes to try at every budget (default auto: 5 sizes, 2x apart, around ~20 tokens "
                     "per parameter)")
    iso.add_argument("--out", required=True, metavar="DIR", help="sweep folder")
    iso.add_argument("--eval-batches", type=int, default=64, metavar="N",
                     help="validation batches scored at the end of each run (default 64, or the whole split)")
    iso.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap resamples (default 200)")
    iso.add_argument("--force", action="store_true", help="reuse run folders made from a different recipe")
    iso.add_argument("--progress", action="store_true", help="show each run's progress bar")
    iso.add_argument("--json", action="store_true", help="print fit.json's content at the end")
    iso.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `slm sweep isoflop`."""
    from slmkit.config import load_recipe
    from slmkit.errors import SlmError
    from slmkit.scaling.sweep import SweepDir, parse_budgets, parse_sizes, run_sweep
    from slmkit.scaling.sweep_report import exponent_rows

    budgets, sizes = parse_budgets(args.budgets), parse_sizes(args.sizes)
    if args.eval_batches < 1 or args.bootstrap < 0:
        raise SlmError("--eval-batches must be >= 1 and --bootstrap >= 0")
    recipe = load_recipe(args.recipe, args.overrides)
    fit = run_sweep(recipe, Path(args.out), budgets, sizes, eval_batches=args.eval_batches, n_boot=args.bootstrap,
                    force=args.force, progress=args.progress,
                    log=lambda text: print(text, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(fit))
        return 0
    for group in fit["budgets"]:
        if group["params_opt"] is None:
            print(f"C={group['budget']:.0e}: no minimum inside the sizes tried (the loss is not convex in log N)")
            continue
        edge = "" if group["inside_range"] else "  (outside the sizes tried: an extrapolation)"
        print(f"C={group['budget']:.0e}: N_opt {group['params_opt']:.4g}, D_opt {group['tokens_opt']:.4g}, "
              f"loss {group['loss_opt']:.4f}{edge}")
    for source, a, b in exponent_rows(fit):
        print(f"{source:<45} a {a:<22} b {b}")
    if fit["parametric_error"]:
        print(fit["parametric_error"])
    sweep = SweepDir(args.out)
    print(f"fit: {sweep.fit}  plot: {sweep.plot}  report: {sweep.page}")
    if fit["isoflop"] is None:
        print(f"error: no scaling law: {fit['isoflop_error']}", file=sys.stderr)
        return 1
    return 0
