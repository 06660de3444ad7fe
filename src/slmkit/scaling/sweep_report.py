"""The IsoFLOP plot (PNG, matplotlib) and report page (HTML) of `slm sweep isoflop`."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from slmkit.fileio import atomic_write_bytes, atomic_write_text


def published_exponents() -> list[tuple[str, float]]:
    """The published a in N_opt ~ C^a shown beside ours: Chinchilla approach 1 as the paper states it (0.50;
    our fit to its Table 3 gives 0.497), the others from the laws `slm plan` uses (docs/REFERENCE.md)."""
    from slmkit.scaling.laws import get_law

    return [("Chinchilla approach 1", 0.50), ("Chinchilla approach 3", get_law("chinchilla-parametric").parametric.a),
            ("Epoch replication", get_law("epoch").parametric.a), ("Kaplan", get_law("kaplan").a)]


def write_plot(fit: dict[str, Any], path: Path) -> None:
    """Left: loss against N per budget, with each parabola and its vertex. Right: N_opt against C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    iso = fit["isoflop"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(fit["budgets"])))
    for color, group in zip(colors, fit["budgets"]):
        pts = [p for p in fit["points"] if p["budget"] == group["budget"]]
        n = np.array([p["params"] for p in pts])
        left.scatter(n, [p["loss"] for p in pts], color=color, s=18, label=f"C = {group['budget']:.0e}")
        x = np.linspace(np.log10(n.min()) - 0.1, np.log10(n.max()) + 0.1, 100)
        left.plot(10**x, np.polyval(group["coefficients"], x), color=color, lw=1)
        if group["params_opt"] is not None:
            left.scatter([group["params_opt"]], [group["loss_opt"]], color=color, marker="*", s=120, edgecolor="black")
    left.set(xscale="log", xlabel=f"parameters N ({fit.get('param_count', '')})", ylabel="validation loss (nats/token)",
             title="IsoFLOP curves")
    left.legend(fontsize=8)
    if iso is None:
        right.text(0.5, 0.5, "no power law:\n" + str(fit.get("isoflop_error", "")), ha="center", va="center",
                   wrap=True, fontsize=8, transform=right.transAxes)
        right.set_axis_off()
        _save(fig, path)
        return
    budgets = np.array([g["budget"] for g in iso["budgets"]])
    right.scatter(budgets, [g["params_opt"] for g in iso["budgets"]], color="black", zorder=3, label="parabola vertices")
    c = np.logspace(np.log10(budgets.min()) - 0.3, np.log10(budgets.max()) + 0.3, 50)
    p = iso["params"]
    right.plot(c, p["k"] * c ** p["a"], color="C3", label=f"fit: N_opt = {p['k']:.3g} C^{p['a']:.3f}")
    if p.get("a_ci"):
        lo, hi = p["a_ci"]
        mid = math.sqrt(budgets.min() * budgets.max())
        anchor = p["k"] * mid ** p["a"]
        right.fill_between(c, anchor * (c / mid) ** lo, anchor * (c / mid) ** hi, color="C3", alpha=0.15,
                           label=f"a in [{lo:.3f}, {hi:.3f}] (bootstrap)")
    right.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel="N_opt", title="Optimal size")
    right.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _interval(entry: dict[str, Any], key: str) -> str:
    ci = entry.get(f"{key}_ci") or (entry.get("ci") or {}).get(key)
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def exponent_rows(fit: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, a in N_opt ~ C^a, b in D_opt ~ C^b) for our fits and the published laws."""
    iso, rows = fit["isoflop"], []
    if iso:
        rows.append(("this sweep, IsoFLOP parabolas (approach 2)", f"{iso['params']['a']:.3f}"
                     f"{_interval(iso['params'], 'a')}", f"{iso['tokens']['b']:.3f}{_interval(iso['tokens'], 'b')}"))
    par = fit.get("parametric")
    if par:
        rows.append(("this sweep, parametric L(N, D) (approach 3)", f"{par['a']:.3f}{_interval(par, 'a')}",
                     f"{par['b']:.3f}{_interval(par, 'b')}"))
    rows += [(name, f"{a:.3f}", f"{1 - a:.3f}") for name, a in published_exponents()]
    return rows


def _num(value: float | None, spec: str) -> str:
    return "no minimum" if value is None else format(value, spec)


def write_report(fit: dict[str, Any], path: Path, plot: Path | None = None) -> None:
    """A self-contained HTML page: the plot, the exponents beside published ones, every run."""
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>IsoFLOP sweep</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}</style>",
             f"<h1>IsoFLOP sweep</h1><p>{esc(str(fit.get('source', '')))}; N counts {esc(str(fit.get('param_count')))} "
             f"parameters, C = 6ND.</p>"]
    if plot is not None and plot.is_file():
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<img alt='IsoFLOP curves and optimal size' src='data:image/png;base64,{data}' width='100%'>")
    parts.append("<h2>Exponents</h2><table><tr><th>source</th><th>a (N_opt ~ C^a)</th><th>b (D_opt ~ C^b)</th></tr>")
    parts += [f"<tr><td>{esc(s)}</td><td>{esc(a)}</td><td>{esc(b)}</td></tr>" for s, a, b in exponent_rows(fit)]
    parts.append("</table>")
    if fit.get("isoflop_error"):
        parts.append(f"<p>No IsoFLOP power law: {esc(str(fit['isoflop_error']))}</p>")
    par = fit.get("parametric")
    if par:
        parts.append("<h2>Parametric fit</h2><p>L(N, D) = E + A/N<sup>alpha</sup> + B/D<sup>beta</sup>: " + ", ".join(
            f"{k} {par[k]:.4g}{_interval(par, k)}" for k in ("E", "A", "B", "alpha", "beta")) + "</p>")
    elif fit.get("parametric_error"):
        parts.append(f"<p>Parametric fit: {esc(str(fit['parametric_error']))}</p>")
    parts.append("<h2>Optimum per budget</h2><table><tr><th>budget</th><th>runs</th><th>N_opt</th><th>D_opt</th>"
                 "<th>loss at optimum</th><th>inside the sizes tried</th></tr>")
    parts += [f"<tr><td>{g['budget']:.1e}</td><td>{g['n_runs']}</td><td>{_num(g['params_opt'], '.4g')}</td>"
              f"<td>{_num(g['tokens_opt'], '.4g')}</td><td>{_num(g['loss_opt'], '.4f')}</td>"
              f"<td>{'yes' if g['inside_range'] else 'no'}</td></tr>" for g in fit["budgets"]]
    parts.append("</table><h2>Runs</h2><table><tr><th>run</th><th>budget</th><th>layers x width</th><th>N</th>"
                 "<th>D</th><th>val loss</th></tr>")
    parts += [f"<tr><td>{esc(p.get('run', ''))}</td><td>{p['budget']:.1e}</td><td>{p.get('n_layers')} x "
              f"{p.get('d_model')}</td><td>{p['params']:,}</td><td>{p['tokens']:,}</td><td>{p['loss']:.4f}</td></tr>"
              for p in fit["points"]]
    parts.append("</table>")
    atomic_write_text(path, "\n".join(parts) + "\n")
