"""`slm generate CKPT --prompt ...`: sample completions from a checkpoint (an HF folder of ours)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from slmkit.errors import SlmError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample text from a checkpoint",
        description="Complete prompts with a checkpoint folder (config.json + model.safetensors + tokenizer.json) "
        "or a run folder (uses ckpt/latest). The completion streams to stdout; logs go to stderr.",
    )
    parser.add_argument("ckpt", metavar="CKPT", help="checkpoint folder, or a run folder with ckpt/latest")
    parser.add_argument("--prompt", "-p", action="append", required=True,
                        help="prompt text (repeat for a batch); '\\n' escapes are expanded")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not printed")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="weights dtype (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with all completions instead")
    parser.set_defaults(handler=run)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder: `path` itself, or `path`/ckpt/latest (a link or a file naming the step folder)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    latest = path / "ckpt" / "latest"
    if latest.is_dir() and (latest / "config.json").is_file():
        return latest
    if latest.is_file():
        target = path / "ckpt" / latest.read_text(encoding="utf-8").strip()
        if (target / "config.json").is_file():
            return target
    raise SlmError(f"{path}: not a checkpoint folder (no config.json) and no ckpt/latest inside")


def run(args: argparse.Namespace) -> int:
    """Handler of `slm generate`."""
    import torch
    from tokenizers import Tokenizer

    from slmkit.generate import generate
    from slmkit.interop.hf import load_hf_folder

    if args.max_new_tokens < 1:
        raise SlmError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    folder = resolve_checkpoint(args.ckpt)
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise SlmError(f"{folder}: no tokenizer.json; save the checkpoint with its tokenizer")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlmError("--device cuda: no CUDA device is available")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    model = load_hf_folder(folder, device=device, dtype=dtype)
    tokenizer = Tokenizer.from_file(str(tok_file))
    print(f"loaded {folder} ({model.num_params():,} params, {device}, {dtype}) in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    prompts = [p.replace("\\n", "\n") for p in args.prompt]
    stream_live = len(prompts) == 1 and not args.json
    if stream_live:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()

    def stream(row: int, delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    stats: dict = {}
    t0 = time.perf_counter()
    completions = generate(
        model, tokenizer, prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, stop=args.stop, stream=stream if stream_live else None, stats=stats,
    )
    seconds = time.perf_counter() - t0
    n_tokens = stats["new_tokens"]
    if args.json:
        print(json.dumps({"prompts": prompts, "completions": completions}))
    elif stream_live:
        sys.stdout.write("\n")
    else:
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            print(f"--- [{i}]\n{prompt}{completion}")
    print(f"{n_tokens} tokens in {seconds:.2f}s ({n_tokens / max(seconds, 1e-9):.1f} tok/s)", file=sys.stderr)
    return 0
