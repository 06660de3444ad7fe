"""Model folders of every kind: an HF decoder folder or a CodeFusion folder, told apart by config.json.

A CodeFusion folder has no Hugging Face architecture to load into, so it is slmkit's own:
config.json {"model_type": "slmkit-codefusion", "slmkit": {"codefusion_config": {...}}, token ids},
model.safetensors with the module's own parameter names, and the tokenizer files beside. Decoders
keep the HF layout of `slmkit.interop.hf`. Everything that loads "a model folder" (checkpoints,
`slm generate`, `slm eval`, `slm model info`) goes through `load_model_folder`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json, new_file_mode, temp_file

CODEFUSION_MODEL_TYPE = "slmkit-codefusion"


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """config.json of a model folder as a mapping; SlmError when missing or malformed."""
    from slmkit.interop.hf import read_config_json as read_json

    data = read_json(folder)
    if not isinstance(data, dict):
        raise SlmError(f"{Path(folder) / 'config.json'}: expected a JSON object")
    return data


def is_codefusion_folder(folder: str | Path) -> bool:
    """Whether the folder holds a CodeFusion model (else a decoder)."""
    return read_config_json(folder).get("model_type") == CODEFUSION_MODEL_TYPE


def is_codefusion(model: nn.Module) -> bool:
    from slmkit.models.codefusion import CodeFusion

    return isinstance(model, CodeFusion)


def read_codefusion_config(folder: str | Path) -> Any:
    """The CodeFusionConfig of a CodeFusion folder."""
    from slmkit.models.codefusion_config import CodeFusionConfig

    data = read_config_json(folder)
    raw = (data.get("slmkit") or {}).get("codefusion_config")
    if not isinstance(raw, dict):
        raise SlmError(f"{folder}/config.json: no slmkit.codefusion_config mapping")
    try:
        return CodeFusionConfig(**raw).validate()
    except TypeError as exc:
        raise SlmError(f"{folder}/config.json: not a usable CodeFusion config ({exc})") from None


def save_codefusion_folder(model: nn.Module, folder: str | Path, tokenizer_file: Path | None = None,
                           state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a CodeFusion model (weights, config, tokenizer) into `folder`, each file atomically."""
    from safetensors.torch import save_file

    from slmkit.interop.hf import _write_tokenizer
    from slmkit.tokenizer import load_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {k: v.detach().cpu().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    fd, tmp = temp_file(folder, "model.safetensors")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, folder / "model.safetensors")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    atomic_write_json(folder / "config.json", {
        "model_type": CODEFUSION_MODEL_TYPE, "architectures": ["CodeFusion"], "vocab_size": cfg.vocab_size,
        "pad_token_id": cfg.pad_id, "mask_token_id": cfg.mask_id, "dtype": dtype,
        "slmkit": {"codefusion_config": cfg.to_dict()},
    })
    if tokenizer_file is not None:
        _write_tokenizer(folder, load_tokenizer(tokenizer_file), Path(tokenizer_file), cfg.max_utterance_len, None)
    return folder


def load_codefusion_folder(folder: str | Path, device: torch.device | str | None = None,
                           dtype: torch.dtype | None = None) -> nn.Module:
    """The CodeFusion model of a folder, in eval mode (fp32 unless `dtype`)."""
    from slmkit.interop.hf import _read_weights, materialize
    from slmkit.interop.quantized_folder import load_quantized_model, quantization_spec
    from slmkit.models.codefusion import CodeFusion

    folder = Path(folder)
    cfg = read_codefusion_config(folder)
    config = read_config_json(folder)
    if quantization_spec(config) is not None:  # `slm quantize` output
        return load_quantized_model(folder, config, lambda: CodeFusion(cfg), device, dtype)
    model = materialize(lambda: CodeFusion(cfg), _read_weights(folder), folder, device, dtype)
    model.reset_rope()
    return model.eval()


def save_model_folder(model: nn.Module, folder: str | Path, tokenizer_file: Path | None = None,
                      chat_template: str | None = None, state_dict: dict[str, torch.Tensor] | None = None,
                      metadata: dict[str, Any] | None = None) -> Path:
    """Write any of our models as a model folder (HF layout for decoders; `metadata`: the objective's
    config.json "slmkit" entries, e.g. masked diffusion's answer length)."""
    if is_codefusion(model):
        return save_codefusion_folder(model, folder, tokenizer_file, state_dict)
    from slmkit.interop.hf import save_hf_folder

    return save_hf_folder(model, folder, tokenizer_file=tokenizer_file, chat_template=chat_template, metadata=metadata,
                          state_dict=state_dict)


def load_model_folder(folder: str | Path, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> nn.Module:
    """The model of any model folder, in eval mode."""
    if is_codefusion_folder(folder):
        return load_codefusion_folder(folder, device, dtype)
    from slmkit.interop.hf import load_hf_folder

    return load_hf_folder(folder, device=device, dtype=dtype)


def check_output_path(out: Path, source: Path, force: bool, folder_output: bool) -> None:
    """What a tool writing from the checkpoint `source` to `out` (a folder, or a file when not
    `folder_output`) must refuse before any work: an empty path, the wrong kind of existing path, an
    existing output without `force`, an output that is the checkpoint or lies inside it, a parent that
    is a file."""
    if str(out).strip() == "":
        raise SlmError("--out must name a path, got an empty string")
    if out.exists():
        if out.is_dir() != folder_output:
            raise SlmError(f"--out {out} exists and is {'a file' if folder_output else 'a folder'}")
        if not force and (not folder_output or any(out.iterdir())):
            raise SlmError(f"--out {out} exists; pass --force to replace it")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise SlmError(f"--out {out} is inside the checkpoint {source}; choose another path")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise SlmError(f"--out {out}: {parent} is not a folder")


def check_model_folder(folder: str | Path) -> str:
    """'codefusion', 'masked-diffusion' (a bidirectional decoder) or 'decoder' after checking config.json
    (SlmError when it is not usable)."""
    if is_codefusion_folder(folder):
        read_codefusion_config(folder)
        return "codefusion"
    from slmkit.interop.hf import read_hf_config

    return "masked-diffusion" if read_hf_config(folder).bidirectional else "decoder"
