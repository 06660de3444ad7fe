"""`slm sweep isoflop`: train a grid of models at fixed FLOP budgets and fit our own scaling law.

For each budget C, models of several sizes N (LLaMA-style shapes from shapes.py) train on
D = C / 6N tokens each: every run is a normal run folder (DIR/runs/NAME) made by the stage runner
from the recipe, with the model shape, train.max_steps and a warm-up scaled to the run, and one
final evaluation. The tokenizer and data are prepared once (DIR/base) and linked into each run
(SweepDir names every path).
Finished runs are reused, interrupted ones resume. Then fit.py fits per-budget parabolas and the
power laws N_opt = k C^a, D_opt = k C^b (approach 2) and the parametric L(N, D) (approach 3).

N is counted as in PARAM_COUNT (see there why); C = 6 N D in the same units.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.pipeline.rundir import ARTIFACTS, RunDir
from slmkit.scaling.shapes import param_count, shape_for_params, smallest_params

# N counts every weight that takes part in a matmul: all but the input embedding table, the output head
# included (models/accounting.py; what MFU counts). Then C = 6ND is the runs' real model FLOPs (attention
# aside), so a budget is also a time budget. Tiny models with a vocabulary of thousands are mostly head;
# Kaplan's count (layers only) would make the head's FLOPs, 2-5x the layers' here, invisible to C.
PARAM_COUNT = "non-embedding"
AUTO_POINTS = 5
AUTO_SPREAD = 2.0  # neighbouring sizes of an auto grid differ by this factor
MIN_STEPS = 20  # a run shorter than this says little: such sizes are left out of the grid


class SweepDir:
    """A sweep folder: base/ (tokenizer and data), runs/NAME/ (run folders), fit.json, isoflop.png/.html."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    base = property(lambda self: self.root / "base")
    fit = property(lambda self: self.root / "fit.json")
    plot = property(lambda self: self.root / "isoflop.png")
    page = property(lambda self: self.root / "isoflop.html")

    def run(self, name: str) -> Path:
        return self.root / "runs" / name


@dataclass(frozen=True)
class GridRun:
    """One run of the sweep."""

    budget: float
    d_model: int
    n_layers: int
    n_heads: int
    multiple_of: int
    params: int  # N, counted as PARAM_COUNT
    steps: int
    tokens: int  # steps * tokens per step

    @property
    def name(self) -> str:
        return f"C{self.budget:.0e}-L{self.n_layers}-d{self.d_model}".replace("+", "")

    def describe(self) -> str:
        return (f"C={self.budget:.0e} N={self.params / 1e6:.3g}M ({self.n_layers} x {self.d_model}) "
                f"D={self.tokens / 1e6:.3g}M tokens, {self.steps} steps")


def parse_budgets(text: str) -> list[float]:
    """'1e13,3e13' -> [1e13, 3e13] (positive, distinct)."""
    try:
        budgets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SlmError(f"--budgets must be comma-separated numbers of FLOPs, got {text!r}") from None
    if not budgets or any(not (math.isfinite(b) and b > 0) for b in budgets) or len(set(budgets)) != len(budgets):
        raise SlmError(f"--budgets must be distinct positive numbers, got {text!r}")
    if len(budgets) < 2:
        raise SlmError("--budgets needs at least two budgets to fit how the optimum moves with compute")
    return sorted(budgets)


def parse_sizes(text: str) -> list[float] | None:
    """'auto' -> None; '1e5,3e5,1e6' -> the parameter counts to try at every budget."""
    if text == "auto":
        return None
    try:
        sizes = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise SlmError(f"--sizes must be 'auto' or comma-separated parameter counts, got {text!r}") from None
    if len(sizes) < 3 or any(not s > 0 for s in sizes):
        raise SlmError(f"--sizes needs at least three positive parameter counts (a parabola), got {text!r}")
    return sizes


def auto_sizes(budget: float, smallest: float, points: int = AUTO_POINTS) -> list[float]:
    """Sizes AUTO_SPREAD apart centred on Chinchilla's ~20 tokens per parameter (N = sqrt(C / 120)), moved up
    to start at the smallest shape when the centre is too small for one."""
    half = (points - 1) / 2
    first = max(math.sqrt(budget / 120) * AUTO_SPREAD ** -half, smallest)
    return [first * AUTO_SPREAD**i for i in range(points)]


def build_grid(budgets: list[float], sizes: list[float] | None, *, vocab_size: int, seq_len: int,
               tokens_per_step: int, log: Callable[[str], None] = lambda _: None) -> list[GridRun]:
    """Every (budget, shape) run: distinct shapes per budget, each with at least MIN_STEPS steps."""
    grid: list[GridRun] = []
    smallest = smallest_params(vocab_size, seq_len, PARAM_COUNT)
    for budget in budgets:
        shapes: dict[tuple[int, int], GridRun] = {}
        for target in sizes or auto_sizes(budget, smallest):
            cfg = shape_for_params(target, vocab_size, seq_len, count=PARAM_COUNT)
            n = param_count(cfg, PARAM_COUNT)
            steps = round(budget / (6 * n) / tokens_per_step)
            if steps < MIN_STEPS:
                log(f"C={budget:.0e}: {n / 1e6:.3g}M parameters would train only {steps} steps; left out")
                continue
            shapes[(cfg.n_layers, cfg.d_model)] = GridRun(budget, cfg.d_model, cfg.n_layers, cfg.n_heads,
                                                          cfg.multiple_of, n, steps, steps * tokens_per_step)
        if len(shapes) < 3:
            raise SlmError(f"budget {budget:.0e} gives {len(shapes)} distinct model sizes with >= {MIN_STEPS} steps; "
                           f"a parabola needs 3 (the smallest shape has {smallest / 1e6:.3g}M parameters): raise the "
                           "budget or give --sizes")
        grid.extend(sorted(shapes.values(), key=lambda r: r.params))
    return grid


def run_recipe(base: dict[str, Any], run: GridRun, eval_batches: int) -> Any:
    """The recipe of one grid run: the base recipe with its shape, steps, warm-up and evaluation."""
    from slmkit.config import recipe_from_dict

    data = {**base, "name": f"{base.get('name', 'sweep')}-{run.name}", "stages": ["tokenizer", "data", "train"]}
    model = {**(data.get("model") or {}), **(data.get("model", {}).get("overrides") or {})}  # to_dict flattens them
    model.pop("overrides", None)
    model.update(d_model=run.d_model, n_layers=run.n_layers, n_heads=run.n_heads, multiple_of=run.multiple_of,
                 n_kv_heads=None, d_ff=None)
    data["model"] = model
    train = dict(data["train"])
    warmup = train.get("warmup_steps")
    train.update(max_steps=run.steps, max_minutes=None, eval_every=run.steps, save_every=max(1, run.steps // 4),
                 eval_batches=eval_batches, keep_last=1, log_every=max(1, run.steps // 20),
                 warmup_steps=max(1, min(warmup if warmup is not None else run.steps, run.steps // 10)))
    data["train"] = train
    return recipe_from_dict(data)


def link_prepared(base: RunDir, run: RunDir) -> None:
    """Give a run folder the base's tokenizer files (copied) and data shards (hard links, else copies)."""
    tokenizer = next(a for a in ARTIFACTS if a.name == "tokenizer")
    for name in tokenizer.paths:
        if (base / name).is_file() and not (run / name).exists():
            shutil.copyfile(base / name, run / name)
    if not run.data.exists():
        tmp = run.root / ".data.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base.data, tmp, copy_function=_link_or_copy)
        os.replace(tmp, run.data)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def final_loss(run: RunDir) -> float | None:
    """The last validation loss of a finished run (from its latest checkpoint), else None."""
    from slmkit.train.checkpoint import read_trainer_state

    ckpt = run.latest_checkpoint()
    if ckpt is None:
        return None
    state = read_trainer_state(ckpt)
    if state.get("stopped") not in (None, "complete") or state.get("step") != state.get("max_steps"):
        return None
    loss = (state.get("last") or {}).get("val_loss")
    return float(loss) if loss is not None and math.isfinite(loss) else None


def run_sweep(recipe, out: Path, budgets: list[float], sizes: list[float] | None, *, eval_batches: int = 64,
              n_boot: int = 200, force: bool = False, log: Callable[[str], None] = print,
              progress: bool = False) -> dict[str, Any]:
    """Prepare once, train every grid run (reusing finished ones), fit, write fit.json, plot and report."""
    from slmkit.config import to_dict
    from slmkit.objectives import get_objective
    from slmkit.objectives.pretrain import PretrainObjective
    from slmkit.pipeline.rundir import open_run_dir
    from slmkit.pipeline.stages import run_stages

    if type(get_objective(recipe.task, recipe)) is not PretrainObjective:
        raise SlmError(f"slm sweep isoflop trains decoders on recipe task 'pretrain', not {recipe.task!r}")
    sweep = SweepDir(out)
    sweep.root.mkdir(parents=True, exist_ok=True)
    base = open_run_dir(sweep.base, recipe, force=force)
    log("preparing the tokenizer and data once (reused by every run)")
    run_stages(recipe, base, ["tokenizer", "data"], log=lambda text: log(f"  {text}"), progress=progress, record=False)
    from slmkit.tokenizer import load_tokenizer

    vocab = load_tokenizer(base.tokenizer).get_vocab_size()
    tokens_per_step = recipe.train.batch_size * recipe.train.grad_accum * recipe.data.seq_len
    grid = build_grid(budgets, sizes, vocab_size=vocab, seq_len=recipe.data.seq_len,
                      tokens_per_step=tokens_per_step, log=log)
    total = sum(r.tokens for r in grid)
    log(f"grid: {len(grid)} runs over {len(budgets)} budgets, {total / 1e6:.1f}M training tokens in all")
    base_dict = to_dict(recipe)
    points, started = [], time.perf_counter()
    for i, grid_run in enumerate(grid, start=1):
        rrecipe = run_recipe(base_dict, grid_run, eval_batches)
        run_dir = open_run_dir(sweep.run(grid_run.name), rrecipe, force=force)  # refuses another recipe
        loss = final_loss(run_dir)
        if loss is None:
            log(f"[{i}/{len(grid)}] {grid_run.describe()}: training")
            t0 = time.perf_counter()
            link_prepared(base, run_dir)
            result = run_stages(rrecipe, run_dir, ["train"], log=lambda _: None, progress=progress)
            if result.get("stopped"):
                raise SlmError(f"stopped by {result['stopped']} in {run_dir.root}; run the same command again to "
                               "continue (finished runs are kept)")
            loss = final_loss(run_dir)
            if loss is None:
                raise SlmError(f"{run_dir.root} finished without a validation loss (is data.val_fraction 0?)")
            log(f"[{i}/{len(grid)}] val loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)")
        else:
            log(f"[{i}/{len(grid)}] {grid_run.describe()}: done before, val loss {loss:.4f}")
        points.append({"budget": grid_run.budget, "params": grid_run.params, "tokens": grid_run.tokens,
                       "flops": 6 * grid_run.params * grid_run.tokens, "loss": loss, "run": grid_run.name,
                       "n_layers": grid_run.n_layers, "d_model": grid_run.d_model})
    log(f"trained in {time.perf_counter() - started:.0f} s; fitting")
    return write_fit(sweep, points, recipe, n_boot=n_boot, log=log)


def fit_points(points: list[dict[str, Any]], n_boot: int = 200) -> dict[str, Any]:
    """fit.py's fits, keeping going where a budget's sizes do not bracket a minimum.

    A budget whose parabola has no vertex, or one outside the sizes tried (an extrapolation), is
    reported and left out of the power laws, which need two budgets with a minimum inside their
    sizes; without them `isoflop` is None and `isoflop_error` says why and what to try. The
    parametric fit uses every point."""
    from slmkit.scaling.fit import fit_isoflop, fit_isoflop_parabolas, fit_parametric_or_error

    groups = fit_isoflop_parabolas(points, strict=False)
    usable = {g["budget"] for g in groups if g["params_opt"] is not None and g["inside_range"]}
    fit: dict[str, Any] = {"isoflop": None, "isoflop_error": None, "n_points": len(points), "budgets": groups,
                           **fit_parametric_or_error(points, n_boot=min(n_boot, 100), seed=0)}
    if len(usable) >= 2:
        fit["isoflop"] = fit_isoflop([p for p in points if p["budget"] in usable], n_boot=n_boot, seed=0)
    else:
        fit["isoflop_error"] = ("the power laws need two budgets whose loss has its minimum inside the sizes tried; "
                                + "; ".join(_why_no_minimum(points, g) for g in groups if g["budget"] not in usable))
    return fit


def _why_no_minimum(points: list[dict[str, Any]], group: dict[str, Any]) -> str:
    """Which side of the sizes tried the best one sits on, and what to change."""
    mine = sorted((p for p in points if p["budget"] == group["budget"]), key=lambda p: p["params"])
    best = min(range(len(mine)), key=lambda i: mine[i]["loss"])
    where = f"budget {group['budget']:.0e}"
    if best == 0:
        return (f"{where}: the smallest size ({mine[0]['params'] / 1e6:.3g}M) is the best, the optimum is below the "
                "sizes tried (smaller --sizes; with a large vocabulary the output head alone sets the smallest "
                "model: try a smaller tokenizer.vocab_size, or larger budgets)")
    if best == len(mine) - 1:
        return f"{where}: the largest size ({mine[-1]['params'] / 1e6:.3g}M) is the best (try larger --sizes)"
    return f"{where}: the losses are too noisy for a parabola (more sizes, or more --eval-batches)"


def write_fit(sweep: SweepDir, points: list[dict[str, Any]], recipe, *, n_boot: int = 200,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """fit.json, isoflop.png and isoflop.html in the sweep folder from the sweep's points."""
    from slmkit.fileio import atomic_write_json
    from slmkit.scaling.sweep_report import write_plot, write_report

    fit = fit_points(points, n_boot=n_boot)
    fit.update(source=f"slm sweep isoflop {recipe.name} ({sweep.root})", param_count=PARAM_COUNT,
               seq_len=recipe.data.seq_len, points=points)
    atomic_write_json(sweep.fit, fit)
    write_plot(fit, sweep.plot)
    write_report(fit, sweep.page, plot=sweep.plot)
    log(f"wrote {sweep.fit}, {sweep.plot}, {sweep.page}")
    return fit
