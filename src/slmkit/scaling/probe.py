"""`slm plan --machine here`: this machine's training throughput for a model shape, measured.

A few real training steps (forward, the model's own loss, backward, the trainer's AdamW update) of a
randomly initialised decoder on random tokens, with the trainer's precision rule (bf16 autocast where the
device has it). The first steps warm kernels up and are not timed. Model FLOPs per token follow models/accounting.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from slmkit.models.config import ModelConfig


@dataclass
class Throughput:
    """What the probe measured for one shape."""

    tokens_per_second: float
    flops_per_second: float  # model FLOPs (accounting.flops_per_token, training) per second
    step_seconds: float
    device: str
    precision: str


def measure_throughput(cfg: ModelConfig, *, seq_len: int, batch_size: int, steps: int = 3, warmup: int = 2,
                       device: str = "auto", precision: str = "auto") -> Throughput:
    """Time `steps` training steps of `cfg` on batch_size x seq_len random tokens."""
    import torch

    from slmkit.device import autocast_for, resolve_device, resolve_precision
    from slmkit.models.accounting import flops_per_token
    from slmkit.models.decoder import Decoder
    from slmkit.train.optim import PRESETS, build_optimizer

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    autocast = autocast_for(prec, dev)
    torch.manual_seed(0)
    model = Decoder(cfg).to(dev).train()
    optimizer = build_optimizer(model, PRESETS["llama"])  # the trainer's AdamW
    tokens = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=dev)

    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}

    def step() -> None:
        with autocast():
            loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_s = (time.perf_counter() - start) / steps
    tok_s = batch_size * seq_len / step_s
    return Throughput(tok_s, flops_per_token(cfg, seq_len, training=True) * tok_s, step_s, str(dev), prec)
