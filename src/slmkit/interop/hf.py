"""HF transformers folders: every checkpoint we write loads in `AutoModelForCausalLM`, and a local
LlamaForCausalLM / PhiForCausalLM folder loads into our Decoder.

A folder holds config.json, model.safetensors, generation_config.json and, when a tokenizer is
given, tokenizer.json + tokenizer_config.json + special_tokens_map.json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json, atomic_write_text
from slmkit.models.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from slmkit.models.decoder import Decoder

ARCHITECTURES = {"LlamaForCausalLM": "llama", "PhiForCausalLM": "phi"}
FAMILY_ARCH = {family: arch for arch, family in ARCHITECTURES.items()}
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"

# Our per-block parameter names -> HF's (under model.layers.{i}.). Fused projections map to a list
# of HF tensors concatenated along dim 0.
_BLOCK_NAMES: dict[str, dict[str, str | list[str]]] = {
    "llama": {
        "attn_norm": "input_layernorm",
        "attn.qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "attn.o_proj": "self_attn.o_proj",
        "mlp_norm": "post_attention_layernorm",
        "mlp.gate_up": ["mlp.gate_proj", "mlp.up_proj"],
        "mlp.down": "mlp.down_proj",
    },
    "phi": {
        "attn_norm": "input_layernorm",
        "attn.qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "attn.o_proj": "self_attn.dense",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    },
}
_TOP_NAMES = {
    "llama": {"embed": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"},
    "phi": {"embed": "model.embed_tokens", "norm": "model.final_layernorm", "lm_head": "lm_head"},
}


# ---------------------------------------------------------------------------- config


def _check_family_shape(cfg: ModelConfig) -> None:
    """Refuse configs that the family's HF class cannot express."""
    want = {
        "llama": dict(norm="rmsnorm", mlp="swiglu", parallel_block=False, rotary_fraction=1.0, lm_head_bias=False),
        "phi": dict(norm="layernorm", mlp="gelu", parallel_block=True, bias=True),
    }[cfg.family]
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.family == "phi" and cfg.lm_head_bias == cfg.tie_embeddings:
        bad.append("phi needs an lm_head bias and untied embeddings")
    if bad:
        raise SlmError(f"model family {cfg.family!r} cannot be saved as {FAMILY_ARCH[cfg.family]}: {', '.join(bad)}")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """config.json content for LlamaForCausalLM (family llama) or PhiForCausalLM (family phi)."""
    _check_family_shape(cfg)
    common: dict[str, Any] = {
        "architectures": [FAMILY_ARCH[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if cfg.family == "llama":
        return {
            **common,
            "hidden_act": "silu",
            "rms_norm_eps": cfg.norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "head_dim": cfg.head_dim,
        }
    return {
        **common,
        "hidden_act": "gelu_new",
        "layer_norm_eps": cfg.norm_eps,
        "partial_rotary_factor": cfg.rotary_fraction,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": cfg.rope_theta,
            "partial_rotary_factor": cfg.rotary_fraction,
        },
        "qk_layernorm": False,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
    }


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from an HF config.json mapping (written by us or by transformers)."""
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        by_type = {"llama": "LlamaForCausalLM", "phi": "PhiForCausalLM"}
        arch = by_type.get(hf.get("model_type", "")) if not archs else None
    if arch is None:
        name = ", ".join(archs) or f"model_type {hf.get('model_type')!r}"
        raise SlmError(f"{source}: unsupported architecture {name}; supported: {', '.join(ARCHITECTURES)}")
    family = ARCHITECTURES[arch]
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise SlmError(f"{source}: rope_type {rope_type!r} is not supported (only 'default' rotary embeddings)")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d_model // n_heads
    if head_dim * n_heads != d_model:
        raise SlmError(f"{source}: head_dim {head_dim} * heads {n_heads} != hidden_size {d_model} is not supported")
    common = dict(
        family=family,
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02),
    )
    if family == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise SlmError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported for llama (needs 'silu')")
        if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
            raise SlmError(f"{source}: attention_bias and mlp_bias must be equal")
        return ModelConfig(
            **common, norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", parallel_block=False,
            rotary_fraction=1.0, bias=bool(hf.get("attention_bias", False)), lm_head_bias=False,
        ).validate()
    if hf.get("qk_layernorm"):
        raise SlmError(f"{source}: phi with qk_layernorm is not supported")
    if hf.get("hidden_act", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise SlmError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported for phi (needs 'gelu_new')")
    fraction = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
    return ModelConfig(
        **common, norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5), mlp="gelu", parallel_block=True,
        rotary_fraction=float(fraction), bias=True, lm_head_bias=not common["tie_embeddings"],
        dropout=float(hf.get("resid_pdrop", 0.0) or 0.0),
    ).validate()


# ---------------------------------------------------------------------------- weights


def _split_sizes(cfg: ModelConfig, name: str) -> list[int]:
    if name == "attn.qkv":
        kv = cfg.kv_heads * cfg.head_dim
        return [cfg.n_heads * cfg.head_dim, kv, kv]
    return [cfg.ffn_hidden, cfg.ffn_hidden]


def _parse_key(key: str) -> tuple[int | None, str, str]:
    """'layers.3.attn.qkv.weight' -> (3, 'attn.qkv', 'weight'); 'embed.weight' -> (None, 'embed', 'weight')."""
    stem, leaf = key.rsplit(".", 1)
    if stem.startswith("layers."):
        _, idx, rest = stem.split(".", 2)
        return int(idx), rest, leaf
    return None, stem, leaf


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (and split fused projections of) our state dict into HF's layout; contiguous, unshared."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        layer, name, leaf = _parse_key(key)
        if layer is None:
            if name == "lm_head" and cfg.tie_embeddings and leaf == "weight":
                continue
            out[f"{_TOP_NAMES[cfg.family][name]}.{leaf}"] = tensor.detach().clone().contiguous()
            continue
        target = _BLOCK_NAMES[cfg.family][name]
        prefix = f"model.layers.{layer}."
        if isinstance(target, list):
            for part, piece in zip(target, tensor.detach().split(_split_sizes(cfg, name), dim=0)):
                out[f"{prefix}{part}.{leaf}"] = piece.clone().contiguous()
        else:
            out[f"{prefix}{target}.{leaf}"] = tensor.detach().clone().contiguous()
    return out


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, source: str = "") -> dict[str, torch.Tensor]:
    """Our state dict from HF tensors (fusing q/k/v and gate/up); SlmError naming any missing tensor."""
    import torch

    def take(name: str) -> torch.Tensor:
        if name not in hf_state:
            raise SlmError(f"{source}: tensor {name!r} is missing; the folder does not match its config.json")
        return hf_state[name]

    from slmkit.models.decoder import Decoder

    with torch.device("meta"):
        template = Decoder(cfg).state_dict()
    out: dict[str, torch.Tensor] = {}
    for key in template:
        layer, name, leaf = _parse_key(key)
        if layer is None:
            if name == "lm_head" and cfg.tie_embeddings and leaf == "weight":
                out[key] = take(f"{_TOP_NAMES[cfg.family]['embed']}.{leaf}")
                continue
            out[key] = take(f"{_TOP_NAMES[cfg.family][name]}.{leaf}")
            continue
        target = _BLOCK_NAMES[cfg.family][name]
        prefix = f"model.layers.{layer}."
        if isinstance(target, list):
            out[key] = torch.cat([take(f"{prefix}{part}.{leaf}") for part in target], dim=0)
        else:
            out[key] = take(f"{prefix}{target}.{leaf}")
    return out


# ---------------------------------------------------------------------------- folders


def _special_ids(tokenizer_file: Path | None) -> dict[str, int | None]:
    if tokenizer_file is None:
        return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    eos, pad = tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": pad}


def _write_tokenizer(folder: Path, tokenizer_file: Path, max_len: int, chat_template: str | None) -> None:
    shutil.copyfile(tokenizer_file, folder / ".tokenizer.json.tmp")
    os.replace(folder / ".tokenizer.json.tmp", folder / "tokenizer.json")
    vocab = json.loads(Path(tokenizer_file).read_text(encoding="utf-8")).get("added_tokens", [])
    added = {t["content"] for t in vocab}
    special: dict[str, Any] = {}
    if EOS_TOKEN in added:
        special.update(bos_token=EOS_TOKEN, eos_token=EOS_TOKEN)
    if PAD_TOKEN in added:
        special["pad_token"] = PAD_TOKEN
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    if chat_template:
        tok_config["chat_template"] = chat_template
    atomic_write_json(folder / "tokenizer_config.json", tok_config)
    atomic_write_json(folder / "special_tokens_map.json", special)


def save_hf_folder(
    model: Decoder,
    folder: str | Path,
    tokenizer_file: Path | None = None,
    chat_template: str | None = None,
    extra_files: dict[str, str | bytes] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` as an HF folder that AutoModelForCausalLM.from_pretrained loads offline.

    Each file is written atomically; other files already in `folder` are left alone (the trainer
    adds optimizer.pt / trainer_state.json beside). `state_dict` overrides model.state_dict()
    (e.g. a full state dict gathered from FSDP). extra_files: name -> text or bytes.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    tokenizer_file = Path(tokenizer_file) if tokenizer_file is not None else None
    if tokenizer_file is not None and not tokenizer_file.is_file():
        raise SlmError(f"tokenizer file not found: {tokenizer_file}")
    state = state_dict if state_dict is not None else model.state_dict()
    dtype = next(iter(state.values())).dtype
    hf_state = state_dict_to_hf({k: v.cpu() for k, v in state.items()}, cfg)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.", suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(hf_state, tmp, metadata={"format": "pt"})
        os.replace(tmp, folder / "model.safetensors")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    ids = _special_ids(tokenizer_file)
    hf_config = {**config_to_hf(cfg), **ids, "dtype": str(dtype).removeprefix("torch.")}
    hf_config["slmkit"] = {"model_config": cfg.to_dict()}
    atomic_write_json(folder / "config.json", hf_config)
    atomic_write_json(folder / "generation_config.json", {k: v for k, v in ids.items() if v is not None})
    if tokenizer_file is not None:
        _write_tokenizer(folder, tokenizer_file, cfg.max_seq_len, chat_template)
    for name, content in (extra_files or {}).items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            atomic_write_text(folder / name, content)
    return folder


def read_hf_config(folder: str | Path) -> ModelConfig:
    """The ModelConfig of an HF folder (from its config.json)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise SlmError(f"{folder}: not a model folder (no config.json)")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SlmError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    return config_from_hf(hf, source=str(path))


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load_file(folder / name))
        return state
    raise SlmError(f"{folder}: no model.safetensors (or sharded index); .bin checkpoints are not supported")


def load_hf_folder(
    folder: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Decoder:
    """Load a local HF folder (LlamaForCausalLM or PhiForCausalLM) into our Decoder, in eval mode.

    dtype None keeps fp32 (the safe default for CPU); weights are cast on load.
    """
    import torch

    from slmkit.models.decoder import Decoder

    folder = Path(folder)
    cfg = read_hf_config(folder)
    state = state_dict_from_hf(_read_weights(folder), cfg, source=str(folder))
    with torch.device("meta"):
        model = Decoder(cfg)
    model.to_empty(device=device or "cpu")
    model.to(dtype=dtype or torch.float32)
    model.load_state_dict(state, strict=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.reset_rope()
    return model.eval()
