"""Load test of `slm serve`: continuous batching against the same server one request at a time.

    python benchmarks/serve_load.py [--model PATH|smollm2] [--requests 200] [--concurrency 16] [--max-tokens 32]

Bounded and loopback only: the server runs in this process on a free 127.0.0.1 port, a fixed number
of streamed chat requests is sent by `--concurrency` client threads (the real `openai` client), and
the run stops by itself. Twice, same prompts: `--max-batch = concurrency` (batching) and
`--max-batch 1` (batching off). Reports generated tokens/s, p50/p95 latency, p50/p95 time to first
token and failed requests, a ratio, and one JSON line. Goal: >= 3x throughput at 16 concurrent, p95
time to first token under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

QUESTIONS = ["What is a variable?", "Name three fruits.", "How do I list files in a folder?", "What is 7 times 8?",
             "Write a haiku about rain.", "What does a compiler do?", "Give me a tip for sleeping well.",
             "What is the capital of Italy?", "Explain recursion briefly.", "What is a prime number?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(app) -> tuple[object, threading.Thread, int]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, port


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run_load(served, max_batch: int, args: argparse.Namespace) -> dict:
    from openai import OpenAI

    from slmkit.serve.app import create_app

    server, thread, port = start(create_app(served, max_batch=max_batch, max_queue=args.requests))
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def one(i: int) -> dict:
        start_t = time.perf_counter()
        first = None
        tokens = 0
        try:
            stream = client.chat.completions.create(
                model=served.name, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                max_tokens=args.max_tokens, temperature=0, stream=True)
            for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - start_t
            return {"ok": True, "latency": time.perf_counter() - start_t, "ttft": first or 0.0, "tokens": tokens}
        except Exception as exc:  # counted as a failure, shown once
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    ok = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"]]
    if failed:
        print(f"  {len(failed)} failed, e.g. {failed[0]['error']}", file=sys.stderr)
    latency, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok]
    return {"max_batch": max_batch, "requests": len(results), "failed": len(failed), "seconds": wall,
            "generated_tokens": sum(r["tokens"] for r in ok), "tok_s": sum(r["tokens"] for r in ok) / wall,
            "latency_p50": percentile(latency, 50), "latency_p95": percentile(latency, 95),
            "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="a checkpoint folder, or smollm2 (imported on the fly)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--work", default="/tmp/slm-serve-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from slmkit.serve.app import load_served_model

    folder = Path(args.model)
    if args.model == "smollm2":
        from slmkit.cli import main as slm
        from slmkit.interop.gguf import smollm2_gguf_path

        folder = Path(args.work) / "smollm2"
        if not (folder / "config.json").is_file() and slm(["import", str(smollm2_gguf_path()), "--out", str(folder)]):
            raise SystemExit("import failed")
    served = load_served_model(folder, folder.name)
    rows = [run_load(served, args.concurrency, args), run_load(served, 1, args)]
    print(f"\n{served.name}: {args.requests} streamed chat requests, {args.concurrency} concurrent, "
          f"{args.max_tokens} max tokens, {args.threads} threads", file=sys.stderr)
    for row in rows:
        name = f"batching (max-batch {row['max_batch']})" if row["max_batch"] > 1 else "one at a time"
        print(f"  {name:<26} {row['tok_s']:>8.1f} tok/s  latency p50 {row['latency_p50']:.2f}s p95 "
              f"{row['latency_p95']:.2f}s  ttft p50 {row['ttft_p50']:.2f}s p95 {row['ttft_p95']:.2f}s  "
              f"failed {row['failed']}", file=sys.stderr)
    ratio = rows[0]["tok_s"] / rows[1]["tok_s"]
    print(f"  throughput ratio: {ratio:.2f}x", file=sys.stderr)
    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
           "torch": torch.__version__}
    print(json.dumps({"benchmark": "serve_load", "env": env, "model": served.name, "results": rows,
                      "ratio": ratio}))


if __name__ == "__main__":
    main()
