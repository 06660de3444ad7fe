"""`slm generate CKPT --prompt ...`: sample completions from a checkpoint (an HF folder of ours)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from slmkit.errors import SlmError

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes a uint64


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
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="weights dtype (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with all completions instead")
    code = parser.add_argument_group(
        "natural language to code (CodeFusion and masked-diffusion checkpoints, or decoders fine-tuned by "
        "task: ar-code)",
        "With --num-candidates (or a diffusion checkpoint) each --prompt is an utterance; the distinct "
        "candidates are printed best first with the model's own score. A decoder or a masked-diffusion model "
        "gets the utterance in its ar-code fine-tuning format.")
    code.add_argument("--num-candidates", "-n", type=int, default=None,
                      help="candidates per prompt (k draws, de-duplicated; default 1)")
    code.add_argument("--candidate-method", choices=["sample", "beam"], default="sample",
                      help="decoders: k samples ranked by log-probability, or beam search (default sample)")
    code.add_argument("--steps", type=int, default=None,
                      help="CodeFusion: sampling steps, strided over the model's T (default T); masked diffusion: "
                           "denoising steps, 1..--length (default --length: one token per step)")
    code.add_argument("--length", type=int, default=None, metavar="L",
                      help="masked diffusion: answer positions to fill (default: the length it was trained on)")
    code.add_argument("--block-size", type=int, default=None, metavar="B",
                      help="masked diffusion: fill the answer in blocks of B, left to right (must divide --length)")
    code.add_argument("--clamp", action="store_true",
                      help="CodeFusion: snap the predicted x0 to the nearest embedding at every step")
    code.add_argument("--intermediate-every", type=int, default=None, metavar="K",
                      help="diffusion: also print the top candidate's decode every K sampling steps")
    parser.set_defaults(handler=run)


def parse_device(value: str) -> str:
    """The torch device for `--device` (auto, cpu, cuda or cuda:N); SlmError naming the option otherwise."""
    from slmkit.device import resolve_device

    return str(resolve_device(value, where="--device", select=False))


def check_options(args: argparse.Namespace) -> str:
    """Check every option before anything is loaded or printed; return the device to use."""
    from slmkit.generate.sampling import SamplingConfig

    if args.max_new_tokens < 1:
        raise SlmError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    SamplingConfig(args.temperature, args.top_k, args.top_p).validate()
    if not 0 <= args.seed <= MAX_SEED:
        raise SlmError(f"--seed must be in [0, 2**64 - 1], got {args.seed}")
    for option, values in (("--prompt", args.prompt), ("--stop", args.stop)):
        for text in values:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise SlmError(f"{option} {text!r} is not valid UTF-8 text") from None
    return parse_device(args.device)


def run(args: argparse.Namespace) -> int:
    """Handler of `slm generate`."""
    import torch

    from slmkit.generate import generate
    from slmkit.interop.hf import load_hf_folder, model_special_ids
    from slmkit.pipeline.rundir import TOKENIZER_FILE, resolve_checkpoint
    from slmkit.tokenizer import load_tokenizer

    device = check_options(args)
    folder = resolve_checkpoint(args.ckpt)
    from slmkit.commands.candidates import run_candidates, wants_candidates

    if wants_candidates(args, folder):
        return run_candidates(args, folder, device)
    tok_file = folder / TOKENIZER_FILE
    if not tok_file.is_file():
        raise SlmError(f"{folder}: no {TOKENIZER_FILE}; save the checkpoint with its tokenizer")
    tokenizer = load_tokenizer(tok_file)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    model = load_hf_folder(folder, device=device, dtype=dtype)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise SlmError(f"{tok_file}: {tokenizer.get_vocab_size()} tokens but the model has only "
                       f"{model.config.vocab_size}; this tokenizer does not belong to this checkpoint")
    prompts = [p.replace("\\n", "\n") for p in args.prompt]
    longest = max(len(tokenizer.encode(p).ids) for p in prompts)
    if longest >= model.config.max_seq_len:  # refused before the prompt is echoed
        raise SlmError(f"--prompt of {longest} tokens does not fit the model context of {model.config.max_seq_len} "
                       "tokens (leave room for at least one new token); shorten the prompt")
    print(f"loaded {folder} ({model.num_params():,} params, {device}, {dtype}) in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
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
        eos_ids=model_special_ids(folder, tokenizer)[1],
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
