"""`slm quantize CKPT --bits 8|4 [--group-size 32|64|128] [--symmetric] --out DIR`: weight-only quantization."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="int8 / int4 weight-only quantization of a checkpoint, with size and perplexity change",
        description="Quantize every Linear layer of a checkpoint (decoder, masked diffusion or CodeFusion) to int8 or "
        "int4 with group-wise scales (and zero points unless --symmetric); the embedding stays as it is. The folder "
        "loads in slm generate and slm eval like the checkpoint. Prints the size before/after and the perplexity "
        "change, measured on the run's validation split for a run's checkpoint (CodeFusion: its denoising loss), "
        "else on --ppl-source. "
        "Details: docs/quantization.md.",
    )
    parser.add_argument("ckpt", metavar="CKPT", help="checkpoint folder, or a run folder (uses ckpt/latest)")
    parser.add_argument("--bits", type=int, required=True, help="8 or 4")
    parser.add_argument("--group-size", type=int, default=None,
                        help="inputs per scale: 32, 64 or 128 (default: 8 bits one scale per output channel, which "
                             "torch's int8 kernel needs; 4 bits 64)")
    parser.add_argument("--symmetric", action="store_true", help="no zero points (default: asymmetric, min/max)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    parser.add_argument("--force", action="store_true", help="replace DIR when it exists and is not empty")
    parser.add_argument("--no-eval", action="store_true", help="skip the perplexity measurement")
    parser.add_argument("--ppl-source", default="python-docs", metavar="TYPE",
                        help="data source for checkpoints outside a run (default python-docs)")
    parser.add_argument("--limit", type=int, default=20, help="documents of --ppl-source to score (default 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `slm quantize`."""
    from slmkit.commands.common import human_bytes
    from slmkit.errors import SlmError
    from slmkit.interop.quantize import quantize_checkpoint
    from slmkit.pipeline.rundir import resolve_checkpoint

    if args.limit < 1:
        raise SlmError(f"--limit must be >= 1, got {args.limit}")
    ckpt = resolve_checkpoint(args.ckpt)
    s = quantize_checkpoint(ckpt, args.out, args.bits, args.group_size, args.symmetric, force=args.force,
                            evaluate=not args.no_eval, ppl_source=args.ppl_source, limit=args.limit)
    if args.json:
        print(json.dumps(s))
        return 0
    group = s["group_size"] or "channel"
    print(s["folder"])
    print(f"int{s['bits']} {'symmetric' if s['symmetric'] else 'asymmetric'}, group {group}: {s['layers']} layers")
    print(f"size   {human_bytes(s['bytes_before'])} -> {human_bytes(s['bytes_after'])} "
          f"({s['bytes_after'] / s['bytes_before']:.2f}x)")
    if "loss_delta_pct" in s:
        print(f"loss   {s['loss_before']:.4f} -> {s['loss_after']:.4f} ({s['loss_delta_pct']:+.2f}%) on {s['scored_on']} "
              "(CodeFusion's denoising loss)")
    if "ppl_delta_pct" in s:
        print(f"ppl    {s['ppl_before']:.4f} -> {s['ppl_after']:.4f} per {s['ppl_unit']} "
              f"({s['ppl_delta_pct']:+.2f}%) on {s['scored_on']}")
    return 0
