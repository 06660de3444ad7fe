"""`slm export`: a decoder checkpoint as a GGUF file (llama.cpp, Ollama, LM Studio) or a clean HF folder.

GGUF: written with the `gguf` package's GGUFWriter. The llama family becomes llama.cpp's `llama`
architecture, the phi family `phi2`, with llama.cpp's tensor names, every hyper-parameter key its
loader reads and the full byte-level BPE vocabulary (gguf_vocab.py), so llama.cpp needs nothing else.
llama.cpp's `llama` rotary embedding rotates consecutive pairs where ours (HF's) rotates the two
halves of each head: q/k rows are permuted as llama.cpp's own converter does (`permute_rotary`);
`phi2` uses the half-split (NEOX) rotary like ours and needs no permutation.

Tensor types: 1-D tensors (norms, biases) stay F32; 2-D weights take --dtype. q8_0 and q4_0 are
GGML's block formats (32 values per block), quantized by `gguf.quants`; a weight whose rows are not
a multiple of 32 falls back to F16, as llama.cpp's converter does. With q4_0 the output projection
(or the tied embedding that serves as one) is written Q8_0: llama.cpp's own quantizer also keeps it
at a higher precision (its K-quants, which `gguf` cannot write).

HF: the same folder without the trainer's files (optimizer state, trainer state), weights cast to
f32 / f16 / bf16, for transformers' `from_pretrained`.

Both write into a temporary file / folder beside the output and rename it at the end: a failure
leaves nothing, and an existing output is replaced only with `force`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError, check_choice
from slmkit.interop.folder import check_output_path
from slmkit.pipeline.rundir import TOKENIZER_FILE

if TYPE_CHECKING:
    import numpy as np

    from slmkit.models.config import ModelConfig

FORMATS = ("hf", "gguf")
DTYPES = {"hf": ("f32", "f16", "bf16"), "gguf": ("f32", "f16", "bf16", "q8_0", "q4_0")}
GGUF_ARCH = {"llama": "llama", "phi": "phi2"}
QK = 32  # values per GGML Q8_0 / Q4_0 block

# HF parameter names (without .weight / .bias) -> llama.cpp tensor names, per family.
_TOP = {
    "llama": {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"},
    "phi": {"model.embed_tokens": "token_embd", "model.final_layernorm": "output_norm", "lm_head": "output"},
}
_BLOCK = {
    "llama": {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"},
    "phi": {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.dense": "attn_output", "mlp.fc1": "ffn_up",
            "mlp.fc2": "ffn_down"},
}


def gguf_tensor_name(hf_name: str, family: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'blk.3.attn_q.weight' (llama.cpp's names)."""
    stem, leaf = hf_name.rsplit(".", 1)
    if stem.startswith("model.layers."):
        _, _, index, rest = stem.split(".", 3)
        return f"blk.{index}.{_BLOCK[family][rest]}.{leaf}"
    return f"{_TOP[family][stem]}.{leaf}"


def permute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's half-split rotary rows -> llama.cpp's interleaved pairs (its converter's `LlamaModel.permute`)."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def check_format_dtype(fmt: str, dtype: str) -> None:
    """SlmError for an unknown format, or a dtype the format cannot hold (e.g. hf with q8_0)."""
    check_choice(fmt, FORMATS, "--format")
    if dtype not in DTYPES[fmt]:
        check_choice(dtype, sorted({d for ds in DTYPES.values() for d in ds}), "--dtype")
        other = [f for f in FORMATS if dtype in DTYPES[f]]
        hint = f" ({dtype} is a {'/'.join(other)} type)" if other else ""
        raise SlmError(f"--dtype {dtype} is not available with --format {fmt}{hint}; "
                       f"choose one of: {', '.join(DTYPES[fmt])}")


def _check_source(folder: Path, fmt: str) -> dict[str, Any]:
    """config.json of an exportable decoder folder; SlmError naming what the folder is otherwise."""
    from slmkit.interop.folder import check_model_folder, read_config_json
    from slmkit.interop.quantized_folder import quantization_spec

    if not folder.exists():
        raise SlmError(f"checkpoint not found: {folder}")
    if not folder.is_dir():
        raise SlmError(f"{folder}: not a checkpoint folder (it is a file)")
    kind = check_model_folder(folder)
    config = read_config_json(folder)
    if kind != "decoder":
        what = "CodeFusion" if kind == "codefusion" else "masked-diffusion (bidirectional)"
        target = "llama.cpp runs" if fmt == "gguf" else "transformers' causal LM classes run"
        raise SlmError(f"{folder} is a {what} checkpoint; {target} causal decoders only, so it cannot be "
                       f"exported as {fmt}")
    if quantization_spec(config) is not None:
        raise SlmError(f"{folder} is a quantized checkpoint (slm quantize); export the checkpoint it was made from "
                       "(GGUF has its own q8_0 / q4_0)")
    return config


# ---------------------------------------------------------------------------- GGUF


def _tensor_type(name: str, shape: tuple[int, ...], dtype: str, tied: bool) -> Any:
    """The GGML type of one tensor under --dtype (see the module docstring)."""
    from gguf import GGMLQuantizationType as Q

    if len(shape) == 1:
        return Q.F32
    wanted = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[dtype]
    if wanted == Q.Q4_0 and (name == "output.weight" or (tied and name == "token_embd.weight")):
        wanted = Q.Q8_0
    if wanted in (Q.Q8_0, Q.Q4_0) and shape[-1] % QK:
        return Q.F16
    return wanted


def _encode(array: np.ndarray, qtype: Any) -> np.ndarray:
    """The bytes (or typed array) GGUFWriter.add_tensor stores for `qtype`."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    if qtype == Q.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def gguf_tensors(hf_state: dict[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """llama.cpp-named float32 arrays (q/k rows permuted for the llama family) from HF-named tensors."""
    import numpy as np

    out: dict[str, np.ndarray] = {}
    for hf_name, tensor in hf_state.items():
        array = tensor.detach().float().cpu().numpy()
        name = gguf_tensor_name(hf_name, cfg.family)
        if not np.isfinite(array).all():
            raise SlmError(f"tensor {hf_name} holds NaN or infinite values; the checkpoint is broken, not exported")
        if cfg.family == "llama" and (".attn_q." in name or ".attn_k." in name):
            array = permute_rotary(array, cfg.n_heads if ".attn_q." in name else cfg.kv_heads)
        out[name] = array
    return out


def _add_hparams(writer: Any, cfg: ModelConfig) -> None:
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.ffn_hidden)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.rotary_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.norm == "rmsnorm":
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
    else:
        writer.add_layer_norm_eps(cfg.norm_eps)


def _special_ids(folder: Path, config: dict[str, Any], tok: Any) -> dict[str, int | None]:
    """bos/eos/pad from config.json (eos: the first of a list), unk/mask by name from tokenizer_config.json."""
    from slmkit.tokenizer import read_hf_tokenizer_config

    def first(value: Any) -> int | None:
        if isinstance(value, list):
            value = value[0] if value else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    ids = {role: first(config.get(f"{role}_token_id")) for role in ("bos", "eos", "pad")}
    names = read_hf_tokenizer_config(folder)
    for role in ("unk", "mask"):
        name = names.get(f"{role}_token")
        ids[role] = tok.token_to_id(name) if isinstance(name, str) else None
    return ids


def _model_name(folder: Path) -> str:
    from slmkit.pipeline.rundir import run_of_checkpoint

    run = run_of_checkpoint(folder)
    return run.root.name if run is not None else folder.resolve().name


def export_gguf(folder: str | Path, out: str | Path, dtype: str = "f32", force: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Write the decoder checkpoint `folder` as the GGUF file `out`; returns a summary."""
    import gguf

    from slmkit.interop.gguf_vocab import vocab_from_tokenizer, write_vocab
    from slmkit.interop.hf import load_hf_folder, state_dict_to_hf
    from slmkit.progress import progress_iter
    from slmkit.tokenizer import chat_template_of, load_tokenizer

    folder, out = Path(folder), Path(out)
    check_format_dtype("gguf", dtype)
    config = _check_source(folder, "gguf")
    check_output_path(out, folder, force, folder_output=False)
    if not (folder / TOKENIZER_FILE).is_file():
        raise SlmError(f"{folder}: no {TOKENIZER_FILE}; a GGUF file carries its tokenizer, so the checkpoint needs one")
    model = load_hf_folder(folder)
    cfg = model.config
    tok = load_tokenizer(folder / TOKENIZER_FILE)
    vocab = vocab_from_tokenizer((folder / TOKENIZER_FILE).read_text(encoding="utf-8"), cfg.vocab_size,
                                 _special_ids(folder, config, tok), source=str(folder / TOKENIZER_FILE))
    chat_template = chat_template_of(folder)
    tensors = gguf_tensors(state_dict_to_hf(model.state_dict(), cfg), cfg)
    del model
    arch = GGUF_ARCH[cfg.family]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype]
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    types: dict[str, int] = {}
    fallbacks: list[str] = []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(_model_name(folder))
        writer.add_file_type(file_type)
        if dtype in ("q8_0", "q4_0"):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(writer, cfg)
        write_vocab(writer, vocab, chat_template)
        for name in progress_iter(list(tensors), desc=f"encoding {dtype}", unit="tensor", enabled=progress):
            array = tensors.pop(name)
            qtype = _tensor_type(name, array.shape, dtype, cfg.tie_embeddings)
            if array.ndim == 2 and dtype.startswith("q") and qtype == gguf.GGMLQuantizationType.F16:
                fallbacks.append(name)
            data = _encode(array, qtype)
            types[qtype.name] = types.get(qtype.name, 0) + 1
            if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                writer.add_tensor(name, data)
            else:
                writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if out.exists() and force:
            out.unlink()
        os.replace(tmp, out)
    except OSError as exc:
        raise SlmError(f"--out {out}: cannot write the file ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(out), "format": "gguf", "dtype": dtype, "architecture": arch, "bytes": out.stat().st_size,
            "tensor_types": dict(sorted(types.items())), "f16_fallbacks": fallbacks, "tokens": len(vocab.tokens),
            "pre_tokenizer": vocab.pre, "chat_template": chat_template is not None}


# ---------------------------------------------------------------------------- HF


def export_hf(folder: str | Path, out: str | Path, dtype: str = "f32", force: bool = False) -> dict[str, Any]:
    """Write the decoder checkpoint `folder` as a clean HF folder `out` in `dtype`; returns a summary."""
    import torch
    from safetensors.torch import save_file

    from slmkit.fileio import atomic_dir, atomic_write_json, new_file_mode
    from slmkit.interop.hf import COMPANION_FILES, load_hf_folder, state_dict_to_hf

    folder, out = Path(folder), Path(out)
    check_format_dtype("hf", dtype)
    config = _check_source(folder, "hf")
    check_output_path(out, folder, force, folder_output=True)
    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = load_hf_folder(folder, dtype=torch_dtype)
    state = state_dict_to_hf(model.state_dict(), model.config)
    try:
        with atomic_dir(out) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            os.chmod(tmp / "model.safetensors", new_file_mode())  # safetensors writes 0600
            atomic_write_json(tmp / "config.json", {**config, "dtype": str(torch_dtype).removeprefix("torch.")})
            for name in COMPANION_FILES:  # carried over unchanged; the weights are rewritten
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, tmp / name)
    except OSError as exc:
        raise SlmError(f"--out {out}: cannot write the folder ({exc.strerror or exc})") from None
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {"path": str(out), "format": "hf", "dtype": dtype, "architecture": config.get("architectures", ["?"])[0],
            "bytes": size}
