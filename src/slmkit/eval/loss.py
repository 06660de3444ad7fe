"""Validation loss (nats per target token) and bits per byte."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


@torch.no_grad()
def evaluate(model, batches: Iterable[dict], device: torch.device | str | None = None,
             loss_fn: Callable[[dict], torch.Tensor] | None = None,
             autocast: Callable[[], object] | None = None,
             count_fn: Callable[[dict], int] | None = None) -> dict[str, float]:
    """Token-weighted mean loss over `batches`: {"loss": nats/token, "tokens": n, "batches": k}.

    `model.loss(batch)` (or `loss_fn`) must return the mean over labels != -100; each batch is
    weighted by its count of such labels (or by `count_fn(batch)`, the objective's target count).
    The model is put in eval mode and restored afterwards.
    """
    loss_fn = loss_fn or model.loss
    was_training = model.training
    model.eval()
    total, tokens, n = 0.0, 0, 0
    try:
        for batch in batches:
            if device is not None:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            count = count_fn(batch) if count_fn is not None else int((batch["labels"] != -100).sum())
            if count == 0:
                continue
            if autocast is not None:
                with autocast():
                    loss = loss_fn(batch)
            else:
                loss = loss_fn(batch)
            total += float(loss) * count
            tokens += count
            n += 1
    finally:
        model.train(was_training)
    return {"loss": total / tokens if tokens else float("nan"), "tokens": tokens, "batches": n}


def bits_per_byte(loss_nats: float, bytes_per_token: float | None) -> float | None:
    """Bits per UTF-8 byte: loss / ln 2 * tokens / bytes (tokenizer-independent)."""
    if bytes_per_token is None or not bytes_per_token > 0 or not math.isfinite(loss_nats):
        return None
    return loss_nats / math.log(2) / bytes_per_token
