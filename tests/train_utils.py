"""Helpers for the trainer tests: a tiny recipe on real data, prepared once, and `slm train` subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# ~50k-parameter LLaMA-style model on 40 files of Python's standard library: seconds per run.
TINY_RECIPE = {
    "name": "tiny-train",
    "tokenizer": {"vocab_size": 512, "max_train_bytes": 2_000_000},
    "data": {
        "seq_len": 64,
        "val_fraction": 0.1,
        "workers": 1,
        "sources": [{"name": "stdlib", "type": "python-stdlib", "max_docs": 40}],
    },
    "model": {"preset": "tiny-llama", "n_layers": 2, "d_model": 64, "n_heads": 4, "max_seq_len": 64},
    "train": {
        "optimizer": "llama",
        "lr": 0.003,
        "warmup_steps": 3,
        "max_steps": 20,
        "batch_size": 4,
        "precision": "fp32",
        "device": "cpu",
        "save_every": 5,
        "log_every": 1,
        "eval_every": 10,
        "eval_batches": 2,
        "keep_last": 2,
        "seed": 1337,
    },
}


def write_recipe(folder: Path, **train_overrides) -> Path:
    """Write the tiny recipe (train.* keys replaced by `train_overrides`) to folder/tiny.yaml."""
    recipe = json.loads(json.dumps(TINY_RECIPE))
    recipe["train"].update(train_overrides)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def prepare_base(folder: Path) -> Path:
    """Run the tokenizer + data stages once into `folder` (tokenizer.json, data/)."""
    from slmkit.config import load_recipe
    from slmkit.pipeline.stages import run_stages

    folder.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(write_recipe(folder))
    run_stages(recipe, folder, ["tokenizer", "data"], log=lambda _: None, progress=False, record=False)
    return folder


def new_run_dir(base: Path, dest: Path) -> Path:
    """A run folder that already holds the prepared tokenizer and data (copied from `base`)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base / "tokenizer.json", dest / "tokenizer.json")
    shutil.copytree(base / "data", dest / "data")
    return dest


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child trainers: one thread each (deterministic, kind to 2 cores), no benchmark."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", SLMKIT_PEAK_FLOPS="1e11", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def slm_train(recipe: Path, out: Path, *overrides: str, nproc: int = 1, env: dict | None = None,
              flags: tuple[str, ...] = ("--no-progress",), timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `slm train RECIPE OVERRIDES --out OUT` (under torchrun when nproc > 1)."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*launcher, "-m", "slmkit.cli", "train", str(recipe), *overrides, "--out", str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or subprocess_env(), timeout=timeout)


def summary(result: subprocess.CompletedProcess) -> dict:
    """The JSON summary `slm train` prints as its last stdout line."""
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss from metrics.jsonl."""
    from slmkit.train.metrics import read_metrics

    return {e["step"]: e["loss"] for e in read_metrics(run_dir) if "loss" in e}


def weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(ckpt / "model.safetensors")


def shared_base(tmp_path_factory) -> Path:
    """The prepared tokenizer + data, built once per pytest session and shared by all trainer tests."""
    base = tmp_path_factory.getbasetemp() / "train-base"
    if not (base / "data" / "manifest.json").is_file():
        prepare_base(base)
    return base


def assert_resume_after_sigkill_is_exact(recipe: Path, reference_run: Path, tmp_path: Path, kill_at: int = 6,
                                         resumes_from: str = "step-000004", steps: int = 8) -> None:
    """Train `recipe` into a new run (the reference run's tokenizer), SIGKILL it at step `kill_at`, train
    again: it resumes from `resumes_from` and ends with the reference run's weights and loss curve."""
    import signal

    import torch

    from slmkit.pipeline.rundir import RunDir

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "tokenizer.json").write_bytes((reference_run / "tokenizer.json").read_bytes())
    env = subprocess_env(SLMKIT_FAULT_KILL_AT_STEP=str(kill_at))
    crash = subprocess.run([sys.executable, "-m", "slmkit.cli", "train", str(recipe), "--out", str(killed),
                            "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert RunDir(killed).latest_checkpoint().name == resumes_from
    again = subprocess.run([sys.executable, "-m", "slmkit.cli", "train", str(recipe), "--out", str(killed),
                            "--no-progress"], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert summary(again)["steps"] == steps
    a, b = weights(RunDir(reference_run).latest_checkpoint()), weights(RunDir(killed).latest_checkpoint())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train_losses(reference_run) == train_losses(killed)
