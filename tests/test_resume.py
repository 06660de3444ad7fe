"""Exact resume: a run killed (SIGKILL) in step 12 and resumed from its step-10 checkpoint ends with
the same weights, optimizer state and losses as a run that went 20 steps straight (CPU, fp32)."""

from __future__ import annotations

import signal

import pytest
import torch
from train_utils import (
    new_run_dir,
    shared_base,
    slm_train,
    subprocess_env,
    summary,
    train_losses,
    weights,
    write_recipe,
)

from slmkit.pipeline.rundir import RunDir
from slmkit.train.checkpoint import read_trainer_state


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_base(tmp_path_factory)


def test_resume_after_sigkill_is_exact(base, tmp_path):
    recipe = write_recipe(tmp_path)
    straight = new_run_dir(base, tmp_path / "straight")
    s = summary(slm_train(recipe, straight))
    assert s["steps"] == 20 and s["stopped"] == "complete"

    killed = new_run_dir(base, tmp_path / "killed")
    crash = slm_train(recipe, killed, env=subprocess_env(SLMKIT_FAULT_KILL_AT_STEP="12"))
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert RunDir(killed).latest_checkpoint().name == "step-000010"
    assert max(train_losses(killed)) == 11  # step 12 died before logging

    resumed = summary(slm_train(recipe, killed))  # default: resume from ckpt/latest
    assert resumed["steps"] == 20

    a, b = weights(RunDir(straight).latest_checkpoint()), weights(RunDir(killed).latest_checkpoint())
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    opt_a = torch.load(RunDir(straight).latest_checkpoint() / "optimizer.pt", weights_only=True)
    opt_b = torch.load(RunDir(killed).latest_checkpoint() / "optimizer.pt", weights_only=True)
    for idx, state in opt_a["state"].items():
        assert torch.equal(state["exp_avg_sq"], opt_b["state"][idx]["exp_avg_sq"])
    # metrics.jsonl describes one history: steps 11.. from the dead run were replaced
    assert train_losses(straight) == train_losses(killed)
    ranks_a = read_trainer_state(RunDir(straight).latest_checkpoint())["ranks"]
    ranks_b = read_trainer_state(RunDir(killed).latest_checkpoint())["ranks"]
    assert ranks_a == ranks_b  # same data position and RNG states


def test_resume_extends_a_finished_run_and_keeps_last(base, tmp_path):
    recipe = write_recipe(tmp_path, max_steps=10)
    run = new_run_dir(base, tmp_path / "run")
    first = summary(slm_train(recipe, run))
    assert first["steps"] == 10
    again = summary(slm_train(recipe, run))  # complete: returns at once, trains nothing
    assert again["steps"] == 10 and again["checkpoint"] == first["checkpoint"]
    longer = summary(slm_train(recipe, run, "train.max_steps=15"))
    assert longer["steps"] == 15
    assert [p.name for p in RunDir(run).checkpoints()] == ["step-000010", "step-000015"]  # keep_last=2
    assert (run / "ckpt" / "latest").resolve().name == "step-000015"
    assert sorted(train_losses(run)) == list(range(1, 16))
