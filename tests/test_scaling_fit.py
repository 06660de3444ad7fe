"""Scaling-law fitters (slmkit.scaling.fit) on points drawn from known laws L(N, D) = E + A/N^alpha + B/D^beta."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scaling_utils import BUDGETS, CHINCHILLA, EPOCH, LAWS, isoflop_points, true_exponent, true_n_opt

from slmkit.errors import SlmError
from slmkit.scaling import fit


def inside(ci: list[float], value: float) -> bool:
    return ci[0] <= value <= ci[1]


# ---------------------------------------------------------------------------------------------------------
# Exact data


def test_power_law_exact():
    x = np.logspace(18, 22, 5)
    got = fit.fit_power_law(x, 3.5e-4 * x**0.47)
    assert got["a"] == pytest.approx(0.47, rel=1e-9)
    assert got["k"] == pytest.approx(3.5e-4, rel=1e-7)
    assert type(got["a"]) is float and type(got["k"]) is float


def test_power_law_bad_input():
    with pytest.raises(SlmError, match="at least 2 distinct x"):
        fit.fit_power_law([1e18, 1e18], [1.0, 2.0])
    with pytest.raises(SlmError, match="> 0"):
        fit.fit_power_law([1e18, 1e19], [1.0, -2.0])


@pytest.mark.parametrize("name", LAWS)
def test_parabolas_exact(name):
    law = LAWS[name]
    budgets = fit.fit_isoflop_parabolas(isoflop_points(law))
    assert [b["budget"] for b in budgets] == list(BUDGETS)
    for b in budgets:
        assert b["n_runs"] == 7 and b["convex"] and b["inside_range"]
        # The loss is not a parabola in log N, so the vertex is biased. Sizes +-0.6 decades around the
        # optimum put it within 1.6% of the true N_opt (measured: +1.5% for Chinchilla's law, -0.4% for Epoch's).
        assert b["params_opt"] == pytest.approx(true_n_opt(law, b["budget"]), rel=0.016)
        assert b["tokens_opt"] == pytest.approx(b["budget"] / (6 * b["params_opt"]), rel=1e-12)
        n_opt = b["params_opt"]
        true_loss = law["E"] + law["A"] / n_opt ** law["alpha"] + law["B"] / b["tokens_opt"] ** law["beta"]
        assert b["loss_opt"] == pytest.approx(true_loss, rel=1e-3)


@pytest.mark.parametrize("name", LAWS)
def test_isoflop_exponent_exact(name):
    # Around its optimum the law has the same shape in log N at every budget (up to a scale), so a grid centred
    # on the optimum biases every vertex by the same factor: the exponent a is unbiased, k carries the bias.
    law = LAWS[name]
    got = fit.fit_isoflop(isoflop_points(law), n_boot=20)
    assert got["params"]["a"] == pytest.approx(true_exponent(law), rel=0.01)
    assert got["tokens"]["b"] == pytest.approx(1 - true_exponent(law), rel=0.01)
    assert len(got["tokens_per_param"]["at"]) == 4
    assert got["n_boot"] == 20 and got["level"] == 0.9


@pytest.mark.parametrize("name", LAWS)
def test_parametric_exact(name):
    law = LAWS[name]
    got = fit.fit_parametric(isoflop_points(law))
    for key in fit.LAW_NAMES:
        assert got[key] == pytest.approx(law[key], rel=0.01), key
    assert got["a"] == pytest.approx(true_exponent(law), rel=0.01)
    assert got["n_points"] == 28
    assert got["huber_loss"] < 1e-12


def test_parametric_custom_grid():
    one_start = {"alpha": [0.5], "beta": [0.5], "e": [0.0], "a": [5.0], "b": [5.0]}
    got = fit.fit_parametric(isoflop_points(EPOCH), init_grid=one_start)
    assert got["n_starts"] == 1
    for key in fit.LAW_NAMES:
        assert got[key] == pytest.approx(EPOCH[key], rel=0.01), key


@pytest.mark.slow
def test_parametric_default_starts_match_full_grid():
    # The default runs L-BFGS-B from the 16 best of Chinchilla's 4500 starts; all 4500 find the same optimum.
    points = isoflop_points(CHINCHILLA, noise=0.01, seed=7)
    default, full = fit.fit_parametric(points), fit.fit_parametric(points, max_starts=None)
    assert full["n_starts"] == 4500
    assert default["huber_loss"] == pytest.approx(full["huber_loss"], rel=1e-6)
    for key in fit.LAW_NAMES:
        assert default[key] == pytest.approx(full[key], rel=1e-3), key


@pytest.mark.parametrize("name", LAWS)
def test_parametric_helpers(name):
    law = LAWS[name]
    assert fit.parametric_loss(law, 1e9, 2e10) == pytest.approx(
        law["E"] + law["A"] / 1e9 ** law["alpha"] + law["B"] / 2e10 ** law["beta"], rel=1e-12)
    assert fit.parametric_loss(law, np.array([1e8, 1e9]), np.array([1e9, 1e10])).shape == (2,)
    for budget in (1e18, 1e21):
        n_opt, d_opt = fit.parametric_optimum(law, budget)
        assert 6 * n_opt * d_opt == pytest.approx(budget, rel=1e-9)
        assert n_opt == pytest.approx(true_n_opt(law, budget), rel=1e-3)


def test_fit_all_json_ready():
    points = isoflop_points(CHINCHILLA, noise=0.005, seed=1)
    got = fit.fit_all(points, n_boot=20, seed=0)
    assert set(got) == {"isoflop", "parametric", "parametric_error", "n_points"}
    assert got["n_points"] == 28 and got["parametric_error"] is None
    assert got["parametric"]["n_boot"] > 0
    assert json.loads(json.dumps(got, allow_nan=False)) == got  # plain types only, nothing lost


def test_fit_all_without_parametric(monkeypatch):
    def refuse(*args, **kwargs):
        raise SlmError("parametric fit: alpha ran to its bound")

    monkeypatch.setattr(fit, "fit_parametric_bootstrap", refuse)
    got = fit.fit_all(isoflop_points(CHINCHILLA), n_boot=5)
    assert got["parametric"] is None and "alpha ran to its bound" in got["parametric_error"]
    assert got["isoflop"]["params"]["a"] == pytest.approx(true_exponent(CHINCHILLA), rel=0.01)
    json.dumps(got)


# ---------------------------------------------------------------------------------------------------------
# Noisy data: the true coefficients lie inside the bootstrap intervals, which are not absurdly wide.
# Measured over 20 noise seeds per law (0.5% noise, level 0.9, n_boot 200 IsoFLOP and 100 parametric): the
# intervals held the truth for a (IsoFLOP) 20/20, alpha 18/20, beta 19/20, a (parametric) 20/20; the widest
# were 0.23 for the IsoFLOP a (7 sizes per budget give a loose parabola), 0.12 for alpha, 0.09 for beta and
# 0.08 for the parametric a. The width bounds below leave some room over those; seed 3 was not picked to pass.


@pytest.mark.parametrize("name", LAWS)
def test_isoflop_bootstrap_noisy(name):
    law = LAWS[name]
    got = fit.fit_isoflop(isoflop_points(law, noise=0.005, seed=3), n_boot=200, seed=0, level=0.9)
    a_ci, b_ci = got["params"]["a_ci"], got["tokens"]["b_ci"]
    assert inside(a_ci, true_exponent(law)) and inside(b_ci, 1 - true_exponent(law))
    assert a_ci[1] - a_ci[0] < 0.25
    assert got["params"]["k_ci"][0] <= got["params"]["k"] <= got["params"]["k_ci"][1]
    assert got["n_boot"] >= 150


@pytest.mark.parametrize("name", LAWS)
def test_parametric_bootstrap_noisy(name):
    law = LAWS[name]
    got = fit.fit_parametric_bootstrap(isoflop_points(law, noise=0.005, seed=3), n_boot=60, seed=0, level=0.9)
    ci = got["ci"]
    for key in ("alpha", "beta"):
        assert inside(ci[key], law[key]), (key, ci[key])
        assert ci[key][1] - ci[key][0] < 0.2, (key, ci[key])
    assert inside(ci["a"], true_exponent(law)) and ci["a"][1] - ci["a"][0] < 0.12
    assert set(ci) == {"E", "A", "B", "alpha", "beta", "a", "b"}
    assert got["n_boot"] >= 50
    json.dumps(got, allow_nan=False)


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_too_few_sizes():
    points = [p for p in isoflop_points(CHINCHILLA) if p["budget"] != 1e19] + [
        p for p in isoflop_points(CHINCHILLA) if p["budget"] == 1e19][:2]
    with pytest.raises(SlmError, match=r"budget 1e\+19 has 2 runs; a parabola needs at least 3 sizes"):
        fit.fit_isoflop(points)
    repeated = [{**p, "loss": p["loss"] + 0.01 * k} for p in points[-2:] for k in range(2)]
    with pytest.raises(SlmError, match=r"budget 1e\+19 has 4 runs but 2 sizes"):
        fit.fit_isoflop_parabolas(points[:-2] + repeated)


def test_non_convex_group():
    points = isoflop_points(CHINCHILLA)
    for p in points:
        if p["budget"] == 1e20:
            p["loss"] = 4.0 - 0.1 * (np.log10(p["params"]) - 9.0) ** 2
    with pytest.raises(SlmError, match=r"budget 1e\+20: the loss is not convex.*do not bracket a minimum"):
        fit.fit_isoflop(points)
    lenient = fit.fit_isoflop_parabolas(points, strict=False)
    assert [b["convex"] for b in lenient] == [True, True, False, True]
    assert lenient[2]["params_opt"] is None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_loss(bad):
    points = isoflop_points(CHINCHILLA)
    points[5]["loss"] = bad
    with pytest.raises(SlmError, match="point 5: loss must be a finite number > 0"):
        fit.fit_isoflop(points)
    with pytest.raises(SlmError, match="point 5: loss"):
        fit.fit_parametric(points)


def test_other_bad_input():
    points = isoflop_points(CHINCHILLA)
    with pytest.raises(SlmError, match="no points"):
        fit.fit_isoflop([])
    with pytest.raises(SlmError, match="point 0 has no 'tokens'"):
        fit.fit_isoflop([{"budget": 1e18, "params": 1e8, "loss": 3.0}])
    with pytest.raises(SlmError, match="at least 2 budgets"):
        fit.fit_isoflop([p for p in points if p["budget"] == 1e18])
    with pytest.raises(SlmError, match="at least 5 points"):
        fit.fit_parametric(points[:4])
    with pytest.raises(SlmError, match="level"):
        fit.fit_isoflop(points, level=1.5)
    with pytest.raises(SlmError, match="n_boot"):
        fit.fit_isoflop(points, n_boot=-1)
    with pytest.raises(SlmError, match="init_grid key 'gamma'"):
        fit.fit_parametric(points, init_grid={"gamma": [1.0]})
