"""Model FLOPs utilisation: achieved model FLOP/s divided by the device's peak FLOP/s.

Peak FLOP/s: on known CUDA GPUs the datasheet figure (dense, no sparsity); on CPU a short matmul
micro-benchmark, cached per machine, thread count and dtype in ~/.cache/slmkit/peak_flops.json.
`SLMKIT_PEAK_FLOPS=<number>` overrides both (useful for tests and unknown accelerators).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# Dense datasheet peaks (FLOP/s): (substring of torch.cuda.get_device_name, {dtype: peak}).
# fp32 is plain FP32 (not TF32); more specific names come first.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("B200", {"bf16": 2250e12, "fp16": 2250e12, "fp32": 80e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("A10", {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    ("4090", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
]


def gpu_peak_flops(device_name: str, dtype: str) -> float | None:
    """Datasheet peak for a CUDA device name and dtype ('bf16', 'fp16', 'fp32'), or None if unknown."""
    for key, peaks in GPU_PEAKS:
        if key.lower() in device_name.lower():
            return peaks.get(dtype) or peaks.get("fp16")
    return None


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slmkit" / "peak_flops.json"


def _cpu_key(dtype: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}|threads={torch.get_num_threads()}|{dtype}"


def measure_matmul_flops(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0,
                         device: str = "cpu") -> float:
    """Best FLOP/s of square n x n matmuls over ~`seconds` (the best of several short timed runs)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):  # warm up kernels and caches
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        reps = 4
        for _ in range(reps):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 * reps / dt)
    return best


def cpu_peak_flops(dtype: str = "fp32", use_cache: bool = True, refresh: bool = False) -> float:
    """Measured CPU matmul peak for 'fp32' or 'bf16', cached per machine and thread count.

    The cache keeps the best figure ever measured (a busy machine only measures too low);
    `refresh` measures again and keeps the better of the two.
    """
    key = _cpu_key(dtype)
    path = _cache_path()
    cache: dict[str, float] = {}
    if use_cache and path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    if key in cache and not refresh:
        return float(cache[key])
    torch_dtype = torch.bfloat16 if dtype in ("bf16", "fp16") else torch.float32
    peak = max(measure_matmul_flops(torch_dtype), float(cache.get(key, 0.0)))
    if use_cache:
        cache[key] = peak
        try:
            from slmkit.fileio import atomic_write_json

            atomic_write_json(path, cache)
        except OSError:
            pass  # a read-only home only costs a re-measurement next time
    return peak


def peak_flops(device: torch.device, dtype: str, refresh: bool = False) -> float | None:
    """Peak FLOP/s of `device` for `dtype` ('fp32' | 'bf16' | 'fp16'); None when unknown.

    `refresh` re-runs the CPU micro-benchmark (benchmarks do; the trainer uses the cache)."""
    env = os.environ.get("SLMKIT_PEAK_FLOPS")
    if env:
        return float(env)
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        return cpu_peak_flops(dtype, refresh=refresh)
    return None


def mfu(flops_per_token: float, tokens_per_second: float, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s over the peak of all devices together."""
    if not peak:
        return None
    return flops_per_token * tokens_per_second / (peak * world_size)
