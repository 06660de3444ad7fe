"""Training throughput (tokens/s) of the slmkit trainer's step vs a plain transformers + torch AdamW loop.

Both sides train the same architecture (our preset, and the transformers class it maps to) on the same
random batch, in the same process: forward, backward, grad clipping, AdamW update, zero_grad. The
slmkit side uses the trainer's own pieces (parallelize, autocast, optimizer groups, clip_grad_norm);
the baseline is `AutoModelForCausalLM.from_config` + `torch.optim.AdamW` with default settings.
Modes are `eager-fp32`, `eager-bf16`, `compile-fp32`, `compile-bf16`, ... (compile = torch.compile on both).

    python benchmarks/train_throughput.py                        # CPU: tiny-llama, batch 8 x 256
    python benchmarks/train_throughput.py --device cuda          # GPU: phi-1_5, bf16, compile, FSDP2
    python benchmarks/train_throughput.py --preset tiny-phi --modes eager-fp32,compile-bf16 --steps 5

Prints one line per mode (tok/s of both, ratio slmkit / transformers, MFU) and one JSON line.
Goal on CPU: ratio >= 1.0 eager, >= 1.3 for slmkit compile+bf16 vs the transformers eager baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from collections.abc import Callable

import torch


def parse_args() -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="cpu | cuda (default: cuda if present)")
    p.add_argument("--preset", default=None, help="model preset (default: phi-1_5 on CUDA, tiny-llama on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 8 CPU, 4 CUDA)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 256 CPU, 2048 CUDA)")
    p.add_argument("--modes", default=None,
                   help="comma list of {eager,compile}-{fp32,bf16} (default CPU: eager-fp32,eager-bf16,compile-bf16; "
                        "CUDA: eager-bf16,compile-bf16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per window (default 3 CPU, 10 CUDA)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--repeats", type=int, default=2, help="timed windows per side; the best is kept")
    p.add_argument("--parallel", default=None, choices=["none", "fsdp"],
                   help="slmkit side wrapping (default: fsdp on CUDA = FSDP2 on one GPU, none on CPU)")
    p.add_argument("--activation-checkpointing", action="store_true", help="on both sides")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: all cores)")
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.preset = args.preset or ("phi-1_5" if gpu else "tiny-llama")
    args.batch_size = args.batch_size or (4 if gpu else 8)
    args.seq_len = args.seq_len or (2048 if gpu else 256)
    args.modes = (args.modes or ("eager-bf16,compile-bf16" if gpu else "eager-fp32,eager-bf16,compile-bf16")).split(",")
    args.steps = args.steps or (10 if gpu else 3)
    args.parallel = args.parallel or ("fsdp" if gpu else "none")
    return args


def model_config(preset: str, seq_len: int):
    from slmkit.models import get_preset

    cfg = get_preset(preset)
    return cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len))


# --------------------------------------------------------------------------- the two sides


def slmkit_step(cfg, args, compile: bool, precision: str) -> tuple[Callable[[dict], None], Callable[[], None]]:
    """One step of the slmkit trainer: its model, wrapping, optimizer groups, autocast and clipping."""
    from slmkit.config import TrainConfig
    from slmkit.device import autocast_for
    from slmkit.models import build_model
    from slmkit.train.distributed import clip_grad_norm, init_distributed, local_params, parallelize, shutdown
    from slmkit.train.optim import build_optimizer, resolve_optim_settings

    env = init_distributed(args.device, args.parallel)
    torch.manual_seed(0)
    model = build_model(cfg).to(env.device).train()
    if args.activation_checkpointing:
        model.set_activation_checkpointing(True)
    step_module = parallelize(model, lambda m, batch: m.loss(batch), args.parallel, env, compile=compile)
    settings = resolve_optim_settings(TrainConfig(optimizer="llama"))
    optimizer = build_optimizer(model, settings)
    params = local_params(model)
    autocast = autocast_for(precision, env.device)

    def step(batch: dict) -> None:
        with autocast():
            loss = step_module(batch)
        loss.backward()
        clip_grad_norm(params, settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, lambda: shutdown(env)


def transformers_step(cfg, args, compile: bool, precision: str) -> tuple[Callable[[dict], None], Callable[[], None]]:
    """The baseline: the HF class of the same architecture, torch AdamW with default implementation."""
    import transformers

    from slmkit.interop.hf import config_to_hf

    hf_dict = config_to_hf(cfg)
    hf_config = transformers.AutoConfig.for_model(hf_dict.pop("model_type"), **hf_dict)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    model.to(args.device).train()
    if args.activation_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    model.config.use_cache = False  # training: no KV cache
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step(batch: dict) -> None:
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            loss = forward(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, lambda: None


# --------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _window(step: Callable[[dict], None], batch: dict, args) -> float:
    """Tokens/s of `steps` consecutive steps."""
    _sync(args.device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
    _sync(args.device)
    return args.steps * batch["input_ids"].numel() / (time.perf_counter() - t0)


def _release(args) -> None:
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def measure_mode(cfg, args, mode: str, batch: dict) -> tuple[float, float]:
    """Best tokens/s of (slmkit, transformers) in `mode` after `warmup` untimed steps each.

    CPU: both models live side by side and their timed windows alternate, so both see the same
    background load on a shared machine. CUDA: one side at a time (a 1.4B model each needs the memory).
    """
    compile_, precision = mode.split("-")
    sides = (slmkit_step, transformers_step)
    best = [0.0, 0.0]
    if args.device == "cpu":
        built = [side(cfg, args, compile_ == "compile", precision) for side in sides]
        for step, _ in built:
            for _ in range(args.warmup):
                step(batch)
        for _ in range(args.repeats):
            for i, (step, _) in enumerate(built):
                best[i] = max(best[i], _window(step, batch, args))
        for _, cleanup in built:
            cleanup()
        del built
        _release(args)
        return best[0], best[1]
    for i, side in enumerate(sides):
        step, cleanup = side(cfg, args, compile_ == "compile", precision)
        for _ in range(args.warmup):
            step(batch)
        for _ in range(args.repeats):
            best[i] = max(best[i], _window(step, batch, args))
        cleanup()
        del step
        _release(args)
    return best[0], best[1]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for mode in args.modes:
        if mode.split("-")[0] not in ("eager", "compile") or mode.split("-")[-1] not in ("fp32", "bf16"):
            raise SystemExit(f"unknown mode {mode!r}; use eager-fp32, eager-bf16, compile-fp32 or compile-bf16")
    from slmkit.models.accounting import count_params, flops_per_token
    from slmkit.train.mfu import peak_flops

    cfg = model_config(args.preset, args.seq_len)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=gen).to(args.device)
    batch = {"input_ids": ids[:, :-1].contiguous(), "labels": ids[:, 1:].contiguous()}
    fpt = flops_per_token(cfg, args.seq_len, training=True)
    device = torch.device(args.device)
    rows = []
    for mode in args.modes:
        ours, theirs = measure_mode(cfg, args, mode, batch)
        peak = peak_flops(device, mode.split("-")[1], refresh=True)
        rows.append({"mode": mode, "slmkit_tok_s": ours, "transformers_tok_s": theirs, "ratio": ours / theirs,
                     "slmkit_mfu": fpt * ours / peak if peak else None,
                     "transformers_mfu": fpt * theirs / peak if peak else None, "peak_flops": peak})
        m = f"{100 * rows[-1]['slmkit_mfu']:.1f}%" if peak else "n/a"
        print(f"{mode:<14} slmkit {ours:>10,.0f} tok/s   transformers {theirs:>10,.0f} tok/s   "
              f"ratio {ours / theirs:.2f}x   slmkit MFU {m}", flush=True)
    baseline = next((r["transformers_tok_s"] for r in rows if r["mode"].startswith("eager-fp32")), None)
    if baseline is None:
        baseline = next((r["transformers_tok_s"] for r in rows if r["mode"].startswith("eager")), None)
    best = max(rows, key=lambda r: r["slmkit_tok_s"])
    vs_eager = best["slmkit_tok_s"] / baseline if baseline else None
    if vs_eager:
        print(f"best slmkit ({best['mode']}) vs transformers eager: {vs_eager:.2f}x")
    env = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or "cpu"),
        "threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__,
        "preset": args.preset, "params": count_params(cfg), "batch_size": args.batch_size, "seq_len": args.seq_len,
        "parallel": args.parallel, "activation_checkpointing": args.activation_checkpointing,
    }
    print(json.dumps({"benchmark": "train_throughput", "env": env, "results": rows,
                      "best_slmkit_vs_transformers_eager": vs_eager}))


if __name__ == "__main__":
    main()
