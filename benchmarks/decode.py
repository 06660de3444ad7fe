"""Decode throughput: our static-KV-cache generate vs transformers' `generate`, same weights and prompts.

    python benchmarks/decode.py [--preset tiny-llama] [--batch 1 8] [--new-tokens 128]

Greedy decoding of exactly --new-tokens tokens after a --prompt-len random prompt. Prints tok/s of
both and the ratio (ours / transformers), then a JSON line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, environment, paired_best_seconds, report, setup  # noqa: E402


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    from slmkit.generate import SamplingConfig, generate_tokens

    ours, hf, _ = setup(args)
    greedy = SamplingConfig(temperature=0.0)
    rows = []
    for batch in args.batch:
        gen = torch.Generator().manual_seed(batch)
        prompt = torch.randint(0, ours.config.vocab_size, (batch, args.prompt_len), generator=gen)
        on_device = prompt.to(args.device)

        def run_ours() -> None:
            out = generate_tokens(ours, prompt.tolist(), args.new_tokens, greedy)
            assert all(len(row) == args.new_tokens for row in out)

        @torch.inference_mode()
        def run_hf() -> None:
            hf.generate(on_device, attention_mask=torch.ones_like(on_device), do_sample=False,
                        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)

        tokens = batch * args.new_tokens
        ours_s, hf_s = paired_best_seconds(run_ours, run_hf, args.repeats, args.device)
        rows.append({
            "case": f"decode batch {batch}",
            "batch": batch,
            "new_tokens": args.new_tokens,
            "ours_tok_s": tokens / ours_s,
            "hf_tok_s": tokens / hf_s,
            "ratio": hf_s / ours_s,
        })
    report("decode", rows, environment(args))


if __name__ == "__main__":
    main()
