"""`slm export CKPT --format hf|gguf [--dtype ...] --out PATH [--force] [--json]`."""

from __future__ import annotations

import argparse
import json

from slmkit.commands.common import human_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a decoder checkpoint as a GGUF file (llama.cpp) or a clean HF folder",
        description="GGUF: one file that llama.cpp (llama-cpp-python, Ollama, LM Studio) runs with nothing else: "
        "llama family -> architecture llama, phi family -> phi2; weights in --dtype (f32, f16, bf16, or GGML's "
        "q8_0 / q4_0 blocks; norms and biases stay f32), the byte-level BPE vocabulary, merges, special tokens and "
        "chat template. HF: the checkpoint without the trainer's files, weights in f32, f16 or bf16, for "
        "transformers. CodeFusion, masked-diffusion and quantized checkpoints are refused. The output is written "
        "beside PATH and renamed when complete.",
    )
    parser.add_argument("ckpt", metavar="CKPT", help="checkpoint folder (e.g. runs/NAME/ckpt/latest, or an slm import)")
    parser.add_argument("--format", required=True, choices=["hf", "gguf"], help="gguf (a file) or hf (a folder)")
    parser.add_argument("--dtype", default="f32", metavar="DTYPE",
                        help="gguf: f32 | f16 | bf16 | q8_0 | q4_0; hf: f32 | f16 | bf16 (default f32)")
    parser.add_argument("--out", required=True, metavar="PATH", help="the .gguf file or the HF folder to write")
    parser.add_argument("--force", action="store_true", help="replace PATH when it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `slm export`."""
    from slmkit.interop.export import check_format_dtype, export_gguf, export_hf
    from slmkit.pipeline.rundir import resolve_checkpoint

    check_format_dtype(args.format, args.dtype)
    ckpt = resolve_checkpoint(args.ckpt)
    if args.format == "gguf":
        summary = export_gguf(ckpt, args.out, dtype=args.dtype, force=args.force)
    else:
        summary = export_hf(ckpt, args.out, dtype=args.dtype, force=args.force)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(summary["path"])
    types = ", ".join(f"{n} {name}" for name, n in summary.get("tensor_types", {}).items())
    detail = f"; tensors: {types}" if types else ""
    print(f"exported {summary['architecture']} as {summary['format']} {summary['dtype']}: "
          f"{human_bytes(summary['bytes'])}{detail}")
    if summary.get("f16_fallbacks"):
        print(f"kept in F16 (rows not a multiple of 32): {', '.join(summary['f16_fallbacks'])}")
    return 0
