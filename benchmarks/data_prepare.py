"""Benchmark: MB/s of `prepare_data` on python-stdlib vs plain HF `tokenizers` batch encoding.

The tokenizer is trained beforehand (not timed). Both sides see the same texts in the same process;
the prepare side includes reading the files, dedup, hashing, the mixture and writing shards.
Prints a short table and one JSON line. Goal: prepare >= 0.8 x the raw tokenizer speed.

    python benchmarks/data_prepare.py [--repeats 3] [--out /tmp/bench-data]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from slmkit.config import recipe_from_dict
from slmkit.data.prepare import prepare_data
from slmkit.data.sources import load_source
from slmkit.tokenizer import load_tokenizer, train_tokenizer


def best_time(fn, repeats: int) -> float:
    """Fastest of `repeats` wall-clock runs of fn()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--out", help="run folder (default: a temp folder, removed afterwards)")
    args = parser.parse_args()

    recipe = recipe_from_dict(
        {
            "name": "bench-data",
            "tokenizer": {"vocab_size": args.vocab_size, "max_train_bytes": 5_000_000},
            "data": {"sources": [{"name": "stdlib", "type": "python-stdlib"}], "val_fraction": 0.02},
        }
    )
    run_dir = Path(args.out or tempfile.mkdtemp(prefix="slm-bench-"))
    try:
        train_tokenizer(recipe, run_dir, progress=False)
        tok = load_tokenizer(run_dir / "tokenizer.json")
        tok.encode_special_tokens = True
        texts = [d.text for d in load_source(recipe.data.sources[0]).docs]
        megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6

        def prepare() -> None:
            shutil.rmtree(run_dir / "data", ignore_errors=True)
            prepare_data(recipe, run_dir, progress=False)

        raw = best_time(lambda: tok.encode_batch(texts, add_special_tokens=False), args.repeats)
        raw_fast = best_time(lambda: tok.encode_batch_fast(texts, add_special_tokens=False), args.repeats)
        prep = best_time(prepare, args.repeats)
    finally:
        if not args.out:
            shutil.rmtree(run_dir, ignore_errors=True)

    result = {
        "benchmark": "data_prepare",
        "source": "python-stdlib",
        "megabytes": round(megabytes, 2),
        "docs": len(texts),
        "cores": os.cpu_count(),
        "raw_encode_batch_mb_s": round(megabytes / raw, 2),
        "raw_encode_batch_fast_mb_s": round(megabytes / raw_fast, 2),
        "prepare_mb_s": round(megabytes / prep, 2),
        "ratio_vs_encode_batch": round(raw / prep, 3),
        "ratio_vs_encode_batch_fast": round(raw_fast / prep, 3),
        "goal": 0.8,
    }
    print(f"text: {megabytes:.1f} MB in {len(texts)} docs, {os.cpu_count()} cores")
    print(f"tokenizers encode_batch       {result['raw_encode_batch_mb_s']:8.2f} MB/s")
    print(f"tokenizers encode_batch_fast  {result['raw_encode_batch_fast_mb_s']:8.2f} MB/s")
    print(f"slm data prepare              {result['prepare_mb_s']:8.2f} MB/s")
    print(f"ratio prepare / encode_batch  {result['ratio_vs_encode_batch']:8.3f}  (goal >= 0.8)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
