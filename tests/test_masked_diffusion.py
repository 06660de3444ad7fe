"""task: masked-diffusion: bidirectional attention, the loss, the NL->code rows, the low-confidence
remasking sampler, recipe checks, training end to end (both forms, exact resume, distributed), and
`slm generate` / `slm eval --compare --steps-sweep` on a masked checkpoint (with their bad-input errors)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_codefusion_train import TINY_CF, slm, write
from torch import nn
from train_utils import REPO, TINY_RECIPE, summary, train_losses, weights

from slmkit.cli import main
from slmkit.config import load_recipe
from slmkit.errors import SlmError
from slmkit.generate.masked_diffusion import MaskedSampling, block_steps, masked_sample
from slmkit.models import ModelConfig, build_model
from slmkit.objectives import get_objective
from slmkit.objectives.masked_diffusion import (
    METADATA_KEY,
    MaskedCodeCollate,
    MaskedCodeObjective,
    MaskedDiffusionObjective,
    masked_diffusion_loss,
)
from slmkit.pipeline.rundir import RunDir

TINY_MD = {**TINY_CF, "name": "tiny-md", "task": "masked-diffusion",
           "model": {"preset": "tiny-llama", "d_model": 64, "n_heads": 2, "n_layers": 2, "max_seq_len": 64}}
TINY_AR = {**TINY_MD, "name": "tiny-ar", "task": "ar-code"}
ANSWER_LEN = TINY_MD["code"]["code_len"] + 1  # 17

V = 40  # vocabulary of the random unit-test models
MASK = V - 1
EOS = 0


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(bidirectional: bool = True, seed: int = 0, init_std: float = 0.02, max_seq_len: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, multiple_of=32, max_seq_len=max_seq_len,
                      init_std=init_std, bidirectional=bidirectional)
    return build_model(cfg)


def last_token_changed(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of positions 0..T-2 for a row and for the same row with its last token changed."""
    ids = torch.randint(1, MASK, (1, 12), generator=torch.Generator().manual_seed(1))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] % (MASK - 1)) + 1
    assert other[0, -1] != ids[0, -1]
    with torch.no_grad():
        return model(ids)[0, :-1], model(other)[0, :-1]


# ---------------------------------------------------------------------------- bidirectional attention


def test_bidirectional_model_sees_later_tokens_causal_does_not():
    a, b = last_token_changed(tiny_model(bidirectional=True, init_std=0.2))
    assert (a - b).abs().amax(-1).min() > 1e-4  # every earlier position reacts to the later token
    a, b = last_token_changed(tiny_model(bidirectional=False, init_std=0.2))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_bidirectional_padding_is_finite_and_does_not_leak():
    model = tiny_model(init_std=0.2)
    ids = torch.randint(1, MASK, (2, 10), generator=torch.Generator().manual_seed(2))
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0  # row 1: 6 real tokens, 4 of padding
    with torch.no_grad():
        logits = model(ids, attention_mask=attention)
        assert torch.isfinite(logits).all()
        alone = model(ids[1:, :6])  # the real part of row 1 by itself
        torch.testing.assert_close(logits[1:, :6], alone, rtol=1e-5, atol=1e-5)
        other_pad = ids.clone()
        other_pad[1, 6:] = 7  # what sits in the padding does not matter to the real tokens
        torch.testing.assert_close(model(other_pad, attention_mask=attention)[1, :6], logits[1, :6], rtol=0, atol=1e-6)


def test_bidirectional_model_refuses_kv_cache():
    model = tiny_model()
    with pytest.raises(ValueError, match="bidirectional"):
        model(torch.tensor([[1, 2, 3]]), kv_cache=model.new_cache(1))
    causal = tiny_model(bidirectional=False)
    assert causal(torch.tensor([[1, 2, 3]]), kv_cache=causal.new_cache(1)).shape == (1, 3, V)


# ---------------------------------------------------------------------------- the loss


class Capture(nn.Module):
    """Wraps a model and records the (noisy) inputs and attention masks it is given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append((x.clone(), attention_mask))
        return self.inner(x, attention_mask=attention_mask)


def loss_batch(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [3, 12] without the mask id; maskable: after a 4-token prompt, row 2 with 3 pad positions."""
    ids = torch.randint(1, MASK, (3, 12), generator=torch.Generator().manual_seed(seed))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :4] = False
    maskable[2, 9:] = False
    attention = torch.ones_like(ids)
    attention[2, 9:] = 0
    return ids, maskable, attention


def test_loss_never_masks_prompt_or_padding():
    model = Capture(tiny_model()).train()
    ids, maskable, attention = loss_batch()
    masked_any = torch.zeros_like(maskable)
    kept_any = torch.zeros_like(maskable)
    for seed in range(30):
        torch.manual_seed(seed)
        masked_diffusion_loss(model, ids, maskable, MASK, attention)
        noisy, seen_attention = model.seen[-1]
        assert seen_attention is attention
        assert torch.equal(noisy[~maskable], ids[~maskable])  # prompt and padding as given
        is_mask = noisy == MASK
        assert torch.equal(noisy[~is_mask], ids[~is_mask])  # a position is either kept or masked
        masked_any |= is_mask
        kept_any |= ~is_mask
    assert torch.equal(masked_any, maskable)  # every maskable position was masked at some draw
    assert kept_any.all()  # ... and kept at another (t < 1)


def test_loss_is_repeatable_in_eval_mode_and_random_in_training():
    model = tiny_model()
    ids, maskable, attention = loss_batch()
    model.eval()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with torch.no_grad():
        a = masked_diffusion_loss(model, ids, maskable, MASK, attention)
        torch.manual_seed(123)  # the global seed plays no part in eval mode
        b = masked_diffusion_loss(model, ids, maskable, MASK, attention)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    with torch.no_grad():
        masked_diffusion_loss(model, ids, maskable, MASK, attention)
    assert torch.equal(torch.get_rng_state(), before)  # validation draws leave the training RNG alone
    model.train()
    with torch.no_grad():
        draws = {float(masked_diffusion_loss(model, ids, maskable, MASK, attention)) for _ in range(5)}
    assert len(draws) > 1


def test_loss_with_everything_masked_is_mean_cross_entropy():
    """eps = 1: t = 1 for every row, so every maskable token is masked and the weight 1/t is 1."""
    model = tiny_model(init_std=0.2).eval()
    ids, maskable, attention = loss_batch()
    with torch.no_grad():
        loss = masked_diffusion_loss(model, ids, maskable, MASK, attention, eps=1.0)
        noisy = torch.where(maskable, torch.full_like(ids, MASK), ids)
        logits = model(noisy, attention_mask=attention)
        expected = F.cross_entropy(logits[maskable], ids[maskable])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_loss_weights_by_inverse_t_and_divides_by_maskable_tokens(monkeypatch):
    """t = 0.5 for row 0 (all its maskable tokens masked), t = 0.25 for rows 1 and 2 (none masked):
    loss = sum over row 0's masked CE / 0.5 / (number of maskable tokens of the whole batch)."""
    from slmkit.objectives.masked_diffusion import EPS

    model = tiny_model(init_std=0.2).train()
    ids, maskable, attention = loss_batch()
    u = (torch.tensor([[0.5], [0.25], [0.25]]) - EPS) / (1 - EPS)  # t = eps + (1 - eps) u
    draws = [u, torch.full(ids.shape, 0.3)]  # masked where 0.3 < t: row 0 only
    monkeypatch.setattr(torch, "rand", lambda *a, **k: draws.pop(0))
    loss = masked_diffusion_loss(model, ids, maskable, MASK, attention)
    monkeypatch.undo()
    assert not draws
    masked = maskable.clone()
    masked[1:] = False
    with torch.no_grad():
        logits = model(torch.where(masked, torch.full_like(ids, MASK), ids), attention_mask=attention)
        ce = F.cross_entropy(logits[masked], ids[masked], reduction="sum")
    torch.testing.assert_close(loss.detach(), ce / 0.5 / maskable.sum(), rtol=1e-4, atol=1e-6)


def test_loss_gradient_flows_to_every_parameter():
    model = tiny_model().train()
    ids, maskable, attention = loss_batch()
    loss = masked_diffusion_loss(model, ids, maskable, MASK, attention, eps=1.0)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_is_zero_and_finite_with_nothing_masked():
    model = tiny_model().train()
    ids, _, attention = loss_batch()
    loss = masked_diffusion_loss(model, ids, torch.zeros_like(ids, dtype=torch.bool), MASK, attention)
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    loss.backward()  # an empty selection still backpropagates (zero gradients)


# ---------------------------------------------------------------------------- NL->code rows


def test_stage2_rows_prompt_separator_answer_and_padding():
    collate = MaskedCodeCollate(eos=0, pad=1, sep=4, answer_len=5)
    batch = collate.finetune([[10, 11], [12]], [[20, 21, 22], [23, 24, 25, 26, 27, 28]])
    assert batch["input_ids"].tolist() == [[10, 11, 4, 20, 21, 22, 0, 0],
                                           [12, 4, 23, 24, 25, 26, 0, 1]]  # long code cut: one EOS remains
    assert batch["maskable"].tolist() == [[False] * 3 + [True] * 5,
                                          [False] * 2 + [True] * 5 + [False]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 7 + [0]]
    assert batch["maskable"].sum(1).tolist() == [5, 5]  # always answer_len answer positions
    assert collate.answer([]) == [0] * 5 and collate.answer(list(range(10, 20)))[-1] == 0


def test_stage1_rows_code_and_eos_all_maskable():
    collate = MaskedCodeCollate(eos=0, pad=1, sep=4, answer_len=5)
    batch = collate.pretrain([[5, 6], [7], list(range(10, 20))], np.random.default_rng(0))
    assert batch["input_ids"].tolist() == [[5, 6, 0, 1, 1], [7, 0, 1, 1, 1], [10, 11, 12, 13, 0]]
    assert batch["maskable"].tolist() == [[True] * 3 + [False] * 2, [True] * 2 + [False] * 3, [True] * 5]
    assert torch.equal(batch["attention_mask"].bool(), batch["maskable"])  # pad: attention 0, never maskable
    assert set(batch) == {"input_ids", "maskable", "attention_mask"}


# ---------------------------------------------------------------------------- the sampler


class NoTokens(nn.Module):
    """A random denoiser whose predictions never include `banned` tokens (and favour `boost`)."""

    def __init__(self, inner: nn.Module, banned: list[int], boost: dict[int, float] | None = None) -> None:
        super().__init__()
        self.inner, self.banned, self.boost = inner, banned, boost or {}
        self.config, self.embed = inner.config, inner.embed

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        logits = self.inner(x, **kwargs).clone()
        logits[..., self.banned] = -1e9
        for token, bias in self.boost.items():
            logits[..., token] += bias
        return logits


class TableDenoiser(nn.Module):
    """Logits from a fixed [T, V] table by absolute position, whatever the input (counts its calls)."""

    def __init__(self, table: torch.Tensor, max_seq_len: int = 32) -> None:
        super().__init__()
        self.config = SimpleNamespace(max_seq_len=max_seq_len)
        self.embed = nn.Embedding(table.shape[1], 2)
        self.register_buffer("table", table)
        self.calls = 0

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        logits = self.table[: x.shape[1]].expand(x.shape[0], -1, -1)
        if logits_at is not None:  # the Decoder's option: only these positions are projected
            logits = logits.gather(1, logits_at[..., None].expand(-1, -1, logits.shape[-1]))
        return logits.clone()


def masks_per_step(result: dict) -> list[list[int]]:
    """[step][row] masked positions left after each recorded step."""
    return [(s["tokens"] == MASK).sum(-1).tolist() for s in result["intermediate"]]


@pytest.mark.parametrize("steps, blocks", [(7, 3), (4, 4), (10, 1), (9, 2)])
def test_block_steps_split_evenly(steps, blocks):
    split = block_steps(steps, blocks)
    assert len(split) == blocks and sum(split) == steps and max(split) - min(split) <= 1
    assert split == sorted(split, reverse=True)  # earlier blocks take the remainder
    assert block_steps(7, 3) == [3, 2, 2]


@pytest.mark.parametrize("length, steps, left", [
    (10, 4, [7, 4, 2, 0]),  # ceil(10/4)=3, ceil(7/3)=3, ceil(4/2)=2, 2
    (6, 6, [5, 4, 3, 2, 1, 0]),  # steps == length: exactly one token per step
    (7, 1, [0]),
])
def test_sampler_commits_ceil_remaining_over_steps_left(length, steps, left):
    model = NoTokens(tiny_model(), banned=[EOS, MASK])  # no row finishes early
    result = masked_sample(model, [3, 4, 5], MASK, EOS, MaskedSampling(length=length, steps=steps),
                           num_candidates=3, return_intermediate_every=1)
    assert result["steps"] == steps
    assert [s["step"] for s in result["intermediate"]] == list(range(1, steps + 1))
    assert masks_per_step(result) == [[n] * 3 for n in left]
    assert result["tokens"].shape == (3, length) and not (result["tokens"] == MASK).any()


def test_sampler_fills_blocks_left_to_right():
    model = NoTokens(tiny_model(), banned=[EOS, MASK])
    result = masked_sample(model, [3, 4], MASK, EOS, MaskedSampling(length=8, steps=5, block_size=4),
                           num_candidates=2, return_intermediate_every=1)
    # block_steps(5, 2) = [3, 2]: block 1 commits 2, 1, 1; block 2 commits 2, 2
    assert masks_per_step(result) == [[n] * 2 for n in (6, 5, 4, 2, 0)]
    for s in result["intermediate"]:
        first, second = s["tokens"][:, :4] == MASK, s["tokens"][:, 4:] == MASK
        if first.any():
            assert second.all()  # block 2 untouched while block 1 still has masks
    every_2 = masked_sample(model, [3, 4], MASK, EOS, MaskedSampling(length=8, steps=5, block_size=4),
                            num_candidates=2, return_intermediate_every=2)
    assert [s["step"] for s in every_2["intermediate"]] == [2, 4, 5]  # the final state is always recorded
    assert torch.equal(every_2["tokens"], result["tokens"])


def test_sampler_seed_and_temperature():
    model = tiny_model(init_std=0.2)
    options = MaskedSampling(length=8, steps=4, temperature=1.0)

    def draw(seed: int) -> torch.Tensor:
        return masked_sample(model, [3, 4], MASK, EOS, options, num_candidates=4,
                             generator=torch.Generator().manual_seed(seed))["tokens"]

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    greedy = masked_sample(model, [3, 4], MASK, EOS, MaskedSampling(length=8, steps=4), num_candidates=3)
    assert (greedy["tokens"] == greedy["tokens"][0]).all()  # temperature 0: every draw the same


def test_sampler_everything_after_first_eos_is_eos():
    model = NoTokens(tiny_model(init_std=0.2), banned=[MASK], boost={EOS: 2.0})
    result = masked_sample(model, [3, 4], MASK, EOS, MaskedSampling(length=12, steps=6, temperature=1.0),
                           num_candidates=8, generator=torch.Generator().manual_seed(0))
    tokens = result["tokens"]
    has_eos = (tokens == EOS).any(-1)
    assert has_eos.sum() >= 2  # the check below is not vacuous
    for row in tokens.tolist():
        if EOS in row:
            assert all(t == EOS for t in row[row.index(EOS):])
    assert not (tokens == MASK).any()
    assert result["scores"].shape == (8,) and torch.isfinite(result["scores"]).all()


def test_sampler_stops_once_eos_is_committed_with_nothing_masked_before():
    """answer positions 0-2 predict token 7, position 3 end-of-text (most confident), 4-7 token 9 (least):
    one token per step, so after 4 steps 0-3 are committed and the row is done."""
    P, L, vocab = 2, 8, 12
    table = torch.zeros(P + L, vocab)
    table[P:P + 3, 7] = 5.0
    table[P + 3, EOS] = 8.0
    table[P + 4:, 9] = 1.0
    model = TableDenoiser(table)
    result = masked_sample(model, [3, 4], 11, EOS, MaskedSampling(length=L, steps=L), num_candidates=2)
    assert result["steps"] == 4 < L and model.calls == 4
    assert result["tokens"].tolist() == [[7, 7, 7, EOS, EOS, EOS, EOS, EOS]] * 2  # masks after EOS: EOS
    real = table.clone()
    real[:, 11] = float("-inf")  # confidences are over real tokens: the mask token is never a prediction
    p7, p_eos = real[P].softmax(-1)[7], real[P + 3].softmax(-1)[EOS]
    expected = (3 * p7.log() + p_eos.log()) / 4  # mean over the tokens through the first EOS
    torch.testing.assert_close(result["scores"], expected.expand(2), rtol=1e-5, atol=1e-6)


def test_sampler_never_commits_the_mask_token():
    P, L, vocab, mask = 1, 4, 12, 11
    table = torch.zeros(P + L, vocab)
    table[P:, 7] = 5.0
    table[P + 1, mask] = 9.0  # an (untrained) model may rate the mask token highest
    result = masked_sample(TableDenoiser(table), [3], mask, EOS, MaskedSampling(length=L, steps=L))
    assert not (result["tokens"] == mask).any()


@pytest.mark.parametrize("options, prompt_len, message", [
    (MaskedSampling(length=0, steps=1), 0, "--length must be >= 1, got 0"),
    (MaskedSampling(length=40, steps=4), 0, "--length 40 exceeds the model context of 32 tokens; use --length <= 32"),
    (MaskedSampling(length=30, steps=4), 5, "--length 30 after a prompt of 5 tokens exceeds the model context of 32 "
                                            "tokens; use --length <= 27"),
    (MaskedSampling(length=16, steps=4, block_size=5), 0, "--block-size 5 must divide --length 16"),
    (MaskedSampling(length=16, steps=4, block_size=0), 0, "--block-size 0 must divide --length 16"),
    (MaskedSampling(length=16, steps=0), 0, "--steps must be in [1, --length=16]"),
    (MaskedSampling(length=16, steps=17), 0, "--steps must be in [1, --length=16] (at least one token is committed "
                                             "per step), got 17"),
    (MaskedSampling(length=16, steps=2, block_size=4), 0, "--steps 2 is fewer than the 4 blocks of --block-size 4"),
    (MaskedSampling(length=16, steps=4, temperature=-1.0), 0, "--temperature must be a finite number >= 0"),
    (MaskedSampling(length=16, steps=4, temperature=float("nan")), 0, "--temperature must be a finite number >= 0"),
])
def test_sampling_options_are_checked(options, prompt_len, message):
    with pytest.raises(SlmError) as info:
        options.check(prompt_len, 32)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sampling_options_that_fit():
    assert MaskedSampling(length=16, steps=4, block_size=4).check(16, 32).blocks == 4
    assert MaskedSampling(length=32, steps=32).check(0, 32).blocks == 1
    with pytest.raises(SlmError):  # the sampler checks too
        masked_sample(tiny_model(), [1] * 20, MASK, EOS, MaskedSampling(length=16, steps=4))


# ---------------------------------------------------------------------------- recipes


def test_masked_recipe_is_the_bidirectional_code_objective(tmp_path):
    recipe = load_recipe(write(tmp_path, TINY_MD))
    objective = get_objective(recipe.task, recipe)
    assert isinstance(objective, MaskedCodeObjective) and objective.bidirectional and objective.loss_is_bound
    assert recipe.model.overrides["bidirectional"] is True
    assert recipe.eval.tasks == ["codefusion-bash"]
    assert objective.stages == ("tokenizer", "train", "eval", "report")
    pretrain = load_recipe(write(tmp_path, {**TINY_RECIPE, "task": "masked-diffusion"}))
    objective = get_objective(pretrain.task, pretrain)
    assert type(objective) is MaskedDiffusionObjective and pretrain.model.overrides["bidirectional"] is True
    assert objective.stages == ("tokenizer", "data", "train", "eval", "report")


@pytest.mark.parametrize("recipe, bidirectional, task", [
    (TINY_MD, False, "masked-diffusion"),
    (TINY_AR, True, "ar-code"),
    (TINY_RECIPE, True, "pretrain"),
    ({**TINY_RECIPE, "task": "masked-diffusion"}, False, "masked-diffusion"),
])
def test_bidirectional_key_must_match_the_task(tmp_path, recipe, bidirectional, task):
    data = json.loads(json.dumps(recipe))
    data["model"]["bidirectional"] = bidirectional
    with pytest.raises(SlmError) as info:
        load_recipe(write(tmp_path, data))
    message = str(info.value)
    assert "recipe key 'model.bidirectional'" in message and f"task: {task}" in message


def test_bidirectional_true_is_accepted_for_masked_diffusion(tmp_path):
    data = json.loads(json.dumps(TINY_MD))
    data["model"]["bidirectional"] = True
    assert load_recipe(write(tmp_path, data)).model.overrides["bidirectional"] is True


def test_codefusion_needs_code_language(tmp_path):
    data = json.loads(json.dumps(TINY_CF))
    del data["code"]["language"]
    with pytest.raises(SlmError, match=r"code\.language"):
        load_recipe(write(tmp_path, data))


@pytest.mark.parametrize("language", ["bash", "python", "cf"])
def test_shipped_masked_recipes_match_the_ar_baseline(language):
    from slmkit.models.accounting import count_params
    from slmkit.models.presets import resolve_model_config

    masked = load_recipe(REPO / "recipes" / f"masked-{language}.yaml")
    ar = load_recipe(REPO / "recipes" / f"ar-{language}.yaml")
    assert isinstance(get_objective(masked.task, masked), MaskedCodeObjective)
    vocab = masked.tokenizer.vocab_size
    cfg_masked, cfg_ar = resolve_model_config(masked.model, vocab), resolve_model_config(ar.model, vocab)
    assert cfg_masked.bidirectional and not cfg_ar.bidirectional
    assert count_params(cfg_masked) == count_params(cfg_ar)
    assert (masked.tokenizer, masked.data.sources, masked.code) == (ar.tokenizer, ar.data.sources, ar.code)
    assert masked.eval.tasks == ar.eval.tasks == [f"codefusion-{language}"]


# ---------------------------------------------------------------------------- training: NL->code


@pytest.fixture(scope="module")
def md_run(tmp_path_factory) -> Path:
    """A finished 8-step tiny masked NL->code run (4 steps of each stage) with its eval stage."""
    folder = tmp_path_factory.mktemp("md")
    result = slm("run", str(write(folder, TINY_MD)), "--out", str(folder / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory, md_run) -> Path:
    """A tiny ar-code decoder trained on the same tokenizer (for --compare and decoder-only errors)."""
    folder = tmp_path_factory.mktemp("ar")
    run = folder / "run"
    run.mkdir()
    (run / "tokenizer.json").write_bytes((md_run / "tokenizer.json").read_bytes())
    assert summary(slm("train", str(write(folder, TINY_AR)), "--out", str(run), "--no-progress"))["steps"] == 8
    return run


def test_checkpoint_records_masked_diffusion(md_run):
    from slmkit.interop.folder import check_model_folder
    from slmkit.tokenizer import load_tokenizer, mask_id

    ckpt = RunDir(md_run).latest_checkpoint()
    assert ckpt.name == "step-000008"
    ours = json.loads((ckpt / "config.json").read_text())["slmkit"]
    assert ours["model_config"]["bidirectional"] is True
    assert ours[METADATA_KEY] == {"mask_token_id": mask_id(load_tokenizer(ckpt)), "answer_len": ANSWER_LEN,
                                  "prompt_format": "ar-code"}
    assert check_model_folder(ckpt) == "masked-diffusion"


def assert_bidirectional_copy(model: nn.Module, ckpt: Path) -> None:
    """`model` holds the checkpoint's weights and attends both ways (a later token changes earlier logits)."""
    assert model.config.bidirectional and not any(block.attn.causal for block in model.layers)
    saved = weights(ckpt)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    a, b = last_token_changed(model.eval())
    assert (a - b).abs().amax() > 0


def test_checkpoint_loads_as_a_bidirectional_model(md_run):
    from slmkit.train.checkpoint import load_model_from_checkpoint

    ckpt = RunDir(md_run).latest_checkpoint()
    assert_bidirectional_copy(load_model_from_checkpoint(ckpt), ckpt)


def test_training_is_finite_and_eval_stage_scores_codefusion_bash(md_run):
    losses = train_losses(md_run)
    assert sorted(losses) == list(range(1, 9)) and all(np.isfinite(v) for v in losses.values())
    vals = [e for e in map(json.loads, (md_run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in e]
    assert [e["step"] for e in vals] == [4, 8] and all(np.isfinite(e["val_loss"]) for e in vals)
    state = json.loads((RunDir(md_run).latest_checkpoint() / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["train_flops"] > 0
    assert state["ranks"][0]["data"] == {"batches": 8, "pretrain_batches": 4}
    results = json.loads((md_run / "eval" / "tasks.json").read_text())
    entry = results["tasks"]["codefusion-bash"]
    assert entry["n"] == 3 and set(entry["metrics"]) >= {"top1", "top3", "top5", "distinct_fraction"}
    assert results["model"]["kind"] == "masked-diffusion" and results["model"]["answer_len"] == ANSWER_LEN
    assert "codefusion-bash" in (md_run / "report.html").read_text()


def test_loader_rows_on_real_data(md_run):
    from slmkit.tokenizer import eos_id, load_tokenizer, pad_id

    recipe = load_recipe(write(md_run.parent, TINY_MD))
    tokenizer = load_tokenizer(md_run / "tokenizer.json")
    objective = get_objective(recipe.task, recipe)
    loader = objective.train_loader(recipe, RunDir(md_run), tokenizer, 4, seed=3)
    stage1 = [loader.next_batch() for _ in range(4)]
    stage2 = loader.next_batch()
    assert objective.mask_token == load_tokenizer(md_run / "tokenizer.json").token_to_id("<|mask|>")
    for batch in stage1:  # code + EOS, all maskable, at most answer_len tokens
        assert torch.equal(batch["maskable"], batch["attention_mask"].bool())
        assert batch["input_ids"].shape[1] <= ANSWER_LEN
        ends = batch["maskable"].sum(1) - 1
        assert (batch["input_ids"].gather(1, ends[:, None]) == eos_id(tokenizer)).all()
        assert (batch["input_ids"][~batch["maskable"]] == pad_id(tokenizer)).all()
    sep = tokenizer.token_to_id("<|assistant|>")
    assert stage2["input_ids"].shape[1] <= 16 + 1 + ANSWER_LEN
    for ids, maskable in zip(stage2["input_ids"].tolist(), stage2["maskable"].tolist()):
        start = maskable.index(True)
        assert sum(maskable) == ANSWER_LEN and ids[start - 1] == sep and sep not in ids[:start - 1]
        assert ids[start + ANSWER_LEN - 1] == eos_id(tokenizer)
    assert objective.answer_len() == ANSWER_LEN


def test_masked_resume_after_sigkill_is_exact(tmp_path, md_run):
    from train_utils import assert_resume_after_sigkill_is_exact

    assert_resume_after_sigkill_is_exact(write(tmp_path, TINY_MD), md_run, tmp_path)  # killed in stage 2


def test_init_from_a_causal_checkpoint_becomes_bidirectional(md_run, ar_run):
    from slmkit.tokenizer import load_tokenizer

    ar_ckpt = RunDir(ar_run).latest_checkpoint()
    recipe = load_recipe(write(md_run.parent, TINY_MD), [f"train.init_from={ar_ckpt}"])
    assert_bidirectional_copy(get_objective(recipe.task, recipe).build_model(recipe, load_tokenizer(ar_ckpt)), ar_ckpt)


def test_masked_lm_interface(md_run):
    from slmkit.eval.lm import CandidateRequest
    from slmkit.eval.masked_lm import load_masked_lm, masked_metadata, masked_sampling_for
    from slmkit.objectives.ar_code import ar_prompt

    ckpt = RunDir(md_run).latest_checkpoint()
    assert masked_metadata(ckpt)["answer_len"] == ANSWER_LEN
    assert masked_sampling_for(ckpt, None, None, None, None) == MaskedSampling(length=ANSWER_LEN, steps=ANSWER_LEN)
    with pytest.raises(SlmError, match="--block-size 5 must divide --length 16"):
        masked_sampling_for(ckpt, 16, None, 5, None)
    lm = load_masked_lm(ckpt, device="cpu")
    assert lm.answer_len == ANSWER_LEN and lm.describe()["kind"] == "masked-diffusion"
    with pytest.raises(SlmError, match="cannot answer loglikelihood"):
        lm.loglikelihood([("a", "b")])
    request = CandidateRequest(prompt=ar_prompt("find txt files"), source="find txt files", k=4, steps=4,
                               intermediate_every=2)
    [result] = lm.candidates([request])
    assert sum(result.counts) == 4 and result.scores == sorted(result.scores, reverse=True)
    assert [s["step"] for s in result.intermediate] == [2, 4]
    with pytest.raises(SlmError, match="beam"):
        lm.candidates([CandidateRequest(prompt="x", source="x", method="beam")])


# ---------------------------------------------------------------------------- CLI


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_candidates_cli(md_run, capsys):
    code, out, err = cli(capsys, "generate", md_run, "--prompt", "find txt files", "--num-candidates", "4",
                         "--steps", "8", "--json")
    assert code == 0, err[-2000:]
    [entry] = json.loads(out)
    cands = entry["candidates"]
    assert entry["prompt"] == "find txt files" and 1 <= len(cands) <= 4 and sum(c["count"] for c in cands) == 4
    assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
    code, out, err = cli(capsys, "generate", md_run, "--prompt", "list files", "--num-candidates", "2",
                         "--length", "8", "--block-size", "4", "--steps", "4", "--intermediate-every", "2", "--json")
    assert code == 0, err[-2000:]
    assert [s["step"] for s in json.loads(out)[0]["intermediate"]] == [2, 4]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--steps", "18"], f"--steps must be in [1, --length={ANSWER_LEN}]"),
    (["--length", "100"], "--length 100 exceeds the model context of 64 tokens; use --length <= 64"),
    (["--length", "63"], "plus --length 63 exceeds the model context of 64 tokens"),
    (["--length", "16", "--block-size", "5"], "--block-size 5 must divide --length 16"),
    (["--length", "16", "--block-size", "4", "--steps", "2"], "--steps 2 is fewer than the 4 blocks"),
    (["--clamp"], "--clamp is a CodeFusion option"),
    (["--candidate-method", "beam"], "--candidate-method beam is for decoders"),
    (["--num-candidates", "0"], "--num-candidates must be in [1, 256]"),
])
def test_generate_bad_input(md_run, capsys, args, message):
    code, _, err = cli(capsys, "generate", md_run, "--prompt", "find all txt files", *args)
    assert code == 2 and message in err, err[-1000:]
    assert err.strip().splitlines()[-1].startswith("error: ") and len(err.strip().splitlines()[-1]) < 300


@pytest.mark.parametrize("args, message", [
    (["--length", "8"], "--length is a masked-diffusion option"),
    (["--block-size", "4"], "--block-size is a masked-diffusion option"),
])
def test_decoder_refuses_masked_options(ar_run, capsys, args, message):
    code, _, err = cli(capsys, "generate", ar_run, "--prompt", "find all txt files", *args)
    assert code == 2 and message in err and "is a decoder checkpoint" in err, err[-1000:]


def test_eval_compare_with_steps_sweep(tmp_path, md_run, ar_run, capsys):
    out = tmp_path / "cmp"
    code, table, err = cli(capsys, "eval", md_run, ar_run, "--tasks", "codefusion-bash", "--limit", "2", "--compare",
                           "--steps-sweep", "2,4", "--out", out, "--no-progress")
    assert code == 0, err[-2000:]
    md = Path(f"{out}.md").read_text()
    assert "top5 @ 4 steps" in md and "top5 @ 2 steps" in md and "top5 @ 4 steps" in table
    assert "run/step-000008" in md and md.count("| codefusion-bash | top1 | 2 |") == 1
    assert Path(f"{out}.sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads(out.read_text())
    assert [p["steps"] for p in results["steps_sweep"]["codefusion-bash"]] == [2, 4]
    assert results["model"]["kind"] == "masked-diffusion"


def test_eval_diffusion_options_apply_to_the_compared_models_of_their_kind(md_run, ar_run, capsys):
    """A decoder TARGET compared with a masked model: --steps/--length go to the masked model only."""
    code, table, err = cli(capsys, "eval", ar_run, md_run, "--tasks", "codefusion-bash", "--limit", "2", "--compare",
                           "--steps", "4", "--length", "12", "--no-progress")
    assert code == 0, err[-2000:]
    assert table.count("| codefusion-bash | top1 | 2 |") == 1
    code, _, err = cli(capsys, "eval", ar_run, ar_run, "--tasks", "codefusion-bash", "--limit", "2", "--compare",
                       "--length", "12")
    assert code == 2 and "--length is a masked-diffusion option; no model given is one" in err


@pytest.mark.parametrize("args, message", [
    ([], "several TARGETs need --compare"),
    (["--compare", "--steps-sweep", "2,40"], "--steps must be in [1, --length=17]"),
    (["--compare", "--length", "16", "--block-size", "5"], "--block-size 5 must divide --length 16"),
])
def test_eval_bad_input(md_run, ar_run, capsys, args, message):
    code, _, err = cli(capsys, "eval", md_run, ar_run, "--tasks", "codefusion-bash", "--limit", "2", *args)
    assert code == 2 and message in err, err[-1000:]
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- training: pretraining form


def test_pretraining_form_reports_an_elbo_bpb(tmp_path, capsys):
    from slmkit.interop.folder import check_model_folder

    data = json.loads(json.dumps(TINY_RECIPE))
    data.update(name="tiny-md-pretrain", task="masked-diffusion", stages=["tokenizer", "data", "train", "eval"])
    data["train"].update(max_steps=10, eval_every=5, save_every=5)
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")
    run = tmp_path / "run"
    result = slm("run", str(path), "--out", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    val = json.loads((run / "eval" / "val.json").read_text())
    assert val["task"] == "masked-diffusion" and val["step"] == 10
    assert val["model"]["bound"] == "elbo" and "bound" not in val["unigram"]
    assert math.isfinite(val["model"]["bpb"]) and val["model"]["bpb"] > 0 and val["model"]["tokens"] > 0
    entries = [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in e]
    assert [e["step"] for e in entries] == [5, 10] and all(math.isfinite(e["val_bpb"]) for e in entries)
    # the same validation batches and the fixed masking seed: the eval stage repeats the trainer's number
    assert val["model"]["loss"] == pytest.approx(entries[-1]["val_loss"], rel=1e-6)
    assert all(math.isfinite(v) for v in train_losses(run).values())
    ckpt = RunDir(run).latest_checkpoint()
    assert check_model_folder(ckpt) == "masked-diffusion"
    assert json.loads((ckpt / "config.json").read_text())["slmkit"][METADATA_KEY]["prompt_format"] is None
    code, out, err = cli(capsys, "generate", run, "--prompt", "def", "--num-candidates", "2", "--length", "8",
                         "--steps", "4", "--json")
    assert code == 0, err[-2000:]
    assert sum(c["count"] for c in json.loads(out)[0]["candidates"]) == 2


# ---------------------------------------------------------------------------- distributed


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_masked_trains_distributed(tmp_path, md_run, parallel):
    """torchrun, 2 processes (gloo): both stages train; the checkpoint is a finite bidirectional model."""
    from train_utils import slm_train

    from slmkit.interop.folder import check_model_folder
    from slmkit.train.checkpoint import load_model_from_checkpoint

    recipe = write(tmp_path, TINY_MD)
    run = tmp_path / "run"
    run.mkdir()
    (run / "tokenizer.json").write_bytes((md_run / "tokenizer.json").read_bytes())
    s = summary(slm_train(recipe, run, "train.batch_size=2", f"train.parallel={parallel}", nproc=2))
    assert s["steps"] == 8 and np.isfinite(s["loss"]) and np.isfinite(s["val_loss"])
    state = json.loads((RunDir(run).latest_checkpoint() / "trainer_state.json").read_text())
    assert [r["data"]["batches"] for r in state["ranks"]] == [8, 8]
    assert check_model_folder(RunDir(run).latest_checkpoint()) == "masked-diffusion"
    model = load_model_from_checkpoint(run)
    assert model.config.bidirectional and all(torch.isfinite(p).all() for p in model.parameters())
