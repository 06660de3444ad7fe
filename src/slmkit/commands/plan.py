"""`slm plan`: compute-optimal model size and tokens for a budget, with time and memory."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from slmkit.commands.common import human_bytes
from slmkit.errors import SlmError

EPILOG = """examples:
  slm plan --flops 5.76e23 --law chinchilla           Chinchilla's Gopher budget: ~67B params, ~1.5T tokens
  slm plan --params 1.3e9 --json                       tokens, budget, FLOPs and memory per device for 1.3B
  slm plan --gpu-hours 1000 --gpu h100 --mfu 0.45 --gpus 8
  slm plan --flops 1e21 --inference-tokens 1e12        smaller model, more tokens, cheaper over its life
  slm plan --minutes 10 --machine here                 model size and steps for this machine
  slm plan --flops 1e20 --compare-laws                 every law side by side
  slm plan --flops 1e15 --law runs/sweep/fit.json      the law fitted by slm sweep isoflop

laws: chinchilla (approach 1, Table 3), chinchilla-parametric (approach 3), epoch (Besiroglu et al.'s
replication), kaplan; see docs/scaling.md."""


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _count(text: str) -> int:
    value = _number(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text}")
    return int(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="compute-optimal parameters and tokens for a budget, with FLOPs, loss, time and memory per device",
        description="Split a training budget between parameters N and tokens D by a scaling law, or answer the "
        "reverse question for a given N or D. Prints N, D, FLOPs (6ND plus attention for a LLaMA-style shape of "
        "that size), the predicted loss where the law has one, training time, and memory per device for "
        "weights, gradients, AdamW state and activations under DDP, ZeRO-2 and FSDP, with and without "
        "activation checkpointing.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=_number, metavar="C", help="training budget in FLOPs")
    budget.add_argument("--gpu-hours", type=_number, metavar="H", help="budget in GPU-hours (with --gpu, --mfu)")
    budget.add_argument("--minutes", type=_number, metavar="M", help="budget in minutes (with --machine here, or --gpu)")
    budget.add_argument("--params", type=_number, metavar="N", help="model size: the budget and tokens it implies")
    budget.add_argument("--tokens", type=_number, metavar="D", help="tokens: the budget and model size they imply")
    parser.add_argument("--law", default="chinchilla", metavar="NAME|FILE",
                        help="chinchilla | chinchilla-parametric | epoch | kaplan, or a fit.json (default chinchilla)")
    parser.add_argument("--compare-laws", action="store_true", help="also answer with every built-in law")
    parser.add_argument("--inference-tokens", type=_number, metavar="I",
                        help="tokens the model will serve: adds the inference-aware optimum and lifetime cost")
    parser.add_argument("--machine", choices=["here"], help="measure this machine's training throughput (--minutes)")
    parser.add_argument("--gpu", default="h100", metavar="NAME", help="GPU for time estimates (default h100)")
    parser.add_argument("--mfu", type=_number, default=0.4, metavar="M", help="assumed MFU on --gpu (default 0.4)")
    parser.add_argument("--gpus", type=_count, default=1, metavar="G", help="devices (default 1); memory is per device")
    parser.add_argument("--seq-len", type=_count, metavar="T", help="context (default 2048; 256 with --machine here)")
    parser.add_argument("--vocab-size", type=_count, metavar="V",
                        help="vocabulary of the shape (default 32000; 8192 with --machine here)")
    parser.add_argument("--micro-batch", type=_count, metavar="B",
                        help="sequences per device per forward (default 1; 16 with --machine here)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `slm plan`."""
    from slmkit.scaling.laws import get_law
    from slmkit.scaling.plan import builtin_laws, compare_laws, gpu_hardware, plan_for, plan_here

    here = args.machine == "here"
    if here and args.minutes is None:
        raise SlmError("--machine here measures a time budget: give --minutes M")
    seq_len = args.seq_len or (256 if here else 2048)
    vocab = args.vocab_size or (8192 if here else 32000)
    batch = args.micro_batch or (16 if here else 1)
    law = get_law(args.law)
    log = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    if here:
        plan = plan_here(law, args.minutes, seq_len=seq_len, vocab_size=vocab, batch_size=batch,
                         inference_tokens=args.inference_tokens, log=log)
        question: dict[str, Any] = {"flops": plan["budget_flops"]}
    else:
        hardware = gpu_hardware(args.gpu, args.mfu, args.gpus)
        question = {"params": args.params, "tokens": args.tokens, "flops": args.flops}
        if args.gpu_hours is not None:
            question["flops"] = args.gpu_hours * 3600 * hardware.flops_per_second
        elif args.minutes is not None:
            question["flops"] = args.minutes * 60 * hardware.devices * hardware.flops_per_second
        plan = plan_for(law, hardware=hardware, seq_len=seq_len, vocab_size=vocab, micro_batch=batch,
                        inference_tokens=args.inference_tokens, **question)
    if args.compare_laws or args.params is not None or args.tokens is not None:
        # the reverse questions are answered by every law: they disagree most there
        plan["laws"] = compare_laws(builtin_laws(), seq_len=seq_len, vocab_size=vocab, micro_batch=batch,
                                    **{k: v for k, v in question.items() if v is not None})
    if args.json:
        print(json.dumps(plan))
    else:
        print_plan(plan)
    return 0


# ---------------------------------------------------------------------------- rendering


def _si(value: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def print_plan(plan: dict[str, Any]) -> None:
    """The plan as a short report."""
    detail = plan["law_detail"]
    coefficients = ", ".join(f"{k} {v:.4g}" for k, v in detail.get("coefficients", {}).items())
    print(f"law: {plan['law']} ({detail['source']})")
    print(f"  coefficients: {coefficients}")
    if "loss_coefficients" in detail:
        print("  loss: " + ", ".join(f"{k} {v:.4g}" for k, v in detail["loss_coefficients"].items()))
    m = plan["model"]
    loss = f"{plan['loss']:.3f} nats/token ({detail.get('loss_note', '')})" if plan["loss"] is not None else \
        "none (this law predicts no loss)"
    rows = [
        ("budget", f"{plan['budget_flops']:.3g} FLOPs"),
        ("params", f"{_si(plan['params'])} {detail['param_count']}  (shape: {m['n_layers']} layers x "
                   f"{m['d_model']} wide, {m['n_heads']} heads, MLP {m['ffn_hidden']}, vocab {m['vocab_size']}: "
                   + (f"{_si(m['params'])})" if detail["param_count"] == "total" else
                      f"{_si(m['params_counted'])} {detail['param_count']}, {_si(m['params'])} in all)")),
        ("tokens", f"{_si(plan['tokens'])}  ({plan['tokens_per_param']:.1f} tokens per parameter)"),
        ("FLOPs", f"{plan['flops']:.3g}  (6ND {plan['flops_6nd']:.3g} + attention {plan['attention_flops']:.3g} "
                  f"at context {m['seq_len']})"),
        ("loss", loss),
    ]
    if "time" in plan:
        t = plan["time"]
        rows.append(("time", f"{_duration(t['seconds'])} on {t['hardware']} ({t['gpu_hours']:,.1f} device-hours)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if "machine" in plan:
        _print_machine(plan["machine"])
    if "inference" in plan:
        _print_inference(plan["inference"])
    _print_memory(plan["memory"])
    if "laws" in plan:
        _print_laws(plan["laws"])


def _print_machine(machine: dict[str, Any]) -> None:
    print(f"\nthis machine: {machine['tokens_per_second']:,.0f} tok/s, {machine['flops_per_second'] / 1e9:,.1f} "
          f"GFLOP/s ({machine['device']}, {machine['precision']}); in {machine['minutes']:g} min: "
          f"{_si(machine['tokens_in_budget'])} tokens = {machine['steps']:,} steps of "
          f"{machine['batch_size']} x {machine['seq_len']}")
    if machine.get("note"):
        print(f"  note: {machine['note']}")
    print(f"  recipe: {machine['recipe_overrides']}")


def _print_inference(inf: dict[str, Any]) -> None:
    print(f"\ninference-aware (same loss {inf['loss']:.3f} by {inf['loss_model']}): {_si(inf['params'])} params, "
          f"{_si(inf['tokens'])} tokens; lifetime {inf['total_flops']:.3g} FLOPs (train {inf['train_flops']:.3g} + "
          f"inference {inf['inference_flops']:.3g}) vs {inf['compute_optimal_total_flops']:.3g} for the "
          f"compute-optimal model: {100 * inf['saving']:.1f}% less")


def _print_memory(memory: dict[str, Any]) -> None:
    print(f"\nmemory per device ({memory['devices']} device(s), micro-batch {memory['micro_batch']} x "
          f"{memory['seq_len']} tokens; fp32 weights, grads and AdamW moments, bf16 activations):")
    header = ("strategy", "act. ckpt", "weights", "grads", "optimizer", "activations", "peak")
    _print_table(header, [(r["strategy"], "yes" if r["activation_checkpointing"] else "no",
                           *(human_bytes(r[k]) for k in ("weights", "grads", "optimizer", "activations", "total")))
                          for r in memory["rows"]], text_columns=2)
    print("  (peak: the largest total over the phases of a step, not the sum of the columns)")


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], text_columns: int) -> None:
    """Aligned columns: the first `text_columns` left-aligned, numbers right-aligned."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  " + "  ".join(cell.ljust(w) if i < text_columns else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))


def _print_laws(rows: list[dict[str, Any]]) -> None:
    print("\nby law:")
    header = ("law", "params", "tokens", "tokens/param", "budget", "loss")
    _print_table(header, [(r["law"], _si(r["params"]), _si(r["tokens"]), f"{r['tokens_per_param']:.1f}",
                           f"{r['budget_flops']:.3g}", "-" if r["loss"] is None else f"{r['loss']:.3f}")
                          for r in rows], text_columns=1)
    for r in rows:
        print(f"  {r['law']}: {r['formula']}")
