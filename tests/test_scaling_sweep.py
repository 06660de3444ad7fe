"""slm sweep isoflop: the grid, the per-run recipes, the fit outputs, and a real (tiny) sweep end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from scaling_utils import CHINCHILLA, isoflop_points
from train_utils import TINY_RECIPE, subprocess_env

from slmkit.cli import main
from slmkit.config import recipe_from_dict, to_dict
from slmkit.errors import SlmError
from slmkit.scaling.laws import get_law
from slmkit.scaling.shapes import param_count
from slmkit.scaling.sweep import (
    MIN_STEPS,
    PARAM_COUNT,
    SweepDir,
    auto_sizes,
    build_grid,
    fit_points,
    parse_budgets,
    parse_sizes,
    run_recipe,
    write_fit,
)


def test_budgets_and_sizes_are_parsed_and_checked():
    assert parse_budgets("3e13, 1e13") == [1e13, 3e13]
    assert parse_sizes("auto") is None and parse_sizes("3e5,1e5,2e5") == [1e5, 2e5, 3e5]
    for text, message in (("1e13", "at least two"), ("1e13,x", "comma-separated"), ("1e13,-1", "positive"),
                          ("1e13,1e13", "distinct")):
        with pytest.raises(SlmError, match=message):
            parse_budgets(text)
    with pytest.raises(SlmError, match="at least three"):
        parse_sizes("1e5,2e5")


def test_auto_sizes_centre_on_20_tokens_per_parameter_or_start_at_the_smallest_shape():
    sizes = auto_sizes(1.2e15, smallest=1.0)
    assert sizes[2] == pytest.approx(math.sqrt(1.2e15 / 120)) and sizes[3] / sizes[2] == pytest.approx(2.0)
    assert auto_sizes(1e10, smallest=5e5)[0] == 5e5


def test_grid_has_distinct_shapes_with_enough_steps_and_c_equals_6nd():
    grid = build_grid([3e12, 1e13], None, vocab_size=8192, seq_len=256, tokens_per_step=4096)
    for run in grid:
        assert run.steps >= MIN_STEPS and run.tokens == run.steps * 4096
        assert 6 * run.params * run.tokens == pytest.approx(run.budget, rel=0.05)  # steps are rounded
    for budget in (3e12, 1e13):
        shapes = [(r.n_layers, r.d_model) for r in grid if r.budget == budget]
        assert len(shapes) == len(set(shapes)) >= 3
    with pytest.raises(SlmError, match="a parabola needs 3"):
        build_grid([1e11, 1e12], None, vocab_size=8192, seq_len=256, tokens_per_step=4096)


def test_run_recipe_sets_shape_steps_warmup_and_one_final_evaluation():
    base = to_dict(recipe_from_dict(json.loads(json.dumps(TINY_RECIPE))))
    run = build_grid([3e10, 1e11], [9e4, 2e5, 4e5], vocab_size=512, seq_len=64, tokens_per_step=256)[0]
    recipe = run_recipe(base, run, eval_batches=7)
    from slmkit.models.presets import resolve_model_config

    cfg = resolve_model_config(recipe.model, vocab_size=512)
    assert (cfg.d_model, cfg.n_layers) == (run.d_model, run.n_layers)
    assert param_count(cfg, PARAM_COUNT) == run.params
    tc = recipe.train
    assert tc.max_steps == run.steps and tc.eval_every == run.steps and tc.eval_batches == 7
    assert tc.max_minutes is None and 1 <= tc.warmup_steps <= max(1, run.steps // 10)


def test_fit_recovers_the_law_and_a_budget_without_minimum_is_reported():
    fit = fit_points(isoflop_points(CHINCHILLA), n_boot=50)
    assert fit["isoflop"]["params"]["a"] == pytest.approx(0.28 / 0.62, rel=0.01)
    assert fit["parametric"]["alpha"] == pytest.approx(0.34, rel=0.01)
    # a budget whose sizes all sit on one side of its minimum: a falling line, no vertex
    points = isoflop_points(CHINCHILLA, budgets=(1e18, 1e19, 1e20))
    points += [{"budget": 1e21, "params": n, "tokens": 1e21 / (6 * n), "loss": 3.0 - 0.1 * math.log10(n)}
               for n in (1e8, 2e8, 4e8)]
    fit = fit_points(points, n_boot=20)
    assert [g["params_opt"] is None for g in fit["budgets"]] == [False, False, False, True]
    assert len(fit["isoflop"]["budgets"]) == 3 and fit["isoflop_error"] is None
    fit = fit_points([p for p in points if p["budget"] >= 1e20], n_boot=20)
    assert fit["isoflop"] is None and "budget 1e+21: the largest size (400M) is the best" in fit["isoflop_error"]


def test_fit_outputs_are_a_law_for_slm_plan(tmp_path, capsys):
    recipe = recipe_from_dict(json.loads(json.dumps(TINY_RECIPE)))
    fit = write_fit(SweepDir(tmp_path), isoflop_points(CHINCHILLA), recipe, n_boot=30, log=lambda _: None)
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["param_count"] == PARAM_COUNT and len(saved["points"]) == 28
    assert (tmp_path / "isoflop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "isoflop.html").read_text()
    assert "Chinchilla approach 1" in page and "Kaplan" in page and "data:image/png;base64," in page
    law = get_law(str(tmp_path / "fit.json"))
    assert law.count == PARAM_COUNT and law.a == pytest.approx(fit["isoflop"]["params"]["a"])
    assert main(["plan", "--flops", "1e20", "--law", str(tmp_path / "fit.json"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    n, d = law.optimum(1e20)
    assert plan["params"] == pytest.approx(n) and plan["loss"] == pytest.approx(law.loss(n, d))


@pytest.mark.slow
def test_tiny_sweep_end_to_end_and_resumable(tmp_path):
    recipe = dict(json.loads(json.dumps(TINY_RECIPE)))
    recipe["data"]["sources"][0]["max_docs"] = 80
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "slmkit.cli", "sweep", "isoflop", str(path), "--budgets", "3e10,1e11",
           "--sizes", "9e4,2e5,4e5", "--out", str(out), "--bootstrap", "20"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert first.returncode in (0, 1), first.stderr[-3000:]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 6 and all((out / "runs" / r / "ckpt" / "latest").exists() for r in runs)
    fit = json.loads((out / "fit.json").read_text())
    assert len(fit["points"]) == 6 and all(p["loss"] > 0 for p in fit["points"])
    assert (out / "isoflop.png").is_file() and (out / "isoflop.html").is_file()
    if first.returncode == 1:  # tiny runs may all prefer the smallest model: then it must say so
        assert "no scaling law" in first.stderr and fit["isoflop"] is None
    else:
        assert fit["isoflop"]["params"]["a"] is not None
    again = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert again.returncode == first.returncode
    assert again.stderr.count("done before") == 6 and ": training" not in again.stderr
