"""`slm plan`: from a budget (FLOPs, GPU-hours, minutes here) or one side (N or D) to a full plan.

A plan holds the law and its coefficients, N and D, the budget, FLOPs (6ND plus attention, for a
LLaMA-style shape of that N), the predicted loss (None where the law has none), training time on
the chosen hardware, memory per device under DDP / ZeRO-2 / FSDP with and without activation
checkpointing, and, with inference tokens, the inference-aware optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from slmkit.errors import SlmError
from slmkit.scaling.laws import LAWS, Law, get_law, inference_optimum
from slmkit.scaling.shapes import param_count, shape_for_params


@dataclass
class Hardware:
    """Where training runs: a datasheet GPU at an assumed MFU, or this machine as measured."""

    name: str
    devices: int
    flops_per_second: float  # achieved model FLOP/s of one device
    note: str

    def seconds(self, flops: float) -> float:
        return flops / (self.devices * self.flops_per_second)


def gpu_hardware(gpu: str, mfu: float, devices: int) -> Hardware:
    """A datasheet GPU (bf16 dense peak) at `mfu`."""
    from slmkit.train.mfu import GPU_PEAKS, gpu_peak_flops

    peak = gpu_peak_flops(gpu, "bf16")
    if peak is None:
        from slmkit.errors import did_you_mean

        names = [name.lower().replace(" ", "-") for name, _ in GPU_PEAKS]
        raise SlmError(f"unknown GPU {gpu!r}{did_you_mean(gpu.lower(), names)}; known: {', '.join(names)}")
    if not 0 < mfu <= 1:
        raise SlmError(f"--mfu must be in (0, 1], got {mfu}")
    return Hardware(gpu, devices, peak * mfu, f"{devices} x {gpu} at {100 * mfu:.0f}% MFU of {peak / 1e12:.0f} TFLOP/s")


def plan_for(law: Law, *, flops: float | None = None, params: float | None = None, tokens: float | None = None,
             hardware: Hardware | None = None, seq_len: int = 2048, vocab_size: int = 32000,
             micro_batch: int = 1, inference_tokens: float | None = None) -> dict[str, Any]:
    """One law's answer for exactly one of flops / params / tokens."""
    if flops is not None:
        n, d = law.optimum(flops)
        budget = flops
    elif params is not None:
        budget, d = law.for_params(params)
        n = params
    elif tokens is not None:
        budget, n = law.for_tokens(tokens)
        d = tokens
    else:
        raise SlmError("give one of --flops, --gpu-hours, --minutes, --params or --tokens")
    cfg = shape_for_params(n, vocab_size, seq_len, count=law.count)
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len * d  # PaLM's term, as accounting.py
    plan: dict[str, Any] = {
        "law": law.name,
        "law_detail": law.describe(),
        "budget_flops": budget,
        "params": n,
        "tokens": d,
        "tokens_per_param": d / n,
        "flops": 6 * n * d + attention,
        "flops_6nd": 6 * n * d,
        "attention_flops": attention,
        "loss": law.loss(n, d),
        "model": {"n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
                  "ffn_hidden": cfg.ffn_hidden, "vocab_size": vocab_size, "seq_len": seq_len,
                  "params": param_count(cfg), "params_counted": param_count(cfg, law.count)},
    }
    if hardware is not None:
        seconds = hardware.seconds(plan["flops"])
        plan["time"] = {"seconds": seconds, "hours": seconds / 3600, "gpu_hours": seconds * hardware.devices / 3600,
                        "hardware": hardware.note}
    plan["memory"] = memory_rows(cfg, seq_len, micro_batch, hardware.devices if hardware else 1)
    if inference_tokens:
        plan["inference"] = inference_optimum(law, budget, inference_tokens)
    return plan


def memory_rows(cfg, seq_len: int, micro_batch: int, devices: int) -> dict[str, Any]:
    """Memory per device for every strategy, with and without activation checkpointing."""
    from slmkit.scaling.memory import memory_table

    return {"devices": devices, "micro_batch": micro_batch, "seq_len": seq_len,
            "rows": memory_table(cfg, seq_len=seq_len, micro_batch=micro_batch, world_size=devices)}


def compare_laws(law_names: list[str], **question: Any) -> list[dict[str, Any]]:
    """The same question put to several laws: name, N, D, tokens per parameter, budget, loss."""
    rows = []
    for name in law_names:
        law = get_law(name)
        plan = plan_for(law, **question)
        rows.append({key: plan[key] for key in ("law", "params", "tokens", "tokens_per_param", "budget_flops", "loss")}
                    | {"formula": law.formula()})
    return rows


def builtin_laws() -> list[str]:
    return list(LAWS)


def plan_here(law: Law, minutes: float, *, seq_len: int, vocab_size: int, batch_size: int,
              inference_tokens: float | None = None, log=lambda _: None) -> dict[str, Any]:
    """`--minutes M --machine here`: probe this machine's throughput, size the model, count the steps.

    The throughput depends on the shape, so the probe runs at the law's answer for the last
    measurement until the two agree (within 1.5x, at most three probes)."""
    from slmkit.scaling.probe import measure_throughput
    from slmkit.scaling.shapes import smallest_params

    guess, smallest = 15e6, smallest_params(vocab_size, seq_len, law.count)
    for _ in range(3):
        cfg = shape_for_params(max(guess, smallest), vocab_size, seq_len, count=law.count)
        size = param_count(cfg, law.count)
        log(f"probe: {cfg.n_layers} layers x {cfg.d_model} wide ({size / 1e6:.2f}M params), "
            f"{batch_size} x {seq_len} tokens per step")
        measured = measure_throughput(cfg, seq_len=seq_len, batch_size=batch_size)
        log(f"probe: {measured.tokens_per_second:,.0f} tok/s, {measured.flops_per_second / 1e9:,.1f} GFLOP/s "
            f"({measured.device}, {measured.precision})")
        flops = 60 * minutes * measured.flops_per_second
        guess = law.optimum(flops)[0]
        if abs(math.log(guess / size)) < math.log(1.5) or (guess < size and size == smallest):
            break
    hardware = Hardware("here", 1, measured.flops_per_second,
                        f"this machine ({measured.device}, {measured.precision}): "
                        f"{measured.flops_per_second / 1e9:,.1f} GFLOP/s measured")
    plan = plan_for(law, flops=flops, hardware=hardware, seq_len=seq_len, vocab_size=vocab_size,
                    micro_batch=batch_size, inference_tokens=inference_tokens)
    tokens_in_budget = 60 * minutes * measured.tokens_per_second
    shape = plan["model"]
    plan["machine"] = {
        "minutes": minutes, "tokens_per_second": measured.tokens_per_second,
        "flops_per_second": measured.flops_per_second, "device": measured.device, "precision": measured.precision,
        "probed_shape": {"n_layers": cfg.n_layers, "d_model": cfg.d_model, "params": param_count(cfg)},
        "batch_size": batch_size, "seq_len": seq_len,
        "tokens_in_budget": tokens_in_budget,
        "steps": max(1, int(tokens_in_budget // (batch_size * seq_len))),
        "recipe_overrides": (f"model.n_layers={shape['n_layers']} model.d_model={shape['d_model']} "
                             f"model.n_heads={shape['n_heads']} train.batch_size={batch_size} "
                             f"train.max_steps=auto train.max_minutes={minutes:g}"),
    }
    if guess < smallest:
        plan["machine"]["note"] = (f"the law asks for {guess / 1e6:.2f}M parameters ({law.count}), below the smallest "
                                   f"shape at vocabulary {vocab_size} ({smallest / 1e6:.2f}M): it trains fewer "
                                   "tokens per parameter than the law would")
    return plan
