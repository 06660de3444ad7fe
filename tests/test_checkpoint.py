"""Checkpoint layout: atomic step folders, the `latest` link, keep_last pruning, restore of model,
optimizer and RNG states (in process, single rank)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from slmkit.errors import SlmError
from slmkit.models import ModelConfig, build_model
from slmkit.pipeline.rundir import RunDir, resolve_checkpoint
from slmkit.train.checkpoint import (
    clean_temp,
    load_checkpoint,
    load_model_from_checkpoint,
    read_trainer_state,
    save_checkpoint,
)
from slmkit.train.distributed import DistEnv
from slmkit.train.rng import rng_state, set_rng_state

ENV = DistEnv()


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16, multiple_of=32)
    return build_model(cfg)


def trained_pair(seed: int = 0):
    model = tiny_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = {"input_ids": torch.randint(0, 64, (2, 8)), "labels": torch.randint(0, 64, (2, 8))}
    model.loss(batch).backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def save(run, step, model, opt, keep_last=3, **state):
    return save_checkpoint(run, step, model=model, optimizer=opt, parallel="none", env=ENV,
                           trainer_state={"step": step, **state}, keep_last=keep_last)


def test_checkpoint_layout_and_latest_link(tmp_path):
    model, opt = trained_pair()
    first = save(tmp_path, 5, model, opt)
    assert first == tmp_path / "ckpt" / "step-000005"
    assert {"config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"} <= {
        p.name for p in first.iterdir()}
    second = save(tmp_path, 10, model, opt)
    link = tmp_path / "ckpt" / "latest"
    assert link.is_symlink() and link.readlink().as_posix() == "step-000010"  # relative
    assert RunDir(tmp_path).latest_checkpoint() == second.resolve()
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))  # nothing half-written is left


def test_checkpoint_keep_last_prunes_oldest(tmp_path):
    model, opt = trained_pair()
    for step in (2, 4, 6, 8):
        save(tmp_path, step, model, opt, keep_last=2)
    assert [p.name for p in RunDir(tmp_path).checkpoints()] == ["step-000006", "step-000008"]
    save(tmp_path, 10, model, opt, keep_last=0)  # 0 keeps everything
    assert len(RunDir(tmp_path).checkpoints()) == 3


def test_checkpoint_half_written_folders_are_ignored(tmp_path):
    model, opt = trained_pair()
    save(tmp_path, 3, model, opt)
    torn = tmp_path / "ckpt" / ".step-000006.tmp"  # a kill during the next save
    torn.mkdir()
    (torn / "config.json").write_text("{}")
    incomplete = tmp_path / "ckpt" / "step-000009"  # no trainer_state.json: not a checkpoint
    incomplete.mkdir()
    (tmp_path / "ckpt" / "latest").unlink()  # and a lost link
    assert RunDir(tmp_path).latest_checkpoint().name == "step-000003"
    clean_temp(RunDir(tmp_path))
    assert not torn.exists()


def test_checkpoint_restores_model_and_optimizer(tmp_path):
    model, opt = trained_pair(seed=0)
    path = save(tmp_path, 1, model, opt)
    other, other_opt = trained_pair(seed=1)
    load_checkpoint(path, model=other, optimizer=other_opt, parallel="none", env=ENV)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    for idx, state in opt.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], other_opt.state_dict()["state"][idx]["exp_avg"])


def test_checkpoint_loads_as_model_from_any_path_form(tmp_path):
    model, opt = trained_pair()
    path = save(tmp_path, 7, model, opt)
    for form in (path, tmp_path / "ckpt" / "latest", tmp_path, tmp_path / "ckpt"):
        assert resolve_checkpoint(form) == path.resolve()
    loaded = load_model_from_checkpoint(tmp_path)
    assert torch.equal(loaded.embed.weight, model.embed.weight)
    with pytest.raises(SlmError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_checkpoint_malformed_state_names_file(tmp_path):
    (tmp_path / "trainer_state.json").write_text("{\n  oops")
    with pytest.raises(SlmError, match="trainer_state.json:2"):
        read_trainer_state(tmp_path)


def test_checkpoint_rng_state_round_trip_through_json():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == got[:2] and torch.equal(expected[2], got[2])
