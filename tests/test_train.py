"""`slm train` end to end on real data (tiny model, CPU): outputs, refusals, stop signals, time limit,
SFT batches; plus the evaluation, metrics and MFU helpers."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch
import yaml
from train_utils import (
    REPO,
    TINY_RECIPE,
    new_run_dir,
    shared_base,
    slm_train,
    subprocess_env,
    summary,
    train_losses,
    write_recipe,
)

from slmkit.eval.loss import bits_per_byte, evaluate
from slmkit.pipeline.rundir import RunDir
from slmkit.train import mfu as mfu_mod
from slmkit.train.checkpoint import read_trainer_state
from slmkit.train.metrics import read_metrics, truncate_metrics


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_base(tmp_path_factory)


def test_train_writes_metrics_tensorboard_and_hf_checkpoint(base, tmp_path):
    recipe = write_recipe(tmp_path, max_steps=10, log_every=5, eval_every=5)
    run = new_run_dir(base, tmp_path / "run")
    result = slm_train(recipe, run, flags=())  # with the progress bar
    s = summary(result)
    assert s["steps"] == 10 and s["tokens"] == 10 * 4 * 64 and s["stopped"] == "complete"
    assert s["val_loss"] < math.log(512) and s["val_bpb"] > 0
    assert "tok/s" in result.stderr and "mfu" in result.stderr and "10/10" in result.stderr
    entries = read_metrics(run)
    train_entries = [e for e in entries if "loss" in e]
    assert [e["step"] for e in train_entries] == [5, 10]
    assert set(train_entries[0]) >= {"step", "loss", "lr", "grad_norm", "tok_per_s", "mfu", "tokens", "elapsed",
                                     "skipped"}
    assert train_entries[1]["loss"] < train_entries[0]["loss"]
    val = [e for e in entries if "val_loss" in e]
    assert [e["step"] for e in val] == [5, 10] and val[-1]["val_loss"] == pytest.approx(s["val_loss"])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    ckpt = RunDir(run).latest_checkpoint()
    assert ckpt.name == "step-000010" and s["checkpoint"] == str(ckpt)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = torch.tensor([[1, 2, 3, 4]])
    from slmkit.train.checkpoint import load_model_from_checkpoint

    ours = load_model_from_checkpoint(ckpt)
    torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def test_train_refuses_a_different_recipe_unless_forced(base, tmp_path):
    recipe = write_recipe(tmp_path, max_steps=2, eval_every=0)
    run = new_run_dir(base, tmp_path / "run")
    summary(slm_train(recipe, run))
    refused = slm_train(recipe, run, "train.lr=0.01")
    assert refused.returncode == 2 and "holds a different recipe" in refused.stderr and "train.lr" in refused.stderr
    assert "Traceback" not in refused.stderr
    forced = summary(slm_train(recipe, run, "train.lr=0.01", "train.max_steps=3", flags=("--force", "--no-progress")))
    assert forced["steps"] == 3
    fresh = slm_train(recipe, run, "train.lr=0.01", "train.max_steps=3", flags=("--no-resume", "--no-progress"))
    assert fresh.returncode == 2 and "already holds checkpoints" in fresh.stderr


def test_train_sigterm_writes_checkpoint_and_exits_cleanly(base, tmp_path):
    recipe = write_recipe(tmp_path, max_steps=12, save_every=5, eval_every=0)
    run = new_run_dir(base, tmp_path / "run")
    result = slm_train(recipe, run, env=subprocess_env(SLMKIT_FAULT_SIGNAL_AT_STEP="7"))
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "stopped at step 7 (SIGTERM)" in result.stderr
    state = read_trainer_state(RunDir(run).latest_checkpoint())
    assert state["step"] == 7 and state["stopped"] == "SIGTERM"
    done = summary(slm_train(recipe, run))
    assert done["steps"] == 12 and sorted(train_losses(run)) == list(range(1, 13))


def test_train_time_limit_stops_and_next_run_resumes(base, tmp_path):
    recipe = write_recipe(tmp_path, max_steps=50, eval_every=0, max_minutes=1e-6, log_every=5)
    run = new_run_dir(base, tmp_path / "run")
    result = slm_train(recipe, run)
    s = summary(result)
    assert s["stopped"] == "time limit" and s["steps"] == 1
    assert "stopped at step 1 (time limit)" in result.stderr
    again = summary(slm_train(recipe, run))  # the budget is for the whole run: nothing left
    assert again["stopped"] == "time limit" and again["steps"] == 1
    assert 1 in train_losses(run)  # the stopping step is logged even off the log_every grid
    more = summary(slm_train(recipe, run, "train.max_minutes=5", "train.max_steps=3"))  # a bigger budget continues
    assert more["steps"] == 3 and more["stopped"] == "complete"


def test_train_sft_batches_from_pretrained_checkpoint(base, tmp_path):
    pre = new_run_dir(base, tmp_path / "pre")
    summary(slm_train(write_recipe(tmp_path, max_steps=2, eval_every=0), pre))
    fixture = REPO / "tests" / "fixtures" / "sft_chat.jsonl"
    recipe = json.loads(json.dumps(TINY_RECIPE))
    recipe.update(name="tiny-sft", task="sft", stages=["train"],
                  sft={"path": str(fixture), "val_path": str(fixture), "template": "chat"})
    recipe["train"].update(init_from=str(pre / "ckpt" / "latest"), max_steps=3, eval_every=3, batch_size=2)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "sft"
    s = summary(slm_train(path, run))
    assert s["steps"] == 3 and math.isfinite(s["val_loss"]) and s["val_bpb"] is None
    tok_config = json.loads((RunDir(run).latest_checkpoint() / "tokenizer_config.json").read_text())
    assert "Alice" in tok_config["chat_template"]


@pytest.mark.slow
def test_train_bf16_compile_and_activation_checkpointing(base, tmp_path):
    recipe = write_recipe(tmp_path, max_steps=3, eval_every=3, precision="bf16", compile=True,
                          activation_checkpointing=True)
    run = new_run_dir(base, tmp_path / "run")
    s = summary(slm_train(recipe, run, timeout=600))
    assert s["steps"] == 3 and math.isfinite(s["loss"]) and math.isfinite(s["val_loss"])


# --------------------------------------------------------------------------- helpers


class MeanLoss(torch.nn.Module):
    """loss = mean of the labels (as floats) over labels != -100: easy to check by hand."""

    def loss(self, batch):
        labels = batch["labels"]
        mask = labels != -100
        return labels[mask].float().mean()


def test_evaluate_weights_batches_by_target_tokens():
    batches = [
        {"input_ids": torch.zeros(1, 4), "labels": torch.tensor([[1, 1, 1, 1]])},
        {"input_ids": torch.zeros(1, 4), "labels": torch.tensor([[4, -100, -100, -100]])},
        {"input_ids": torch.zeros(1, 4), "labels": torch.full((1, 4), -100)},
    ]
    out = evaluate(MeanLoss(), batches)
    assert out == {"loss": pytest.approx(8 / 5), "tokens": 5, "batches": 2}
    assert bits_per_byte(math.log(2), 4.0) == pytest.approx(0.25)
    assert bits_per_byte(1.0, None) is None


def test_metrics_file_drops_torn_lines_and_truncates(tmp_path):
    RunDir(tmp_path).metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [e["step"] for e in read_metrics(tmp_path)] == [1, 2]
    truncate_metrics(tmp_path, 1)
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]


def test_mfu_peaks_datasheet_and_measured(tmp_path, monkeypatch):
    assert mfu_mod.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert mfu_mod.gpu_peak_flops("NVIDIA H200", "bf16") == 989e12
    assert mfu_mod.gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert mfu_mod.gpu_peak_flops("NVIDIA H100 PCIe", "fp32") == 51e12
    assert mfu_mod.gpu_peak_flops("Mystery GPU", "bf16") is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("SLMKIT_PEAK_FLOPS", raising=False)
    calls = []
    monkeypatch.setattr(mfu_mod, "measure_matmul_flops", lambda dtype: calls.append(dtype) or 1e11)
    assert mfu_mod.peak_flops(torch.device("cpu"), "fp32") == 1e11
    assert mfu_mod.peak_flops(torch.device("cpu"), "fp32") == 1e11  # cached
    assert calls == [torch.float32]
    assert json.loads((tmp_path / "slmkit" / "peak_flops.json").read_text())
    assert mfu_mod.mfu(6e6, 1e4, 1e11) == pytest.approx(0.6)
    assert mfu_mod.mfu(6e6, 1e4, 1e11, world_size=2) == pytest.approx(0.3)
    assert mfu_mod.mfu(6e6, 1e4, None) is None


def test_mfu_matmul_benchmark_is_plausible():
    flops = mfu_mod.measure_matmul_flops(torch.float32, n=256, seconds=0.05)
    assert 1e8 < flops < 1e15


def test_train_sft_without_init_from_names_the_missing_tokenizer(tmp_path):
    fixture = REPO / "tests" / "fixtures" / "sft_chat.jsonl"
    recipe = json.loads(json.dumps(TINY_RECIPE))
    recipe.update(name="tiny-sft", task="sft", stages=["train"], sft={"path": str(fixture), "template": "chat"})
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = slm_train(path, tmp_path / "sft")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.init_from is not set" in result.stderr
