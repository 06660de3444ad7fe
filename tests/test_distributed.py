"""Distributed training on CPU (torchrun, 2 processes, gloo): DDP and FSDP2 follow the loss curve of
one process with the same global batch within 1e-5 (fp32), with gradient accumulation; FSDP
checkpoints (DCP shards + consolidated HF folder) resume exactly."""

from __future__ import annotations

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
from slmkit.train.checkpoint import load_model_from_checkpoint

STEPS = 6
COMMON = (f"train.max_steps={STEPS}", "train.grad_accum=2", "train.save_every=3", "train.eval_every=3")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_base(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """One process, micro-batch 4 = the global batch of 2 processes x 2."""
    folder = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(folder)
    run = new_run_dir(base, folder / "run")
    s = summary(slm_train(recipe, run, *COMMON, "train.batch_size=4"))
    return recipe, run, s


def _assert_same_curve(ref_run, run, tol=1e-5):
    ref, got = train_losses(ref_run), train_losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, loss in ref.items():
        assert abs(got[step] - loss) <= tol, (step, loss, got[step])


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_distributed_matches_one_process(reference, base, tmp_path, parallel):
    recipe, ref_run, ref_summary = reference
    run = new_run_dir(base, tmp_path / "run")
    s = summary(slm_train(recipe, run, *COMMON, "train.batch_size=2", f"train.parallel={parallel}", nproc=2))
    assert s["steps"] == STEPS and s["tokens"] == ref_summary["tokens"]
    _assert_same_curve(ref_run, run)
    assert abs(s["val_loss"] - ref_summary["val_loss"]) < 1e-5
    ckpt = RunDir(run).latest_checkpoint()
    if parallel == "fsdp":
        assert (ckpt / "dcp" / ".metadata").is_file()
    # the consolidated HF folder holds the same weights as the single-process run
    a, b = weights(RunDir(ref_run).latest_checkpoint()), weights(ckpt)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    model = load_model_from_checkpoint(run / "ckpt" / "latest")
    assert model.config.n_layers == 2


@pytest.mark.slow
def test_distributed_fsdp_zero2_resume_after_kill(reference, base, tmp_path):
    """ZeRO-2 (reshard_after_forward=False), killed in step 5, resumed from the step-3 DCP checkpoint."""
    recipe, ref_run, _ = reference
    run = new_run_dir(base, tmp_path / "run")
    args = (*COMMON, "train.batch_size=2", "train.parallel=fsdp", "train.reshard_after_forward=false")
    crash = slm_train(recipe, run, *args, nproc=2, env=subprocess_env(SLMKIT_FAULT_KILL_AT_STEP="5"))
    assert crash.returncode != 0
    assert RunDir(run).latest_checkpoint().name == "step-000003"
    s = summary(slm_train(recipe, run, *args, nproc=2))
    assert s["steps"] == STEPS
    _assert_same_curve(ref_run, run)
