"""Results files of `slm eval`: RESULTS.json, RESULTS.samples.jsonl (one line per document),
RESULTS.md (a markdown table; several models side by side with --compare), when a codefusion-*
task recorded intermediate decodes (--intermediate-every) RESULTS.steps.png, and with --steps-sweep
RESULTS.sweep.png (top-5 against sampling steps, one panel per task, a line per diffusion model)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text


def companion_paths(out: Path) -> dict[str, Path]:
    """The files one --out FILE names (the steps picture only with intermediate decodes)."""
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {"results": out, "samples": stem.with_name(stem.name + ".samples.jsonl"),
            "table": stem.with_name(stem.name + ".md"), "steps": stem.with_name(stem.name + ".steps.png"),
            "sweep": stem.with_name(stem.name + ".sweep.png")}


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
    """Write the results JSON, the samples JSONL, the markdown table and the steps picture (each atomically);
    the paths written."""
    paths = companion_paths(out)
    atomic_write_text(paths["samples"], "".join(json.dumps(s, default=str) + "\n" for s in samples))
    atomic_write_text(paths["table"], markdown_table([results, *(others or [])]) + "\n")
    runs = [results, *(others or [])]
    for key, picture in (("steps", steps_plot_png(runs)), ("sweep", sweep_plot_png(runs))):
        if picture is None:
            paths.pop(key).unlink(missing_ok=True)  # an older run's picture (overwritten with --force)
        else:
            atomic_write_bytes(paths[key], picture)
    atomic_write_json(paths["results"], results)
    return paths


def steps_plot_png(runs: list[dict]) -> bytes | None:
    """PNG of each run's and task's intermediate-decode curve (edit distance to the final output against
    sampling step); None when no task recorded one."""
    curves = [(f"{run.get('model', {}).get('name', 'model')}: {task}", entry["intermediate_curve"])
              for run in runs for task, entry in run["tasks"].items() if entry.get("intermediate_curve")]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for label, curve in curves:
        ax.plot(curve["step"], curve["edit_distance"], "o-", label=label, markersize=4)
    ax.set_xlabel("sampling step")
    ax.set_ylabel("normalized edit distance to the final output")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def sweep_plot_png(runs: list[dict]) -> bytes | None:
    """PNG of top-5 against sampling steps (--steps-sweep): one panel per task, one line per model;
    None when no run swept."""
    tasks = list(dict.fromkeys(t for run in runs for t in (run.get("steps_sweep") or {})))
    if not tasks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4), constrained_layout=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for run in runs:
            points = (run.get("steps_sweep") or {}).get(task)
            if points:
                ax.plot([p["steps"] for p in points], [p["top5"] for p in points], "o-", markersize=4,
                        label=run.get("model", {}).get("name", "model"))
        steps = sorted({p["steps"] for run in runs for p in (run.get("steps_sweep") or {}).get(task, [])})
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])  # the swept counts, written plainly
        ax.minorticks_off()
        ax.set_xlabel("sampling steps")
        ax.set_ylabel("top-5")
        ax.set_title(task)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def sweep_lines(runs: list[dict]) -> list[str]:
    """Markdown rows `| task | topK @ S steps | ... |` for the runs that have a --steps-sweep."""
    lines = []
    tasks = list(dict.fromkeys(t for run in runs for t in (run.get("steps_sweep") or {})))
    for task in tasks:
        steps = sorted({p["steps"] for run in runs for p in (run.get("steps_sweep") or {}).get(task, [])})
        for s in steps:
            for metric in ("top1", "top3", "top5", "seconds_per_query"):
                cells = []
                for run in runs:
                    point = next((p for p in (run.get("steps_sweep") or {}).get(task, []) if p["steps"] == s), None)
                    cells.append(_cell({"value": point[metric]}) if point and point.get(metric) is not None else "-")
                lines.append(f"| {task} | {metric} @ {s} steps | - | " + " | ".join(cells) + " | - |")
    return lines


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
    """| task | metric | n | model A | model B | ... | chance |, one row per task and metric; with codefusion-*
    tasks also seconds per query, and the models' parameters and training FLOPs."""
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
            n = next((e.get("metric_n", {}).get(metric, e["n"]) for e in entries if e.get("n") is not None), "-")
            chance = next((e.get("chance") for e in entries if e.get("chance") is not None), None)
            chance_text = f"{chance:.4f}" if chance is not None and metric.startswith("acc") else "-"
            cells = [_cell(e.get("metrics", {}).get(metric)) for e in entries]
            lines.append(f"| {task} | {metric} | {n} | " + " | ".join(cells) + f" | {chance_text} |")
        if any("seconds_per_query" in e for e in entries):
            cells = [_cell({"value": e.get("seconds_per_query")}) for e in entries]
            lines.append(f"| {task} | seconds_per_query | {n} | " + " | ".join(cells) + " | - |")
    if any("seconds_per_query" in e for r in runs for e in r["tasks"].values()):
        for key, shown in (("params", _count), ("train_flops", _flops)):
            cells = [shown(r.get("model", {}).get(key)) for r in runs]
            lines.append(f"| model | {key} | - | " + " | ".join(cells) + " | - |")
    return "\n".join([*lines, *sweep_lines(runs)])


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a"


def _flops(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


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
