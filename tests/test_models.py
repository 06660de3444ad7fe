"""ModelConfig, presets, the Decoder (loss, cache, dtypes, checkpointing) and HF folder edge cases."""

from __future__ import annotations

import json

import pytest
import torch

from slmkit.config import ModelRecipe
from slmkit.errors import SlmError
from slmkit.interop.hf import config_from_hf, config_to_hf, load_hf_folder, save_hf_folder
from slmkit.models import PRESETS, build_model, get_preset, resolve_model_config
from slmkit.models.accounting import count_params, flops_per_token, memory_bytes

PUBLISHED = {"phi-1_5": 1_418_270_720, "llama-7b": 6_738_415_616}  # HF parameter counts, docs/REFERENCE.md


def tiny(preset: str = "tiny-llama", **overrides):
    return get_preset(preset).replace(n_layers=2, vocab_size=256, max_seq_len=64, **overrides)


# ---------------------------------------------------------------------------- config and presets


def test_derived_sizes_follow_the_papers():
    """Head, FFN and rotary sizes the papers' shapes and rules give (docs/REFERENCE.md)."""
    cfg = get_preset("llama-7b")
    assert (cfg.head_dim, cfg.kv_heads, cfg.ffn_hidden, cfg.rotary_dim) == (128, 32, 11008, 128)
    assert get_preset("llama-13b").ffn_hidden == 13824
    assert get_preset("llama-33b").ffn_hidden == 17920
    assert get_preset("llama-65b").ffn_hidden == 22016
    phi = get_preset("phi-1_5")
    assert (phi.head_dim, phi.rotary_dim, phi.ffn_hidden) == (64, 32, 8192)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_param_counts_are_exact(name):
    assert count_params(get_preset(name)) == PUBLISHED[name]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_transformers_counts_the_same_on_meta(name):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.AutoConfig.for_model(**config_to_hf(get_preset(name)))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    assert sum(p.numel() for p in hf.parameters()) == PUBLISHED[name]


def test_tiny_presets_are_small():
    for name in ("tiny-llama", "tiny-phi"):
        assert 10e6 <= count_params(get_preset(name)) <= 20e6


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(SlmError, match="did you mean 'llama-7b'"):
        get_preset("llama-7")
    with pytest.raises(SlmError, match="did you mean 'phi-1_5'"):
        get_preset("phi-1.5")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"n_heads": 5}, "divisible"),
        ({"n_kv_heads": 4}, "n_kv_heads"),
        ({"norm": "rms"}, "did you mean 'rmsnorm'"),
        ({"rotary_fraction": 0.3}, "rotary"),
        ({"n_layer": 3}, "did you mean 'n_layers'"),
    ],
)
def test_invalid_configs_name_the_key(changes, match):
    with pytest.raises(SlmError, match=match):
        get_preset("tiny-llama").replace(**changes)


def test_resolve_model_config_takes_vocab_from_tokenizer():
    cfg = resolve_model_config(ModelRecipe(preset="tiny-phi", overrides={"n_layers": 3}), vocab_size=1000)
    assert (cfg.family, cfg.n_layers, cfg.vocab_size) == ("phi", 3, 1000)
    with pytest.raises(SlmError, match="smaller than the tokenizer"):
        resolve_model_config(ModelRecipe(overrides={"vocab_size": 500}), vocab_size=1000)
    with pytest.raises(SlmError, match="unknown model preset"):
        resolve_model_config(ModelRecipe(preset="tiny-lama"))


def test_flops_and_memory_follow_6n():
    cfg = get_preset("llama-7b")
    n_matmul = count_params(cfg) - cfg.vocab_size * cfg.d_model
    attention = 12 * cfg.n_layers * cfg.d_model * 2048
    assert flops_per_token(cfg, 2048, training=True) == 6 * n_matmul + attention
    assert flops_per_token(cfg, 2048, training=True) == 3 * flops_per_token(cfg, 2048)
    mem = memory_bytes(cfg)
    assert mem["fp32"]["weights"] == 4 * PUBLISHED["llama-7b"]
    assert mem["bf16"]["weights"] == 2 * PUBLISHED["llama-7b"]
    assert mem["fp32"]["total_training"] == 16 * PUBLISHED["llama-7b"]


# ---------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-phi"])
def test_loss_at_init_is_near_uniform_and_ignores_minus_100(preset):
    torch.manual_seed(0)
    model = build_model(tiny(preset))
    ids = torch.randint(0, 256, (2, 16))
    labels = ids.clone()
    loss = model.loss({"input_ids": ids, "labels": labels})
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.5
    labels[:, 8:] = -100
    logits = model(ids)
    expected = torch.nn.functional.cross_entropy(logits[:, :8].float().flatten(0, 1), ids[:, :8].flatten())
    assert torch.allclose(model.loss({"input_ids": ids, "labels": labels}), expected, atol=1e-6)


def test_init_is_deterministic_and_meta_build_matches():
    a = build_model(tiny())
    a.init_weights(seed=5)
    b = build_model(tiny(), device="meta")
    b.to_empty(device="cpu")
    b.init_weights(seed=5)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert torch.equal(a.rope_cos, b.rope_cos)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-phi"])
def test_kv_cache_steps_equal_full_forward(preset):
    torch.manual_seed(0)
    model = build_model(tiny(preset, n_kv_heads=2)).eval()
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 32)
        parts = [model(ids[:, :9], kv_cache=cache)]  # prefill
        parts.append(model(ids[:, 9:14], kv_cache=cache, start_pos=9))  # chunk with explicit mask
        parts += [model(ids[:, t : t + 1], kv_cache=cache, start_pos=t) for t in range(14, 20)]
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-5


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = build_model(tiny())
    batch = {"input_ids": torch.randint(0, 256, (2, 16)), "labels": torch.randint(0, 256, (2, 16))}
    model.loss(batch).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_activation_checkpointing(True)
    model.loss(batch).backward()
    for g, p in zip(plain, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_is_close_to_fp32(dtype):
    torch.manual_seed(0)
    model = build_model(tiny("tiny-phi")).eval()
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        ref = model(ids)
        half = build_model(tiny("tiny-phi"), dtype=dtype)
        half.load_state_dict(model.state_dict())
        out = half.eval()(ids)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max().item() < 0.05


def test_tied_embeddings_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny(tie_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    save_hf_folder(model, tmp_path)
    again = load_hf_folder(tmp_path)
    assert again.lm_head.weight.data_ptr() == again.embed.weight.data_ptr()
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), again(ids))


# ---------------------------------------------------------------------------- HF folders: bad input


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(SlmError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM, PhiForCausalLM"):
        load_hf_folder(tmp_path)


def test_missing_tensor_and_missing_folder(tmp_path):
    with pytest.raises(SlmError, match="no config.json"):
        load_hf_folder(tmp_path / "nope")
    model = build_model(tiny())
    save_hf_folder(model, tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    state.pop("model.norm.weight")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(SlmError, match="model.norm.weight"):
        load_hf_folder(tmp_path)


def test_config_roundtrip_through_hf_dict():
    for name in PRESETS:
        cfg = get_preset(name)
        back = config_from_hf(config_to_hf(cfg))
        for key in ("family", "vocab_size", "d_model", "n_layers", "n_heads", "kv_heads", "ffn_hidden",
                    "norm", "mlp", "parallel_block", "rotary_dim", "bias", "lm_head_bias", "max_seq_len"):
            assert getattr(back, key) == getattr(cfg, key), (name, key)


@pytest.mark.slow
def test_torch_compile_is_opt_in_and_equal():
    """model.compile() (torch.compile, inductor on CPU) gives the same loss and trains (~1 min on 2 cores)."""
    torch.manual_seed(0)
    model = build_model(tiny(d_model=64, n_heads=2))
    ids = torch.randint(0, 256, (2, 16))
    batch = {"input_ids": ids, "labels": ids}
    ref = model.loss(batch).item()
    model.compile()
    loss = model.loss(batch)
    loss.backward()
    assert abs(loss.item() - ref) < 1e-5
    assert model.embed.weight.grad is not None
