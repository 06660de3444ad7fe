"""Results files of `slm eval`: RESULTS.json, RESULTS.samples.jsonl (one line per document) and
RESULTS.md (a markdown table; several models side by side with --compare)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json, atomic_write_text


def companion_paths(out: Path) -> dict[str, Path]:
    """The three files one --out FILE names."""
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {"results": out, "samples": stem.with_name(stem.name + ".samples.jsonl"),
            "table": stem.with_name(stem.name + ".md")}


def check_writable(out: Path, force: bool) -> None:
    """Refuse to overwrite any of the files (unless force) before anything runs."""
    if out.is_dir():
        raise SlmError(f"--out {out} is a folder; name a file such as {out / 'results.json'}")
    existing = [str(p) for p in companion_paths(out).values() if p.exists()]
    if existing and not force:
        raise SlmError(f"{existing[0]} exists; pass --force to overwrite it (or choose another --out)")
    if not out.parent.exists():
        raise SlmError(f"--out {out}: folder {out.parent} does not exist")


def write_results(out: Path, results: dict, samples: list[dict], others: list[dict] | None = None) -> dict[str, Path]:
    """Write the results JSON, the samples JSONL and the markdown table (each atomically)."""
    paths = companion_paths(out)
    atomic_write_text(paths["samples"], "".join(json.dumps(s, default=str) + "\n" for s in samples))
    atomic_write_text(paths["table"], markdown_table([results, *(others or [])]) + "\n")
    atomic_write_json(paths["results"], results)
    return paths


def load_results(path: Path) -> dict:
    """A results JSON written by `slm eval --out` (for --compare)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlmError(f"{path}: not a readable results JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise SlmError(f"{path}: not an `slm eval` results file (no 'tasks' object)")
    return data


def _cell(metric: dict | None) -> str:
    if not metric or metric.get("value") is None or not math.isfinite(metric["value"]):
        return "-"
    value, err = metric["value"], metric.get("stderr")
    text = f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return f"{text} ± {err:.4f}" if err is not None and math.isfinite(err) else text


def markdown_table(runs: list[dict]) -> str:
    """| task | metric | n | model A | model B | ... | chance |, one row per task and metric."""
    names = [r.get("model", {}).get("name", f"model {i + 1}") for i, r in enumerate(runs)]
    header = ["task", "metric", "n", *names, "chance"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    for task in order:
        entries = [r["tasks"].get(task, {}) for r in runs]
        skipped = next((e["skipped"] for e in entries if "skipped" in e), None)
        metrics = list(dict.fromkeys(m for e in entries for m in e.get("metrics", {})))
        if not metrics and skipped:
            lines.append(f"| {task} | skipped | - | " + " | ".join("-" for _ in runs) + " | - |")
            continue
        for metric in metrics:
            n = next((e.get("n") for e in entries if e.get("n") is not None), "-")
            chance = next((e.get("chance") for e in entries if e.get("chance") is not None), None)
            chance_text = f"{chance:.4f}" if chance is not None and metric.startswith("acc") else "-"
            cells = [_cell(e.get("metrics", {}).get(metric)) for e in entries]
            lines.append(f"| {task} | {metric} | {n} | " + " | ".join(cells) + f" | {chance_text} |")
    return "\n".join(lines)


def summary_lines(results: dict) -> list[str]:
    """One line per task for the terminal."""
    out = []
    for name, entry in results["tasks"].items():
        if "skipped" in entry:
            out.append(f"{name}: skipped ({entry['skipped']})")
            continue
        shown = ", ".join(f"{m} {_cell(v)}" for m, v in entry["metrics"].items())
        out.append(f"{name}: {shown} (n={entry['n']}, {entry['num_fewshot']}-shot, {entry['seconds']:.1f} s)")
    return out


def results_entry(value: Any) -> Any:
    """JSON-safe copy (NaN -> None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: results_entry(v) for k, v in value.items()}
    if isinstance(value, list):
        return [results_entry(v) for v in value]
    return value
