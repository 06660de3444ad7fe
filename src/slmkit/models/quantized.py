"""Weight-only int8 / int4 linear layers with group-wise scales (and zero points when asymmetric).

A weight row is cut into groups of `group_size` inputs (int8 default: one group per row, "per
channel"); each group keeps a float scale s and, when asymmetric, a float zero z, and
w ~= q * s + z with q a signed integer in [-2^(b-1), 2^(b-1) - 1] (z = 0 when symmetric).

Matmul kernels (CPU): torch's own weight-only kernels, `aten._weight_int8pack_mm` (per-channel int8;
an asymmetric zero adds sum(x) * z) and `aten._weight_int4pack_mm_for_cpu` (tinygemm int4 with
group-wise scales and zeros; w = (q + 8 - 8) * s + z is exactly its convention). Both run with bf16
activations: measured on this project's 2-core AVX-512 CPU (torch 2.13), a 1536x576 batch-1 product
takes 17 us (int8) / 16 us (int4) with bf16 inputs, against 305 us / 650 us with fp32 inputs and
41 us for the fp32 oneDNN product, so the layer casts its input to bf16 and its output back.
torchao (0.18) was tried first and falls short on this CPU: its Int8WeightOnlyConfig ran that product
in 4.6 ms (a Python dequantize path), IntxWeightOnlyConfig int4 in 8.3 ms, and its CPU int4 layout
needs bf16 models. Elsewhere (CUDA, group-wise int8, which no torch kernel takes) the layer
dequantizes and runs F.linear, in the input's dtype.

Written by hand because of the above: no library offers these kernels behind a module on this torch
and CPU. Storage (safetensors) is portable: int8 values as int8, int4 values two per byte (uint8),
scales and zeros in bf16 (the kernels' own dtype; the integers are rounded against those values);
the kernel layouts are built from them on first use. At batch 1 each extra op costs about as much
as a small product, so `forward` does the kernel call, the input/output casts and (asymmetric int8)
one fused `sum(x) * z`, nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slmkit.errors import SlmError

BITS = (8, 4)
GROUP_SIZES = (32, 64, 128)
INT4_KERNEL_GROUPS = (32, 64, 128, 256)


def _bf16_at_least(x: Tensor) -> Tensor:
    """bf16 values >= x (x > 0): the kernels take bf16 scales, so the grid is built on those."""
    return (x * (1 + 2**-7)).to(torch.bfloat16)


def quantize_weight(weight: Tensor, bits: int, group_size: int | None, symmetric: bool
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
    """(q int8 [N, K] in [-2^(b-1), 2^(b-1)-1], scales bf16 [N, G], zeros bf16 [N, G] or None).

    Scales and zeros are bf16, the dtype torch's kernels compute with, and q is rounded against those
    very values: what the kernel multiplies is exactly what `dequantized` returns.
    """
    n, k = weight.shape
    group = group_size or k
    w = weight.detach().float().reshape(n, k // group, group)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if symmetric:
        scales = _bf16_at_least((w.abs().amax(-1, keepdim=True) / high).clamp(min=1e-12))
        q = torch.round(w / scales.float()).clamp(low, high)
        zeros = None
    else:
        w_min, w_max = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scales = _bf16_at_least(((w_max - w_min) / (2**bits - 1)).clamp(min=1e-12))
        zeros = (w_min - low * scales.float()).to(torch.bfloat16)
        q = torch.round((w - zeros.float()) / scales.float()).clamp(low, high)
        zeros = zeros.squeeze(-1)
    return q.to(torch.int8).reshape(n, k), scales.squeeze(-1), zeros


def pack_int4(q: Tensor) -> Tensor:
    """Signed int4 values [N, K] (K even) -> uint8 [N, K/2], low nibble first."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """uint8 [N, K/2] -> signed int4 values as int8 [N, K]."""
    low, high = (packed & 0xF).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


class QuantizedLinear(nn.Module):
    """A Linear whose weight is stored as int8 / int4 groups; same call signature as nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None, symmetric: bool,
                 bias: bool, device: torch.device | str | None = None) -> None:
        super().__init__()
        if bits not in BITS:
            raise SlmError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits}")
        group = group_size or in_features
        if in_features % group:
            raise SlmError(f"group size {group_size} does not divide the {in_features} inputs of the layer")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        width = in_features if bits == 8 else in_features // 2
        self.register_buffer("qweight", torch.zeros(out_features, width, device=device,
                                                    dtype=torch.int8 if bits == 8 else torch.uint8))
        groups = in_features // group
        bf16 = torch.bfloat16
        self.register_buffer("scales", torch.ones(out_features, groups, device=device, dtype=bf16))
        self.register_buffer("zeros", None if symmetric else torch.zeros(out_features, groups, device=device,
                                                                            dtype=bf16))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self._kernel: tuple | None = None  # (key, kernel tensors) built on first CPU use

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None, symmetric: bool) -> QuantizedLinear:
        module = cls(linear.in_features, linear.out_features, bits, group_size, symmetric, linear.bias is not None,
                     device=linear.weight.device)
        q, scales, zeros = quantize_weight(linear.weight, bits, group_size, symmetric)
        module.qweight.copy_(q if bits == 8 else pack_int4(q))
        module.scales.copy_(scales)
        if zeros is not None:
            module.zeros.copy_(zeros)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    @property
    def weight_count(self) -> int:
        """Weights this layer stands for (they are buffers here, not parameters)."""
        return self.in_features * self.out_features

    def extra_repr(self) -> str:
        group = self.group_size or "channel"
        return (f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={group}, "
                f"{'symmetric' if self.symmetric else 'asymmetric'}")

    def int_values(self) -> Tensor:
        """The signed integer weights, int8 [N, K]."""
        return self.qweight if self.bits == 8 else unpack_int4(self.qweight)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight the integers stand for, [N, K]."""
        n, k = self.out_features, self.in_features
        groups = self.scales.shape[1]
        w = self.int_values().float().reshape(n, groups, k // groups) * self.scales.float().unsqueeze(-1)
        if self.zeros is not None:
            w = w + self.zeros.float().unsqueeze(-1)
        return w.reshape(n, k).to(dtype)

    def kernel_name(self, device: torch.device) -> str:
        """Which path `forward` takes on `device`: 'int8-cpu', 'int4-cpu' or 'dequantize'."""
        if device.type != "cpu":
            return "dequantize"
        if self.bits == 8 and self.scales.shape[1] == 1 and hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            return "int8-cpu"
        if (self.bits == 4 and self.group_size in INT4_KERNEL_GROUPS
                and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")):
            return "int4-cpu"
        return "dequantize"

    def _kernel_tensors(self) -> tuple:
        tensors = [t for t in (self.qweight, self.scales, self.zeros) if t is not None]
        key = tuple((t.data_ptr(), t.dtype, None if t.is_inference() else t._version) for t in tensors)
        if self._kernel is None or self._kernel[0] != key:
            scales = self.scales.to(torch.bfloat16)
            zeros = None if self.zeros is None else self.zeros.to(torch.bfloat16)
            if self.bits == 8:
                kernel = (self.qweight, scales[:, 0].contiguous(), None if zeros is None else zeros[:, 0].float())
            else:
                # tinygemm packs rows in 16s: pad the output rows, slice them off after.
                pad = -self.out_features % 16
                unsigned = F.pad(unpack_int4(self.qweight).to(torch.int32) + 8, (0, 0, 0, pad), value=8)
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unsigned.contiguous(), 1)
                scales = F.pad(scales, (0, 0, 0, pad), value=1.0)
                zeros = torch.zeros_like(scales) if zeros is None else F.pad(zeros, (0, 0, 0, pad))
                kernel = (packed, torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous())
            self._kernel = (key, kernel)
        return self._kernel[1]

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.kernel_name(x.device)
        if kernel == "dequantize":
            return F.linear(x, self.dequantized(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        # Few ops on purpose: at batch 1 each costs as much as a small matrix product.
        flat = x.reshape(-1, self.in_features)
        if kernel == "int8-cpu":
            weight, scales, zeros = self._kernel_tensors()
            out = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16), weight, scales).float()
            if zeros is not None:  # sum_k x_k (q_k s + z) = (x . q) s + z sum(x)
                out.addcmul_(flat.sum(-1, keepdim=True, dtype=torch.float32), zeros)
        else:
            packed, scales_and_zeros = self._kernel_tensors()
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.to(torch.bfloat16), packed, self.group_size,
                                                             scales_and_zeros).float()
            if out.shape[-1] != self.out_features:
                out = out[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def quantizable_linears(model: nn.Module) -> list[str]:
    """Names of the Linear layers `quantize_model` replaces: every nn.Linear (blocks and output head)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def check_group_size(model: nn.Module, names: list[str], group_size: int | None) -> None:
    """SlmError naming the first layer whose input width the group size does not divide."""
    for name in names:
        module = model.get_submodule(name)
        if group_size and module.in_features % group_size:
            raise SlmError(f"--group-size {group_size} does not divide the {module.in_features} inputs of layer "
                           f"{name}; choose one of {', '.join(str(g) for g in GROUP_SIZES if module.in_features % g == 0)}"
                           " or leave it out")
        if module.in_features % 2:
            raise SlmError(f"layer {name} has an odd number of inputs ({module.in_features}); int4 needs pairs")


def quantize_model(model: nn.Module, bits: int, group_size: int | None, symmetric: bool) -> list[str]:
    """Replace the model's Linear layers by QuantizedLinear in place; returns their names.

    A tied output head (sharing the embedding's tensor) gets its own quantized copy; the embedding
    itself stays in its dtype (a lookup reads one row, so its size costs memory, not time).
    """
    names = quantizable_linears(model)
    check_group_size(model, names, group_size)
    for name in names:
        if not torch.isfinite(model.get_submodule(name).weight).all():
            raise SlmError(f"layer {name} holds NaN or infinite weights; the checkpoint is broken, not quantized")
    for name in names:
        _set_module(model, name, QuantizedLinear.from_linear(model.get_submodule(name), bits, group_size, symmetric))
    return names


def prepare_quantized(model: nn.Module, names: list[str], bits: int, group_size: int | None, symmetric: bool) -> None:
    """Swap the named Linear layers for empty QuantizedLinear ones (before loading a quantized state dict)."""
    for name in names:
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise SlmError(f"quantized layer {name!r} does not exist in this model") from None
        _set_module(model, name, QuantizedLinear(linear.in_features, linear.out_features, bits, group_size, symmetric,
                                                 linear.bias is not None, device=linear.weight.device))
