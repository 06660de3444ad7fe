"""Device and precision selection, shared by training, evaluation, sampling and `slm generate`.

The names of the valid choices are plain data (no torch import), so recipes are checked at load
time in milliseconds; torch is imported only when a device is actually resolved.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from slmkit.errors import SlmError, check_choice, did_you_mean

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")  # plus cuda:N
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PARALLEL_MODES = ("none", "ddp", "fsdp")
_CUDA_INDEX = re.compile(r"^cuda:\d+$")


def check_device_name(name: object, where: str) -> str:
    """`name` when it is auto, cpu, cuda or cuda:N; SlmError naming `where` otherwise (no torch import)."""
    if isinstance(name, str) and (name in DEVICES or _CUDA_INDEX.match(name)):
        return name
    hint = did_you_mean(str(name).strip().lower(), (*DEVICES, "cuda:0"))
    raise SlmError(f"{where}: {name!r} is not a device{hint}; valid: auto, cpu, cuda, cuda:N")


def resolve_device(pref: str, local_rank: int = 0, where: str = "recipe key 'train.device'",
                   select: bool = True) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when available, else cpu; a CUDA choice without a GPU is an error.

    `select` also makes a CUDA device the current one (training does; a one-off load need not)."""
    import torch

    check_device_name(pref, where)
    if pref.startswith("cuda") or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SlmError(f"{where} {pref}: no CUDA device is available; use cpu (or auto)")
        index = int(pref.split(":", 1)[1]) if ":" in pref else local_rank
        count = torch.cuda.device_count()
        if index >= count:
            raise SlmError(f"{where} {pref}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
        if not select:
            return torch.device("cuda", index) if ":" in pref else torch.device("cuda")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AVX512-BF16 / AMX), where bf16 autocast pays off."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(pref: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16, else fp32.

    Weights, gradients and optimizer states stay fp32; bf16/fp16 only autocast the computation."""
    import torch

    check_choice(pref, PRECISIONS, "recipe key 'train.precision'")
    if pref == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if pref == "fp16" and device.type != "cuda":
        raise SlmError("recipe key 'train.precision': fp16 (with GradScaler) needs CUDA; use bf16 or fp32 on CPU")
    return pref


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for the precision (a null context for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
