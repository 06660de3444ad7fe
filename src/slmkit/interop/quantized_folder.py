"""Quantized model folders (`slm quantize`): the source folder's files, weights in int8 / int4 groups.

    config.json             the source's, plus "slmkit": {"quantization": {bits, group_size, symmetric,
                            method, modules, source}}
    model.safetensors       our module names: `<layer>.qweight` (int8, or uint8 holding two int4),
                            `<layer>.scales`, `<layer>.zeros` (bf16; zeros when asymmetric), biases;
                            other tensors as saved
    tokenizer files, generation_config.json, chat template: copied from the source
    quantization.json       what `slm quantize` measured (sizes, perplexity before/after)

Such a folder loads through `load_hf_folder` / `load_model_folder` like any checkpoint (so `slm generate`,
`slm eval` and the server take it), but not in transformers, whose quantization formats do not carry
these group-wise int4/int8 layouts for our fused layers: config.json's model_type is
"slmkit-quantized", which transformers refuses with a clear error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slmkit.errors import SlmError

METHOD = "slmkit-weight-only"
MODEL_TYPE = "slmkit-quantized"
REPORT_FILE = "quantization.json"


def quantization_spec(config: dict[str, Any]) -> dict[str, Any] | None:
    """The "slmkit.quantization" entry of a config.json mapping, or None for an unquantized folder."""
    spec = (config.get("slmkit") or {}).get("quantization") if isinstance(config, dict) else None
    return spec if isinstance(spec, dict) else None


def _checked_spec(spec: dict[str, Any], source: str) -> dict[str, Any]:
    from slmkit.models.quantized import BITS, GROUP_SIZES

    bits, group, modules = spec.get("bits"), spec.get("group_size"), spec.get("modules")
    if spec.get("method") != METHOD or bits not in BITS or (group is not None and group not in GROUP_SIZES) \
            or not isinstance(spec.get("symmetric"), bool) or not isinstance(modules, list) \
            or not all(isinstance(m, str) for m in modules):
        raise SlmError(f"{source}: slmkit.quantization is not a quantization this slmkit reads ({spec})")
    return spec


def save_quantized_folder(model: nn.Module, source: Path, out: Path, config: dict[str, Any],
                          spec: dict[str, Any]) -> None:
    """Write the quantized `model` into the (new, empty) folder `out`, with the source's other files."""
    from safetensors.torch import save_file

    from slmkit.fileio import atomic_write_json, new_file_mode

    state = {}
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen and tensor.numel():  # a tied tensor is stored once
            continue
        seen[tensor.data_ptr()] = name
        state[name] = tensor.detach().cpu().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", new_file_mode())
    slm = dict(config.get("slmkit") or {})
    slm["quantization"] = {**spec, "method": METHOD}
    # An unknown model_type makes transformers refuse a decoder folder instead of loading random weights
    # (our loader reads the family from "architectures"); a CodeFusion folder keeps its own.
    from slmkit.interop.folder import CODEFUSION_MODEL_TYPE

    model_type = CODEFUSION_MODEL_TYPE if config.get("model_type") == CODEFUSION_MODEL_TYPE else MODEL_TYPE
    atomic_write_json(out / "config.json", {**config, "model_type": model_type, "slmkit": slm})
    from slmkit.interop.hf import COMPANION_FILES

    for name in COMPANION_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)


def load_quantized_decoder(folder: Path, config: dict[str, Any], device: torch.device | str | None = None,
                           dtype: torch.dtype | None = None) -> nn.Module:
    """The Decoder of a quantized folder (see `load_quantized_model`)."""
    from slmkit.interop.hf import read_hf_config
    from slmkit.models.decoder import Decoder

    cfg = read_hf_config(folder)
    return load_quantized_model(folder, config, lambda: Decoder(cfg), device, dtype)


def load_quantized_model(folder: Path, config: dict[str, Any], build: Callable[[], nn.Module],
                         device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """The model `build()` makes, its Linear layers QuantizedLinear, holding a quantized folder's weights.

    `dtype` applies to the tensors that are not quantized (embedding, norms, biases); default fp32
    (measured on SmolLM2 int8 batch-1 decode: 90 tok/s with fp32 there, 81 with bf16, whose norms
    and attention take slower paths on this CPU than the two casts per layer they would save).
    """
    from slmkit.interop.hf import _load_safetensors
    from slmkit.models.quantized import prepare_quantized

    spec = _checked_spec(quantization_spec(config) or {}, str(folder / "config.json"))
    with torch.device("meta"):
        model = build()
        prepare_quantized(model, spec["modules"], spec["bits"], spec["group_size"], spec["symmetric"])
    model.to_empty(device=device or "cpu")
    for module in model.modules():  # floating tensors (embedding, norms, scales) in the asked dtype
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor is not None and tensor.is_floating_point() and name not in ("cos", "sin", "scales", "zeros"):
                tensor.data = tensor.data.to(dtype or torch.float32)
    state = _load_safetensors(folder / "model.safetensors")
    missing = [k for k in model.state_dict() if k not in state and not k.endswith((".cos", ".sin"))]
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise SlmError(f"{folder}: weights do not fit config.json ({' '.join(str(exc).split())})") from None
    unexpected = [k for k in state if k not in model.state_dict()]
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise SlmError(f"{folder}: the quantized weights do not fit config.json ({what})")
    model.reset_rope()
    return model.eval()
