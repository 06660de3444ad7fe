"""Training-step throughput (forward + backward) of our Decoder vs transformers on identical weights.

    python benchmarks/forward_backward.py [--preset tiny-llama] [--batch 4] [--seq-len 256]

Both compute the mean next-token cross-entropy of the same batch and its gradients. Prints tok/s
of both and the ratio (ours / transformers), then a JSON line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, environment, paired_best_seconds, report, setup  # noqa: E402


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()

    ours, hf, _ = setup(args)
    ours.train()
    hf.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq_len + 1), generator=gen).to(args.device)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step_ours() -> None:
        ours.zero_grad(set_to_none=True)
        ours.loss({"input_ids": inputs, "labels": targets}).backward()

    def step_hf() -> None:
        hf.zero_grad(set_to_none=True)
        logits = hf(inputs).logits  # transformers' own loss shifts labels; compute the same loss here
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()

    with torch.no_grad():
        a = ours.loss({"input_ids": inputs, "labels": targets}).item()
        b = torch.nn.functional.cross_entropy(hf(inputs).logits.float().flatten(0, 1), targets.flatten()).item()
    assert abs(a - b) < 1e-3, (a, b)
    tokens = args.batch * args.seq_len
    ours_s, hf_s = paired_best_seconds(step_ours, step_hf, args.repeats, args.device)
    rows = [{
        "case": f"train step b{args.batch} s{args.seq_len}",
        "batch": args.batch,
        "seq_len": args.seq_len,
        "ours_tok_s": tokens / ours_s,
        "hf_tok_s": tokens / hf_s,
        "ratio": hf_s / ours_s,
    }]
    report("forward_backward", rows, environment(args))


if __name__ == "__main__":
    main()
