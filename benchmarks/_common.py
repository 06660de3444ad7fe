"""Shared setup for the benchmarks: our model and transformers' on identical weights, timing, output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable

import torch


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default="tiny-llama", help="model preset (default tiny-llama)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model config field, e.g. --set n_layers=2 (repeatable)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    return parser


def setup(args: argparse.Namespace):
    """(ours, hf, dtype): a random-weight preset saved as an HF folder and loaded by both libraries."""
    import transformers

    from slmkit.interop.hf import load_hf_folder, save_hf_folder
    from slmkit.models import build_model, get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    import yaml

    changes = dict(item.split("=", 1) for item in args.set)
    cfg = get_preset(args.preset).replace(**{k: yaml.safe_load(v) for k, v in changes.items()})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        save_hf_folder(build_model(cfg), folder)
        ours = load_hf_folder(folder, device=args.device, dtype=dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    return ours, hf, dtype


def _timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def paired_best_seconds(
    ours: Callable[[], object], theirs: Callable[[], object], repeats: int, device: str
) -> tuple[float, float]:
    """Best wall time of each function over `repeats` alternating runs (after one warm-up each).

    Alternating ours/theirs makes both see the same background load on a shared machine.
    """
    ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        a.append(_timed(ours, device))
        b.append(_timed(theirs, device))
    return min(a), min(b)


def environment(args: argparse.Namespace) -> dict:
    import transformers

    return {
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "preset": args.preset + "".join(f" {item}" for item in args.set),
        "dtype": args.dtype,
    }


def report(name: str, rows: list[dict], env: dict) -> None:
    """A readable table, then one JSON line (machine-readable)."""
    print(f"{name}  ({env['preset']}, {env['dtype']}, {env['device']}, {env['threads']} threads)")
    for row in rows:
        print(f"  {row['case']:<24} ours {row['ours_tok_s']:>10.1f} tok/s   transformers {row['hf_tok_s']:>10.1f} tok/s"
              f"   ratio {row['ratio']:.2f}x")
    print(json.dumps({"benchmark": name, "env": env, "results": rows}))
