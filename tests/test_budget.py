"""Time-budgeted training (train.max_steps: auto + train.max_minutes): the probe fixes the total, the
schedule completes inside the budget, a resumed run is bit-exact, and a time-limit stop still evaluates."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch
from train_utils import new_run_dir, shared_base, slm_train, subprocess_env, summary, train_losses, weights, write_recipe

from slmkit.errors import SlmError
from slmkit.pipeline.rundir import RunDir
from slmkit.train.budget import check_max_steps, plan_steps, probe_steps, recorded_max_steps
from slmkit.train.checkpoint import read_trainer_state
from slmkit.train.metrics import read_metrics
from slmkit.train.schedule import lr_multiplier


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_base(tmp_path_factory)


# ---------------------------------------------------------------------------- arithmetic


def test_plan_fits_the_rest_of_the_budget():
    plan = plan_steps(max_minutes=1.0, elapsed_s=2.0, step_seconds=0.1, tokens_per_step=1000, probe=10,
                      eval_seconds=0.5, eval_every=50)
    # 0.97 * (60 - 2 - 0.5 final eval) / (0.1 + 0.5 / 50) = 507.07 more steps
    assert plan.max_steps == 10 + 507
    assert plan.tokens_per_second == pytest.approx(10_000)
    assert "517 steps" in plan.describe() and "1 min" in plan.describe()
    spent = plan.elapsed_seconds + (plan.max_steps - plan.probe_steps) * plan.seconds_per_step + plan.eval_seconds
    assert 0.95 * 60 < spent <= 60


def test_plan_with_no_time_left_still_takes_a_step():
    plan = plan_steps(max_minutes=0.01, elapsed_s=5.0, step_seconds=1.0, tokens_per_step=1, probe=3,
                      eval_seconds=0.0, eval_every=0)
    assert plan.max_steps == 4


def test_probe_stays_inside_the_warmup():
    assert probe_steps(40) == 20 and probe_steps(5) == 5 and probe_steps(1) == 3 and probe_steps(0) == 10


def test_schedule_before_the_total_is_known_is_warmup_then_peak():
    assert [lr_multiplier(s, None, "cosine", warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # ... which is what the schedule with any total gives inside the warm-up
    assert all(lr_multiplier(s, None, "wsd", 4) == lr_multiplier(s, 100, "wsd", 4) for s in range(4))


@pytest.mark.parametrize("max_steps, minutes, message", [
    ("autoo", 5, "must be an integer >= 1 or 'auto'"),
    ("auto", None, "set train.max_minutes too"),
    (0, None, "must be >= 1"),
])
def test_bad_max_steps_is_refused(max_steps, minutes, message):
    with pytest.raises(SlmError, match=message):
        check_max_steps(max_steps, minutes)


def test_recipe_accepts_auto_and_refuses_it_without_a_budget(tmp_path):
    from slmkit.config import load_recipe

    recipe = write_recipe(tmp_path)
    assert load_recipe(recipe, ["train.max_steps=auto", "train.max_minutes=2"]).train.max_steps == "auto"
    with pytest.raises(SlmError, match="train.max_minutes"):
        load_recipe(recipe, ["train.max_steps=auto"])


def test_recorded_total_comes_from_the_checkpoint_else_the_plan_file(tmp_path):
    run = RunDir(tmp_path)
    assert recorded_max_steps(None, run, 2.0) is None
    (tmp_path / "train_budget.json").write_text(json.dumps({"max_steps": 77, "max_minutes": 2.0}))
    assert recorded_max_steps(None, run, 2.0) == 77
    assert recorded_max_steps(None, run, 3.0) is None  # planned for another budget: measure again
    assert recorded_max_steps({"max_steps": 90}, run, 3.0) == 90
    assert recorded_max_steps({"max_steps": None}, run, 2.0) is None  # stopped during its probe


# ---------------------------------------------------------------------------- real runs


def test_budget_shaped_run_completes_its_schedule(base, tmp_path):
    """The probe's total is trained to the end: the lr reaches its floor and the last step is evaluated."""
    recipe = write_recipe(tmp_path, max_steps="auto", max_minutes=0.1, warmup_steps=5, log_every=50,
                          eval_every=100, save_every=200)
    run = new_run_dir(base, tmp_path / "auto")
    result = slm_train(recipe, run)
    s = summary(result)
    plan = json.loads((run / "train_budget.json").read_text())
    assert s["max_steps"] == plan["max_steps"] > plan["probe_steps"]
    assert "time budget 0.1 min: measured" in result.stderr and f"training {plan['max_steps']} steps" in result.stderr
    state = read_trainer_state(RunDir(run).latest_checkpoint())
    assert state["max_steps"] == plan["max_steps"] and state["max_steps_auto"] is True
    last = [e for e in read_metrics(run) if e["step"] == s["steps"]]
    assert any("val_loss" in e for e in last)  # evaluated at its last step, whichever way it ended
    if s["stopped"] == "time limit":
        # the machine slowed down after the probe (another process took the cores): the limit still holds
        # and the schedule was nearly done; the pinned-clock test below checks the arithmetic exactly
        assert s["steps"] >= 0.8 * plan["max_steps"]
        return
    assert s["stopped"] == "complete" and s["steps"] == plan["max_steps"]
    lr = next(e["lr"] for e in last if "lr" in e)
    assert lr == pytest.approx(0.003 * lr_multiplier(s["steps"] - 1, s["steps"], "cosine", 5, 0.1))
    # the stage runner sees the run as finished
    again = summary(slm_train(recipe, run))
    assert again["steps"] == s["steps"] and again["stopped"] == "complete"


def test_auto_run_resumed_after_a_kill_is_bit_exact(base, tmp_path):
    # A pinned probe clock (0.05 s/step) makes both runs fix the same total (~55 steps) whatever the load.
    recipe = write_recipe(tmp_path, max_steps="auto", max_minutes=0.05, warmup_steps=4, save_every=10,
                          eval_every=20, log_every=1)
    pinned = {"SLMKIT_FAULT_STEP_SECONDS": "0.05"}
    straight = new_run_dir(base, tmp_path / "straight")
    s = summary(slm_train(recipe, straight, env=subprocess_env(**pinned)))
    assert s["stopped"] == "complete" and 40 < s["steps"] < 60

    killed = new_run_dir(base, tmp_path / "killed")
    crash = slm_train(recipe, killed, env=subprocess_env(SLMKIT_FAULT_KILL_AT_STEP="25", **pinned))
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert RunDir(killed).latest_checkpoint().name == "step-000020"
    # resumed without the pinned clock: the total comes from the checkpoint, not a new measurement
    resumed = summary(slm_train(recipe, killed))
    assert resumed["steps"] == s["steps"] and resumed["stopped"] == "complete"
    a, b = weights(RunDir(straight).latest_checkpoint()), weights(RunDir(killed).latest_checkpoint())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train_losses(straight) == train_losses(killed)


def test_time_limit_stop_ends_with_an_evaluation(base, tmp_path):
    """A fixed max_steps the budget cannot reach: the run stops between eval_every points and still
    evaluates its last step, so the loss plot shows where it ended."""
    recipe = write_recipe(tmp_path, max_steps=1_000_000, max_minutes=0.03, eval_every=100_000, save_every=0,
                          log_every=1000)
    run = new_run_dir(base, tmp_path / "limited")
    s = summary(slm_train(recipe, run))
    assert s["stopped"] == "time limit" and 1 < s["steps"] < 1_000_000
    val = [e for e in read_metrics(run) if "val_loss" in e]
    assert [e["step"] for e in val] == [s["steps"]] and math.isfinite(val[0]["val_loss"])
    assert s["val_loss"] == pytest.approx(val[0]["val_loss"])
