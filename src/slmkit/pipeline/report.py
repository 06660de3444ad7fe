"""RUN/report.html: one self-contained page with the loss curve, the numbers, the settings and samples.

Inputs (all optional except recipe.yaml): `RunDir.report_inputs()` (metrics, eval results, samples,
data manifest). The loss picture is drawn with matplotlib (Agg), saved as RUN/loss.png and
embedded in the page as base64, so the HTML file can be mailed or opened anywhere on its own.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import time
from pathlib import Path
from typing import Any

from slmkit.fileio import atomic_write_bytes, atomic_write_text
from slmkit.pipeline.rundir import RunDir

_MARK = "<!-- slmkit-report inputs="
_LAYOUT_VERSION = b"2"  # bump when the page changes, so existing reports are redrawn


def inputs_fingerprint(run: str | Path | RunDir) -> str:
    """Hash of the files the report is made from; the report is current when it records the same."""
    run = RunDir.of(run)
    h = hashlib.sha256(_LAYOUT_VERSION)
    for path in run.report_inputs():
        h.update(run.label(path).encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:16]


def report_is_current(run: str | Path | RunDir) -> bool:
    """True when RUN/report.html exists and was made from the current inputs."""
    run = RunDir.of(run)
    path = run.report
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    return first.startswith(_MARK) and first[len(_MARK) :].split(" ", 1)[0] == inputs_fingerprint(run)


# --------------------------------------------------------------------------- plot


def loss_plot_png(metrics: list[dict[str, Any]], unigram_loss: float | None = None) -> bytes | None:
    """PNG bytes of train/val loss against step (and the unigram baseline), None without data."""
    train = [(e["step"], e["loss"]) for e in metrics if _finite(e.get("loss")) and "step" in e]
    val = [(e["step"], e["val_loss"]) for e in metrics if _finite(e.get("val_loss")) and "step" in e]
    lr = [(e["step"], e["lr"]) for e in metrics if _finite(e.get("lr")) and "step" in e]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(7.5, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", color="#d62728", markersize=4)
    if unigram_loss is not None and math.isfinite(unigram_loss):
        ax.axhline(unigram_loss, linestyle="--", color="#7f7f7f", label="unigram baseline (val)")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if lr:
        ax_lr.plot(*zip(*lr), color="#2ca02c", linewidth=1.0)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- html pieces

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; border-radius: 4px; }
.sample pre { margin: 0; } .prompt { color: #555; } .completion { color: #0b5394; font-weight: 600; }
img { max-width: 100%; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{_esc(k)}</th><td{'' if isinstance(v, str) else ' class=num'}>{_esc(_fmt(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>"


def _eval_table(val: dict[str, Any]) -> str:
    from slmkit.eval.perplexity import val_rows

    head = "<tr><th></th><th>loss (nats/token)</th><th>bits per byte</th><th>perplexity</th><th>tokens</th></tr>"
    rows = []
    for r in val_rows(val):
        cells = [_fmt(r["loss"]), _fmt(r["bpb"]), _fmt(r["ppl"], 2), _fmt(r["tokens"])]
        rows.append(f"<tr><th>{_esc(r['name'])}</th>" + "".join(f"<td class='num'>{_esc(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _tasks_table(results: dict[str, Any]) -> str:
    """The benchmark table (eval/tasks.json): task, metric, n, value +- stderr, random-guess baseline."""
    from slmkit.eval.results import markdown_table

    lines = markdown_table([results]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = ["<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in header) + "</tr>"]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append("<tr>" + "".join(f"<td{' class=num' if i >= 2 else ''}>{_esc(c)}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    return f"<table>{''.join(rows)}</table>"


def _samples_html(samples: dict[str, Any]) -> str:
    parts = []
    for i, item in enumerate(samples.get("samples", []), start=1):
        parts.append(
            f"<div class='sample'><h3>Sample {i}</h3><pre><span class='prompt'>{_esc(item.get('prompt', ''))}</span>"
            f"<span class='completion'>{_esc(item.get('completion', ''))}</span></pre></div>"
        )
    settings = samples.get("settings", {})
    note = ", ".join(f"{_esc(k)}={_esc(v)}" for k, v in settings.items())
    return (f"<p class='sub'>{note}; prompt in grey, model output in blue.</p>" if note else "") + "".join(parts)


def summary_rows(metrics: list[dict[str, Any]], val: dict | None, manifest: dict | None) -> list:
    """(label, value) rows: model size, steps, tokens seen, throughput, data size."""
    train = [e for e in metrics if "loss" in e]
    last = train[-1] if train else {}
    rows: list[tuple[str, Any]] = []
    if val:
        params = val.get("params")
        rows.append(("parameters", f"{params / 1e6:.2f}M ({params:,})" if params else None))
        rows.append(("checkpoint", val.get("checkpoint")))
    if val and not last:
        rows.append(("steps trained", val.get("step")))
    if last:
        rows += [("steps trained", last.get("step")), ("tokens trained", last.get("tokens"))]
        rows.append(("last train loss", last.get("loss")))
        if _finite(last.get("tok_per_s")):
            rows.append(("throughput (tokens/s)", round(last["tok_per_s"])))
        if _finite(last.get("mfu")):
            rows.append(("MFU", f"{100 * last['mfu']:.1f}%"))
        if _finite(last.get("elapsed")):
            rows.append(("training time", _duration(last["elapsed"])))
    splits = (manifest or {}).get("splits", {})
    for split in ("train", "val"):
        if split in splits:
            rows.append((f"{split} split tokens", splits[split].get("tokens")))
    return [(k, v) for k, v in rows if v is not None]


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --------------------------------------------------------------------------- page


def build_report(run: str | Path | RunDir) -> str:
    """The report page of a run folder as an HTML string (also writes RUN/loss.png when there is data)."""
    from slmkit.train.metrics import read_metrics

    run = RunDir.of(run)
    run_dir = run.root
    recipe_text = run.recipe.read_text(encoding="utf-8") if run.recipe.is_file() else ""
    metrics = read_metrics(run)
    val = run.read_json(run.val_results)
    samples = run.read_json(run.samples_json)
    manifest = run.read_json(run.manifest)
    unigram = (val or {}).get("unigram", {}).get("loss")
    png = loss_plot_png(metrics, unigram)
    name = run_dir.name
    for line in recipe_text.splitlines():
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip() or name
            break

    written = time.strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>slmkit run: {_esc(name)}</h1>",
            f"<p class='sub'>{_esc(run_dir.resolve())} &middot; report written {_esc(written)}</p>"]
    rows = summary_rows(metrics, val, manifest)
    if rows:
        body += ["<h2>Summary</h2>", _table(rows)]
    if val:
        body += ["<h2>Validation</h2>", _eval_table(val)]
    tasks = run.read_json(run.task_results)
    if isinstance(tasks, dict) and isinstance(tasks.get("tasks"), dict):
        body += ["<h2>Benchmarks</h2>", _tasks_table(tasks)]
    body.append("<h2>Loss curve</h2>")
    if png:
        atomic_write_bytes(run.loss_plot, png)
        data = base64.b64encode(png).decode("ascii")
        body.append(f"<img alt='training and validation loss by step' src='data:image/png;base64,{data}'>")
    else:
        body.append("<p>No metrics yet (metrics.jsonl is empty or missing).</p>")
    if samples:
        body += ["<h2>Samples</h2>", _samples_html(samples)]
    body += ["<h2>Settings (recipe.yaml)</h2>", f"<pre>{_esc(recipe_text)}</pre>"]
    return (
        f"{_MARK}{inputs_fingerprint(run)} -->\n<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>slmkit report: {_esc(name)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(run: str | Path | RunDir) -> Path:
    """Write RUN/report.html (and RUN/loss.png) and return the report path."""
    run = RunDir.of(run)
    path = run.report
    atomic_write_text(path, build_report(run))
    return path
