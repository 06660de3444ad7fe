"""Non-finite steps: an injected inf loss skips the update (logged and counted) and the run finishes;
too many in a row stop the run with a message naming the last good checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from train_utils import new_run_dir, shared_base, slm_train, subprocess_env, summary, weights, write_recipe

from slmkit.pipeline.rundir import RunDir
from slmkit.train.faults import BadStepTracker
from slmkit.train.metrics import read_metrics


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_base(tmp_path_factory)


def test_nan_inf_loss_is_skipped_and_run_finishes(base, tmp_path):
    recipe = write_recipe(tmp_path, max_steps=8, save_every=4, eval_every=0)
    run = new_run_dir(base, tmp_path / "run")
    result = slm_train(recipe, run, env=subprocess_env(SLMKIT_FAULT_NONFINITE_AT_STEPS="3,4"))
    s = summary(result)
    assert s["steps"] == 8 and s["stopped"] == "complete" and s["skipped_steps"] == 2
    assert "step 3: non-finite loss" in result.stderr and "update skipped" in result.stderr
    entries = {e["step"]: e for e in read_metrics(run) if "loss" in e}
    assert entries[3]["loss"] == "inf" and entries[4]["skipped"] == 2
    assert all(math.isfinite(entries[s]["loss"]) for s in (1, 2, 5, 6, 7, 8))
    final = weights(RunDir(run).latest_checkpoint())
    assert all(torch.isfinite(t).all() for t in final.values())


def test_nan_skipped_step_leaves_weights_unchanged(base, tmp_path):
    """A skipped update changes nothing: step-4 weights equal step-2 weights when steps 3, 4 are inf."""
    recipe = write_recipe(tmp_path, max_steps=4, save_every=2, eval_every=0, keep_last=0)
    run = new_run_dir(base, tmp_path / "run")
    summary(slm_train(recipe, run, env=subprocess_env(SLMKIT_FAULT_NONFINITE_AT_STEPS="3,4")))
    a, b = weights(run / "ckpt" / "step-000002"), weights(run / "ckpt" / "step-000004")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_too_many_in_a_row_stops_with_last_good_checkpoint(base, tmp_path):
    recipe = write_recipe(tmp_path, max_steps=12, save_every=2, eval_every=0, max_bad_steps=3)
    run = new_run_dir(base, tmp_path / "run")
    result = slm_train(recipe, run, env=subprocess_env(SLMKIT_FAULT_NONFINITE_AT_STEPS="5,6,7,8"))
    assert result.returncode == 2
    assert "3 non-finite steps in a row" in result.stderr
    assert "last good checkpoint" in result.stderr and "step-000004" in result.stderr
    assert "Traceback" not in result.stderr


def test_nan_tracker_counts_runs():
    t = BadStepTracker(max_in_a_row=2)
    for finite in (True, False, True, False):
        t.record(finite)
    assert (t.total, t.in_a_row, t.exceeded) == (2, 1, False)
    t.record(False)
    assert t.exceeded
    t2 = BadStepTracker(2)
    t2.load_state_dict(t.state_dict())
    assert (t2.total, t2.in_a_row) == (3, 2)
