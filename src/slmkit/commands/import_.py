"""`slm import FILE.gguf --out DIR [--force] [--json]`: a LLaMA GGUF file becomes a local HF folder."""

from __future__ import annotations

import argparse
import json

from slmkit.errors import SlmError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="convert a LLaMA-architecture GGUF file into an HF model folder",
        description="Dequantize a llama.cpp GGUF file (architecture llama; tensor types F32, F16, BF16, Q8_0, "
        "Q4_0, Q4_1) into a folder with config.json, model.safetensors (fp32), generation_config.json and the "
        "tokenizer (tokenizer.json, tokenizer_config.json with the chat template). The folder loads in "
        "`slm generate`, transformers and lm-eval.",
    )
    parser.add_argument("file", metavar="FILE.gguf", help="the GGUF file to import")
    parser.add_argument("--out", required=True, metavar="DIR", help="the model folder to write")
    parser.add_argument("--force", action="store_true", help="replace DIR when it exists and is not empty")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `slm import`."""
    from slmkit.interop.gguf import import_gguf

    if not args.out.strip():
        raise SlmError("--out must name a folder, got an empty string")
    summary = import_gguf(args.file, args.out, force=args.force)
    if args.json:
        print(json.dumps(summary))
    else:
        tied = ", tied embeddings" if summary["tied_embeddings"] else ""
        print(summary["folder"])
        print(f"imported {summary['architecture']}: {summary['params']:,} params, {summary['layers']} layers, "
              f"d_model {summary['d_model']}, vocab {summary['vocab_size']}, context {summary['context']}{tied}")
    return 0
