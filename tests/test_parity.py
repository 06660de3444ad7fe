"""Exact parity with HF transformers: ours -> HF folder -> transformers, and back; greedy decoding."""

from __future__ import annotations

import pytest
import torch

from slmkit.generate import SamplingConfig, generate_tokens
from slmkit.interop.hf import load_hf_folder, save_hf_folder
from slmkit.models import build_model, get_preset

transformers = pytest.importorskip("transformers")

VOCAB = 512
CASES = {
    "tiny-llama": ("tiny-llama", {}),
    "tiny-llama-gqa": ("tiny-llama", {"n_kv_heads": 2}),
    "tiny-phi": ("tiny-phi", {}),
}
TOL = 1e-4


def small_config(preset: str, **overrides):
    """The preset's block style at test size: 2 layers, vocab 512 (full width keeps the shapes honest)."""
    return get_preset(preset).replace(n_layers=2, vocab_size=VOCAB, max_seq_len=256, **overrides)


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=gen)


def load_transformers(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(params=list(CASES), scope="module")
def ours_and_hf(request, tmp_path_factory):
    """Our random-weight model, saved as an HF folder, loaded in transformers."""
    preset, overrides = CASES[request.param]
    torch.manual_seed(123)
    ours = build_model(small_config(preset, **overrides)).eval()
    folder = tmp_path_factory.mktemp(request.param)
    save_hf_folder(ours, folder)
    return ours, load_transformers(folder)


def test_parity_ours_to_transformers_logits(ours_and_hf):
    ours, hf = ours_and_hf
    ids = random_ids(2, 48)
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= TOL, diff
    assert sum(p.numel() for p in hf.parameters()) == ours.num_params()


def test_parity_padded_batch_logits(ours_and_hf):
    """Left padding with an attention mask gives HF's logits at every real position."""
    ours, hf = ours_and_hf
    ids = random_ids(2, 20, seed=1)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = hf(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (a[real] - b[real]).abs().max().item() <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_parity_transformers_to_ours(case, tmp_path):
    """A folder written by transformers (save_pretrained) loads into our Decoder with equal logits."""
    preset, overrides = CASES[case]
    ours_cfg = small_config(preset, **overrides)
    from slmkit.interop.hf import config_to_hf

    hf_cfg = transformers.AutoConfig.for_model(**config_to_hf(ours_cfg))
    torch.manual_seed(7)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():  # HF zero-inits biases and unit-inits norms: randomise them so they count
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    ours = load_hf_folder(tmp_path)
    assert ours.config.family == ours_cfg.family
    ids = random_ids(2, 40, seed=2)
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= TOL, diff


def test_parity_greedy_64_tokens(ours_and_hf):
    """Greedy decoding with our static KV cache equals transformers' generate, token for token."""
    ours, hf = ours_and_hf
    prompt = random_ids(1, 12, seed=3)
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, min_new_tokens=64,
                      do_sample=False, pad_token_id=0, eos_token_id=None)
    expected = ref[0, prompt.shape[1]:].tolist()
    got = generate_tokens(ours, [prompt[0].tolist()], 64, SamplingConfig(temperature=0.0))[0]
    assert got == expected


def test_parity_batched_greedy_equals_unbatched(ours_and_hf):
    ours, _ = ours_and_hf
    prompts = [random_ids(1, n, seed=10 + n)[0].tolist() for n in (5, 17, 11)]
    greedy = SamplingConfig(temperature=0.0)
    alone = [generate_tokens(ours, [p], 24, greedy)[0] for p in prompts]
    together = generate_tokens(ours, prompts, 24, greedy)
    assert together == alone


def test_parity_folder_roundtrip_is_exact(ours_and_hf, tmp_path):
    ours, _ = ours_and_hf
    save_hf_folder(ours, tmp_path)
    again = load_hf_folder(tmp_path)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
