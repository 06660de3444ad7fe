"""Training throughput of CodeFusion (our trainer's step) vs a transformers decoder of the same size.

CodeFusion has no reference implementation to race (the paper released none), so the reference is
the best-understood training step of the same parameter count: transformers' LlamaForCausalLM with
torch AdamW. Both train on random batches in the same process, alternating timed windows; the ratio
compares achieved model FLOP/s (CodeFusion: `codefusion_forward_flops` x 3 per example, decoder:
6N + attention per token), so "1.0" means CodeFusion's step uses the hardware as well as the decoder's.

    python benchmarks/codefusion_train.py                               # CPU: codefusion-75m, batch 4
    python benchmarks/codefusion_train.py --preset codefusion-tiny --batch-size 32
    python benchmarks/codefusion_train.py --device cuda --batch-size 64 --dtype bf16

Prints one line per side (examples/s, tok/s, FLOP/s) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="codefusion-75m")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per window")
    p.add_argument("--repeats", type=int, default=2, help="timed windows per side; the best is kept")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def matching_decoder(n_params: int, d_model: int, n_heads: int, vocab: int, seq_len: int):
    """A LLaMA config of d_model with the layer count that comes closest to n_params."""
    from slmkit.models import get_preset
    from slmkit.models.accounting import count_params

    base = get_preset("tiny-llama").replace(d_model=d_model, n_heads=n_heads, vocab_size=vocab, max_seq_len=seq_len,
                                            n_layers=1)
    return min((base.replace(n_layers=n) for n in range(1, 64)), key=lambda c: abs(count_params(c) - n_params))


def step_fn(model: torch.nn.Module, loss: Callable[[], torch.Tensor], autocast) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=False)

    def step() -> None:
        with autocast():
            value = loss()
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def best_window(step: Callable[[], None], steps: int, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    import tempfile

    import transformers

    from slmkit.device import autocast_for
    from slmkit.interop.hf import save_hf_folder
    from slmkit.models import build_model
    from slmkit.models.accounting import count_params, flops_per_token
    from slmkit.models.codefusion import build_codefusion, codefusion_forward_flops, get_codefusion_preset

    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    autocast = autocast_for(args.dtype, dev)
    torch.manual_seed(0)
    cfg = get_codefusion_preset(args.preset)
    cf = build_codefusion(cfg, device=dev).train()
    B, S, L = args.batch_size, cfg.max_utterance_len, cfg.code_len
    batch = {"utterance_ids": torch.randint(2, cfg.vocab_size, (B, S), device=dev),
             "code_ids": torch.randint(2, cfg.vocab_size, (B, L), device=dev)}
    cf_step = step_fn(cf, lambda: cf.loss(batch)["loss"], autocast)
    cf_flops = codefusion_forward_flops(cfg, S, training=True) * B

    seq = S + L
    dcfg = matching_decoder(cf.num_params(), cfg.d_model, cfg.n_heads, cfg.vocab_size, seq)
    with tempfile.TemporaryDirectory() as folder:
        save_hf_folder(build_model(dcfg), folder)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder).to(dev).train()
    ids = torch.randint(0, dcfg.vocab_size, (B, seq), device=dev)
    hf_step = step_fn(hf, lambda: hf(input_ids=ids, labels=ids).loss, autocast)
    hf_flops = flops_per_token(dcfg, seq, training=True) * B * seq

    cf_step(), hf_step()  # warm-up
    cf_s, hf_s = [], []
    for _ in range(args.repeats):
        cf_s.append(best_window(cf_step, args.steps, args.device))
        hf_s.append(best_window(hf_step, args.steps, args.device))
    cf_t, hf_t = min(cf_s), min(hf_s)
    rows = [
        {"side": f"codefusion ({args.preset})", "params": cf.num_params(), "examples_s": B / cf_t,
         "tok_s": B * (S + L) / cf_t, "flop_s": cf_flops / cf_t},
        {"side": f"transformers llama ({dcfg.n_layers} x d{dcfg.d_model})", "params": count_params(dcfg),
         "examples_s": B / hf_t, "tok_s": B * seq / hf_t, "flop_s": hf_flops / hf_t},
    ]
    ratio = rows[0]["flop_s"] / rows[1]["flop_s"]
    env = {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": args.dtype,
           "batch_size": B, "utterance_len": S, "code_len": L}
    print(f"codefusion training step  ({args.preset}, {args.dtype}, {env['device']}, batch {B})")
    for row in rows:
        print(f"  {row['side']:<40} {row['params']:>12,} params  {row['examples_s']:8.2f} ex/s  "
              f"{row['tok_s']:10.1f} tok/s  {row['flop_s'] / 1e9:8.2f} GFLOP/s")
    print(f"  achieved FLOP/s ratio codefusion / transformers: {ratio:.2f}x")
    print(json.dumps({"benchmark": "codefusion_train", "env": env, "results": rows, "ratio": ratio}))


if __name__ == "__main__":
    main()
