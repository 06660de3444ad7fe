"""Optimizer presets, parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slmkit.config import TrainConfig
from slmkit.errors import SlmError
from slmkit.train.optim import build_optimizer, param_groups, resolve_optim_settings
from slmkit.train.schedule import build_scheduler, lr_multiplier


class TinyLM(nn.Module):
    """Names like the Decoder: embed.*, layers.N.*, norm.*, lm_head.*."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4))])
        self.norm = nn.LayerNorm(4)
        self.lm_head = nn.Linear(4, 10, bias=True)


def test_llama_preset_matches_reference():
    s = resolve_optim_settings(TrainConfig(optimizer="llama"))
    assert (s.betas, s.weight_decay, s.grad_clip, s.schedule, s.warmup_steps, s.min_lr_ratio) == (
        (0.9, 0.95), 0.1, 1.0, "cosine", 2000, 0.1)
    assert s.lr == 3e-4


def test_phi_preset_matches_reference():
    s = resolve_optim_settings(TrainConfig(optimizer="phi-1_5"))
    assert (s.lr, s.betas, s.eps, s.weight_decay, s.schedule, s.warmup_steps) == (
        2e-4, (0.9, 0.98), 1e-7, 0.1, "constant", 0)


def test_recipe_values_override_preset():
    s = resolve_optim_settings(TrainConfig(optimizer="llama", lr=1e-3, betas=[0.8, 0.9], schedule="wsd",
                                           warmup_steps=10, weight_decay=0.0))
    assert (s.lr, s.betas, s.schedule, s.warmup_steps, s.weight_decay) == (1e-3, (0.8, 0.9), "wsd", 10, 0.0)


@pytest.mark.parametrize("bad, words", [
    (dict(optimizer="lamma"), "did you mean 'llama'"),
    (dict(schedule="cosin"), "train.schedule"),
    (dict(lr=-1.0), "train.lr"),
    (dict(betas=[0.9]), "train.betas"),
])
def test_bad_optimizer_settings_name_the_key(bad, words):
    with pytest.raises(SlmError, match=words):
        resolve_optim_settings(TrainConfig(**bad))


def test_no_weight_decay_on_norms_biases_embeddings():
    model = TinyLM()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == ["layers.0.1.weight", "lm_head.weight"]
    assert "embed.weight" in {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_tied_weights_are_optimised_once():
    model = TinyLM()
    model.lm_head.weight = model.embed.weight
    groups = param_groups(model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))


def test_optimizer_takes_a_step():
    model = TinyLM()
    opt = build_optimizer(model, resolve_optim_settings(TrainConfig(lr=0.1, warmup_steps=0)))
    before = model.lm_head.weight.detach().clone()
    model.lm_head(model.embed(torch.tensor([1, 2]))).sum().backward()
    opt.step()
    assert not torch.equal(before, model.lm_head.weight)


def test_cosine_warms_up_then_decays_to_min_ratio():
    m = [lr_multiplier(s, 100, "cosine", warmup_steps=10, min_lr_ratio=0.1) for s in range(101)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert m[10] == pytest.approx(1.0) and m[100] == pytest.approx(0.1)
    assert m[55] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a >= b for a, b in zip(m[10:], m[11:]))


def test_constant_linear_and_wsd():
    assert {lr_multiplier(s, 50, "constant") for s in range(50)} == {1.0}
    assert lr_multiplier(50, 100, "linear", 0, 0.0) == pytest.approx(0.5)
    wsd = [lr_multiplier(s, 100, "wsd", warmup_steps=5, min_lr_ratio=0.0, decay_fraction=0.2) for s in range(101)]
    assert wsd[5:80] == [1.0] * 75
    assert wsd[90] == pytest.approx(0.5) and wsd[100] == pytest.approx(0.0)


def test_scheduler_state_round_trip_keeps_position():
    model = TinyLM()
    settings = resolve_optim_settings(TrainConfig(lr=1.0, warmup_steps=2))
    opt = build_optimizer(model, settings)
    sched = build_scheduler(opt, settings, max_steps=10)
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(model, settings)
    sched2 = build_scheduler(opt2, settings, max_steps=10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert math.isclose(opt.param_groups[0]["lr"], lr_multiplier(5, 10, "cosine", 2, 0.1))
