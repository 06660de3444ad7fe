"""CodeFusion model: schedule, shapes, loss, overfit-then-sample loop, strided sampling, bad inputs."""

from __future__ import annotations

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.models.codefusion import (
    CODEFUSION_PRESETS,
    CodeFusion,
    CodeFusionConfig,
    build_codefusion,
    get_codefusion_preset,
)


def small(**overrides) -> CodeFusionConfig:
    """codefusion-tiny's block shape at toy sizes (trains in seconds)."""
    base = dict(vocab_size=40, d_model=64, encoder_layers=2, denoiser_layers=2, decoder_layers=2, n_heads=4,
                ffn_hidden=128, max_utterance_len=8, code_len=8, diffusion_steps=100)
    base.update(overrides)
    return CodeFusionConfig(**base).validate()


def toy_pairs() -> dict[str, torch.Tensor]:
    """5 (utterance, code) pairs; codes of lengths 8, 6, 5, 7, 4 padded with pad_id 0 to code_len 8."""
    g = torch.Generator().manual_seed(1)
    utt = torch.randint(3, 40, (5, 6), generator=g)
    code = torch.randint(3, 40, (5, 8), generator=g)
    code_mask = torch.zeros(5, 8, dtype=torch.long)
    for i, n in enumerate([8, 6, 5, 7, 4]):
        code_mask[i, :n] = 1
        code[i, n:] = 0
    return dict(utterance_ids=utt, utterance_mask=torch.ones_like(utt), code_ids=code, code_mask=code_mask)


@pytest.fixture(scope="module")
def overfit():
    """A small model overfit on toy_pairs for 150 AdamW steps; (model, batch, loss history)."""
    torch.manual_seed(0)
    model = build_codefusion(small())
    model.init_weights(seed=0)
    batch = toy_pairs()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    history = []
    for _ in range(150):
        out = model.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in out.items()})
    model.eval()
    return model, batch, history


# ---------------------------------------------------------------------------- schedule


def test_schedule_is_decreasing_in_unit_interval():
    model = build_codefusion(small(diffusion_steps=1200), device="meta")
    ab = model.alpha_bar(torch.arange(1200))
    assert ((ab > 0) & (ab < 1)).all()
    assert (ab[1:] < ab[:-1]).all()
    assert ab[0].item() == pytest.approx(1 - 1e-2, abs=1e-6)  # 1 - sqrt(s), s = 1e-4
    assert ab[-1].item() < 1e-3


def test_q_sample_at_t0_is_close_to_x0_and_pure_noise_at_T():
    model = build_codefusion(small(diffusion_steps=1200))
    x0 = torch.randn(4, 8, 64)
    noise = torch.randn(4, 8, 64)
    xt = model.q_sample(x0, torch.zeros(4, dtype=torch.long), noise)
    assert ((xt - x0) ** 2).mean().item() < 0.02  # sqrt(0.99) x0 + 0.1 noise
    xT = model.q_sample(x0, torch.full((4,), 1199), noise)
    assert ((xT - noise) ** 2).mean().item() < 1e-3  # alpha_bar(T-1) = 1 - sqrt(1 - 1/T + s) ~ 4e-4


# ---------------------------------------------------------------------------- config and size


def test_presets_validate_and_75m_param_count_on_meta():
    for name in CODEFUSION_PRESETS:
        get_codefusion_preset(name)
    model = build_codefusion(get_codefusion_preset("codefusion-75m"), device="meta")
    n = model.num_params()
    print(f"\ncodefusion-75m: {n:,} parameters ({n / 1e6:.1f}M; paper: 75M); "
          f"without the shared embedding table: {model.num_params(non_embedding=True):,}")
    assert model.embed.weight.device.type == "meta"
    assert 70e6 < n < 130e6
    tiny = build_codefusion(get_codefusion_preset("codefusion-tiny"), device="meta")
    print(f"codefusion-tiny: {tiny.num_params():,} parameters")


@pytest.mark.parametrize(
    "field,value",
    [("d_model", 0), ("n_heads", 3), ("diffusion_steps", 0), ("code_len", -1), ("schedule_offset", 0.0),
     ("dropout", 1.0), ("pad_id", 40), ("norm", "batchnorm")],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(SlmError, match=field):
        small(**{field: value})
    with pytest.raises(SlmError, match="unknown codefusion key"):
        small().replace(d_modle=3)


# ---------------------------------------------------------------------------- shapes and loss


def test_shapes_and_finite_loss_with_padding_and_unconditional_rows():
    torch.manual_seed(0)
    model = build_codefusion(small())
    batch = toy_pairs()
    batch["utterance_mask"][1, 3:] = 0
    memory, mask = model.encode(batch["utterance_ids"], batch["utterance_mask"])
    assert memory.shape == (5, 6, 64) and mask.shape == (5, 1, 1, 6)
    x0 = model.embed(batch["code_ids"])
    t = torch.randint(0, 100, (5,))
    x0_hat = model.denoise(model.q_sample(x0, t), t, memory, mask)
    assert x0_hat.shape == x0.shape
    assert model.decode_hidden(x0_hat, memory, mask).shape == (5, 8, 64)
    for extra in ({}, {"unconditional": True}, {"unconditional": torch.tensor([1, 0, 1, 0, 0]).bool()}):
        out = model.loss({**batch, **extra})
        assert set(out) == {"loss", "mse", "decoder_mse", "nll"}
        assert all(torch.isfinite(v) for v in out.values())
        assert out["loss"].item() == pytest.approx((out["mse"] + out["decoder_mse"] + out["nll"]).item(), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    # code_mask is honoured when padding is left out of the loss
    masked = build_codefusion(small(loss_on_padding=False)).loss(batch)
    assert torch.isfinite(masked["loss"])


def test_loss_decreases_when_overfitting(overfit):
    _, _, history = overfit
    first = sum(h["loss"] for h in history[:10]) / 10
    last = sum(h["loss"] for h in history[-10:]) / 10
    print(f"\noverfit loss: first 10 steps {first:.3f} -> last 10 steps {last:.3f}; final {history[-1]}")
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert last < 0.25 * first


def test_clamped_sampling_reproduces_the_training_code(overfit):
    model, batch, _ = overfit
    code = batch["code_ids"]
    out = model.sample(batch["utterance_ids"], batch["utterance_mask"], num_candidates=4, clamp=True,
                       generator=torch.Generator().manual_seed(0))
    tokens, scores = out["tokens"], out["scores"]
    assert tokens.shape == (5, 4, 8) and scores.shape == (5, 4) and out["intermediate"] == []
    assert (scores <= 0).all()
    top = scores.argmax(1)
    top1 = sum(bool((tokens[i, top[i]] == code[i]).all()) for i in range(5))
    within = sum(bool((tokens[i] == code[i]).all(-1).any()) for i in range(5))
    print(f"\nclamped sampling, T={model.config.diffusion_steps} steps: top-1 exact {top1}/5, within N=4 {within}/5")
    assert within >= 4


def test_strided_sampling_with_intermediates(overfit):
    model, batch, _ = overfit
    out = model.sample(batch["utterance_ids"][:2], None, num_candidates=3, steps=10,
                       generator=torch.Generator().manual_seed(1), return_intermediate_every=3)
    assert out["tokens"].shape == (2, 3, 8)
    assert [s["step"] for s in out["intermediate"]] == [3, 6, 9, 10]
    assert out["intermediate"][-1]["t"] == 0 and torch.equal(out["intermediate"][-1]["tokens"], out["tokens"])
    exact = sum(bool((out["tokens"][i] == batch["code_ids"][i]).all(-1).any()) for i in range(2))
    assert exact >= 1
    assert model.timestep_grid(10) == [99, 88, 77, 66, 55, 44, 33, 22, 11, 0]
    assert model.timestep_grid(1) == [99] and model.timestep_grid(100) == list(range(99, -1, -1))
    # same generator seed -> same draws (deterministic sampler)
    again = model.sample(batch["utterance_ids"][:2], None, num_candidates=3, steps=10,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(again["tokens"], out["tokens"])


def test_bad_sampling_inputs_raise_slm_error():
    model = build_codefusion(small())
    utt = torch.randint(3, 40, (2, 5))
    cases = [
        dict(num_candidates=0), dict(num_candidates=1, steps=0), dict(num_candidates=1, steps=101),
        dict(num_candidates=1, steps=2.5), dict(num_candidates=1, return_intermediate_every=0),
    ]
    for kwargs in cases:
        with pytest.raises(SlmError) as info:
            model.sample(utt, None, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(SlmError, match="max_utterance_len"):
        model.sample(torch.randint(3, 40, (1, 9)), None, num_candidates=1)
    with pytest.raises(SlmError, match="shape"):
        model.sample(utt, torch.ones(2, 4), num_candidates=1)
    with pytest.raises(SlmError, match="in \\[0, 40\\)"):
        model.sample(utt + 40, None, num_candidates=1)
    with pytest.raises(SlmError, match="code_len"):
        model.loss(dict(utterance_ids=utt, code_ids=torch.zeros(2, 9, dtype=torch.long)))


def test_dtype_follows_the_model():
    model = build_codefusion(small(), dtype=torch.bfloat16)
    out = model.sample(torch.randint(3, 40, (1, 4)), None, num_candidates=2, steps=3, clamp=True)
    assert out["tokens"].shape == (1, 2, 8) and out["scores"].dtype == torch.float32
    assert isinstance(model, CodeFusion)
