"""HF transformers folders: every checkpoint we write loads in `AutoModelForCausalLM`, and a local
LlamaForCausalLM / PhiForCausalLM folder loads into our Decoder.

A folder holds config.json, model.safetensors, generation_config.json and, when a tokenizer is
given, tokenizer.json + tokenizer_config.json + special_tokens_map.json.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_bytes, atomic_write_json, new_file_mode, temp_file
from slmkit.models.config import ModelConfig
from slmkit.tokenizer import HF_CONFIG_FILE, HF_SPECIAL_MAP_FILE, TOKENIZER_FILE, load_tokenizer, special_token_ids

if TYPE_CHECKING:
    import torch

    from slmkit.models.decoder import Decoder

# What a model folder holds beside config.json and the weights; exports and quantized copies carry them.
COMPANION_FILES = ("generation_config.json", TOKENIZER_FILE, HF_CONFIG_FILE, HF_SPECIAL_MAP_FILE)

ARCHITECTURES = {"LlamaForCausalLM": "llama", "PhiForCausalLM": "phi"}
FAMILY_ARCH = {family: arch for arch, family in ARCHITECTURES.items()}

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


_HF_REQUIRED_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_HF_TYPES: dict[str, tuple[str, bool]] = {  # key -> (kind, null allowed), checked when the key is present
    "architectures": ("list", True), "model_type": ("str", True), "hidden_act": ("str", False),
    "rope_parameters": ("dict", True), "rope_scaling": ("dict", True),
    "head_dim": ("int", True), "num_key_value_heads": ("int", True), "max_position_embeddings": ("int", False),
    "rope_theta": ("number", True), "resid_pdrop": ("number", True), "initializer_range": ("number", False),
    "rms_norm_eps": ("number", False), "layer_norm_eps": ("number", False), "partial_rotary_factor": ("number", False),
    "tie_word_embeddings": ("bool", True), "attention_bias": ("bool", True), "mlp_bias": ("bool", True),
    "qk_layernorm": ("bool", True),
    **{key: ("int", False) for key in _HF_REQUIRED_INTS},
}
_ROPE_TYPES = {"rope_type": ("str", False), "type": ("str", False), "rope_theta": ("number", False),
               "partial_rotary_factor": ("number", False)}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, {"str": str, "dict": dict, "bool": bool}[kind])


def _check_hf_types(hf: Any, source: str) -> None:
    """SlmError naming `source` and the key when config.json is not an object or a key has a bad type."""
    want = {"int": "an integer >= 1", "number": "a finite number", "list": "a list of strings", "str": "a string",
            "dict": "an object", "bool": "true or false"}
    if not isinstance(hf, dict):
        raise SlmError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    checks = [(key, hf[key], *_HF_TYPES[key]) for key in _HF_TYPES if key in hf]
    for key in ("rope_parameters", "rope_scaling"):
        if isinstance(hf.get(key), dict):
            checks += [(f"{key}.{k}", hf[key][k], *_ROPE_TYPES[k]) for k in _ROPE_TYPES if k in hf[key]]
    for key, value, kind, nullable in checks:
        if not (value is None and nullable) and not _type_ok(value, kind):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise SlmError(f"{source}: key {key!r} must be {want[kind]}, got {shown}")


def _validated(cfg: ModelConfig, source: str) -> ModelConfig:
    try:
        return cfg.validate()
    except SlmError as exc:
        raise SlmError(f"{source}: {exc}") from None


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from an HF config.json mapping (written by us or by transformers)."""
    _check_hf_types(hf, source)
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        by_type = {"llama": "LlamaForCausalLM", "phi": "PhiForCausalLM"}
        arch = by_type.get(hf.get("model_type", "")) if not archs else None
    if arch is None:
        name = ", ".join(archs) or f"model_type {hf.get('model_type')!r}"
        raise SlmError(f"{source}: unsupported architecture {name}; supported: {', '.join(ARCHITECTURES)}")
    family = ARCHITECTURES[arch]
    ours = hf.get("slmkit") if isinstance(hf.get("slmkit"), dict) else {}
    bidirectional = (ours.get("model_config") or {}).get("bidirectional", False) is True
    missing = [key for key in _HF_REQUIRED_INTS if key not in hf]
    if missing:
        raise SlmError(f"{source}: missing key(s) {', '.join(missing)}; not a complete model config")
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
        bidirectional=bidirectional,  # slmkit's masked-diffusion denoiser (transformers would run it causally)
    )
    if family == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise SlmError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported for llama (needs 'silu')")
        if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
            raise SlmError(f"{source}: attention_bias and mlp_bias must be equal")
        return _validated(ModelConfig(
            **common, norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", parallel_block=False,
            rotary_fraction=1.0, bias=bool(hf.get("attention_bias", False)), lm_head_bias=False,
        ), source)
    if hf.get("qk_layernorm"):
        raise SlmError(f"{source}: phi with qk_layernorm is not supported")
    if hf.get("hidden_act", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise SlmError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported for phi (needs 'gelu_new')")
    fraction = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
    return _validated(ModelConfig(
        **common, norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5), mlp="gelu", parallel_block=True,
        rotary_fraction=float(fraction), bias=True, lm_head_bias=not common["tie_embeddings"],
        dropout=float(hf.get("resid_pdrop", 0.0) or 0.0),
    ), source)


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

    layers = {int(key.split(".")[2]) for key in hf_state if re.match(r"model\.layers\.\d+\.", key)}
    if cfg.n_layers - 1 not in layers or max(layers) >= cfg.n_layers:  # before building a huge template
        found = f"tensors for layers 0..{max(layers)}" if layers else "no model.layers.* tensors"
        raise SlmError(f"{source}: config.json says {cfg.n_layers} layer(s) but the weights have {found}; "
                       "the folder does not match its config.json")
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
            parts = [take(f"{prefix}{part}.{leaf}") for part in target]
            if len({p.shape[1:] for p in parts}) > 1 or any(p.dim() == 0 for p in parts):
                shapes = ", ".join(f"{prefix}{part}.{leaf} {tuple(p.shape)}" for part, p in zip(target, parts))
                raise SlmError(f"{source}: tensors of mismatched shapes: {shapes}")
            out[key] = torch.cat(parts, dim=0)
        else:
            out[key] = take(f"{prefix}{target}.{leaf}")
    bad = [f"{key} {tuple(out[key].shape)} (needs {tuple(t.shape)})" for key, t in template.items()
           if out[key].shape != t.shape]
    if bad:
        raise SlmError(f"{source}: tensor shapes do not match config.json: {'; '.join(bad[:3])}"
                       + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
    return out


# ---------------------------------------------------------------------------- folders


def _write_tokenizer(folder: Path, tok: Any, tokenizer_file: Path, max_len: int, chat_template: str | None,
                     specials: dict[str, str] | None = None) -> None:
    from slmkit.tokenizer import TOKENIZER_FILE, write_hf_config

    atomic_write_bytes(folder / TOKENIZER_FILE, tokenizer_file.read_bytes())
    write_hf_config(folder, tok, model_max_length=max_len, chat_template=chat_template, specials=specials)


def save_hf_folder(
    model: Decoder,
    folder: str | Path,
    tokenizer_file: Path | None = None,
    chat_template: str | None = None,
    extra_files: dict[str, str | bytes] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    special_tokens: dict[str, str] | None = None,
    token_ids: dict[str, Any] | None = None,
    generation_ids: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as an HF folder that AutoModelForCausalLM.from_pretrained loads offline.

    Each file is written atomically; other files already in `folder` are left alone (the trainer
    adds optimizer.pt / trainer_state.json beside). `state_dict` overrides model.state_dict()
    (e.g. a full state dict gathered from FSDP). extra_files: name -> text or bytes.
    special_tokens: explicit bos/eos/unk/pad token names for tokenizer_config.json (default: the
    tokenizer's own heuristics). token_ids: bos_token_id/eos_token_id/pad_token_id for config.json and
    generation_config.json (default: from the tokenizer); generation_ids overrides them in
    generation_config.json only (e.g. a list of eos ids, as HF allows). metadata: what the training
    objective records beside the weights (config.json "slmkit", e.g. masked diffusion's answer length).
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
    fd, tmp = temp_file(folder, "model.safetensors")
    os.close(fd)
    try:
        save_file(hf_state, tmp, metadata={"format": "pt"})
        os.chmod(tmp, new_file_mode())  # safetensors recreates the file 0600
        os.replace(tmp, folder / "model.safetensors")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    tok = load_tokenizer(tokenizer_file) if tokenizer_file is not None else None
    ids = special_token_ids(tok) if tok is not None else dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"))
    if token_ids is not None:
        ids = {**ids, **token_ids}
    gen_ids = {**ids, **(generation_ids or {})}
    hf_config = {**config_to_hf(cfg), **ids, "dtype": str(dtype).removeprefix("torch.")}
    hf_config["slmkit"] = {"model_config": cfg.to_dict(), **(metadata or {})}
    atomic_write_json(folder / "config.json", hf_config)
    atomic_write_json(folder / "generation_config.json", {k: v for k, v in gen_ids.items() if v is not None})
    if tokenizer_file is not None:
        _write_tokenizer(folder, tok, tokenizer_file, cfg.max_seq_len, chat_template, special_tokens)
    for name, content in (extra_files or {}).items():
        atomic_write_bytes(folder / name, content if isinstance(content, bytes) else content.encode("utf-8"))
    return folder


def read_config_json(folder: str | Path) -> Any:
    """The parsed config.json of a model folder; SlmError when missing, unreadable or malformed."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise SlmError(f"{folder}: not a model folder (no config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SlmError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise SlmError(f"{path}: cannot read it as UTF-8 text ({exc})") from None


def read_hf_config(folder: str | Path) -> ModelConfig:
    """The ModelConfig of an HF folder (from its config.json)."""
    path = Path(folder) / "config.json"
    hf = read_config_json(folder)
    try:
        return config_from_hf(hf, source=str(path))
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:  # a case the checks missed
        raise SlmError(f"{path}: not a usable model config ({type(exc).__name__}: {exc})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """load_file, with SlmError naming the file when it is truncated, garbage or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())
        raise SlmError(f"{path}: not a readable safetensors file ({reason}); the checkpoint is damaged "
                       "or incomplete") from None


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    single = folder / "model.safetensors"
    if single.is_file():
        return _load_safetensors(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            if not all(isinstance(name, str) for name in files):
                raise TypeError("shard names must be strings")
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            raise SlmError(f"{index}: not a valid safetensors index ({type(exc).__name__}: {exc})") from None
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(_load_safetensors(folder / name))
        return state
    raise SlmError(f"{folder}: no model.safetensors (or sharded index); .bin checkpoints are not supported")


def load_hf_folder(
    folder: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Decoder:
    """Load a local HF folder (LlamaForCausalLM or PhiForCausalLM) into our Decoder, in eval mode.

    dtype None keeps fp32 (the safe default for CPU); weights are cast on load.
    """

    from slmkit.interop.quantized_folder import load_quantized_decoder, quantization_spec
    from slmkit.models.decoder import Decoder

    folder = Path(folder)
    config = read_config_json(folder)
    if quantization_spec(config) is not None:  # `slm quantize` output: our names, int8/int4 layers
        return load_quantized_decoder(folder, config, device=device, dtype=dtype)
    cfg = read_hf_config(folder)
    state = state_dict_from_hf(_read_weights(folder), cfg, source=str(folder))
    model = materialize(lambda: Decoder(cfg), state, folder, device, dtype)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.reset_rope()
    return model.eval()


def materialize(build: Any, state: dict[str, torch.Tensor], folder: Path, device: torch.device | str | None,
                dtype: torch.dtype | None) -> Any:
    """`build()` on the meta device, allocated on `device` in `dtype` (default fp32), holding `state`
    (strict: SlmError naming the folder when a tensor is missing, unexpected or mis-shaped)."""
    import torch

    with torch.device("meta"):
        model = build()
    model.to_empty(device=device or "cpu")
    model.to(dtype=dtype or torch.float32)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing / unexpected / mis-shaped tensors; several lines from torch
        raise SlmError(f"{folder}: weights do not fit config.json ({' '.join(str(exc).split())})") from None
    return model


def model_special_ids(folder: Path, tokenizer: Any) -> tuple[int | None, list[int]]:
    """(prefix/bos id, eos ids) from config.json / generation_config.json, else the end-of-text token."""
    from slmkit.tokenizer import EOT

    folder = Path(folder)
    ids: dict[str, Any] = {}
    for name in ("config.json", "generation_config.json"):
        try:
            saved = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict):
            ids.update({k: v for k, v in saved.items() if k in ("bos_token_id", "eos_token_id") and v is not None})
    eos = ids.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else [e for e in (eos or []) if isinstance(e, int)]
    if not eos_ids and tokenizer.token_to_id(EOT) is not None:
        eos_ids = [tokenizer.token_to_id(EOT)]
    bos = ids.get("bos_token_id")
    return (bos if isinstance(bos, int) else (eos_ids[0] if eos_ids else None)), eos_ids
