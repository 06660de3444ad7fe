"""Scaling laws: the compute-optimal split of a FLOP budget C between parameters N and tokens D.

Two shapes of law (figures and sources in docs/REFERENCE.md, "Scaling laws"):

  PowerLaw     N_opt = k_N * C^a and D_opt = k_D * C^b, fitted to compute-optimal runs
               (Chinchilla approaches 1 and 2; Kaplan). A loss function is optional.
  Parametric   L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla approach 3); minimising it under
               C = 6 N D gives N_opt = G (C/6)^a, D_opt = (C/6)^b / G with a = beta / (alpha + beta),
               b = alpha / (alpha + beta), G = (alpha A / (beta B))^(1 / (alpha + beta)).

Built in: `chinchilla` (approach 1: power laws fitted here to the rows of Chinchilla's Table 3,
~20 tokens per parameter), `chinchilla-parametric` (approach 3), `epoch` (Besiroglu et al.'s
replication of approach 3) and `kaplan` (N_opt = 1.3e9 * (C / 1 PF-day)^0.73, D = C / 6N, loss from
Kaplan's L(N, D) in nats per token of their tokenizer). A `fit.json` written by `slm sweep isoflop`
is a law too (its power law gives the optimum, its parametric fit the loss).

Inference-aware sizing (Sardana et al. 2023): a model that will also serve I tokens costs
6 N D + 2 N I FLOPs over its life; for the loss of the compute-optimal model at C, the cheapest
(N, D) on that iso-loss curve is smaller and trained longer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError, did_you_mean
from slmkit.scaling import fit
from slmkit.scaling.shapes import COUNTS

PF_DAY = 1e15 * 86400  # FLOPs in one petaflop/s-day (Kaplan's compute unit)

# Chinchilla Table 3 (approach 1), as in docs/REFERENCE.md: (params, FLOPs, tokens).
CHINCHILLA_TABLE3 = ((400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9),
                     (67e9, 5.76e23, 1.5e12))


# Kaplan et al. 2020 eq. (1.5) coefficients (docs/REFERENCE.md).
KAPLAN_LOSS = {"N_c": 8.8e13, "alpha_N": 0.076, "D_c": 5.4e13, "alpha_D": 0.095}


@dataclass
class Parametric:
    """L(N, D) = E + A / N^alpha + B / D^beta; the formulas are fit.py's (the fitter uses the same ones)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, params: float, tokens: float) -> float:
        return fit.parametric_loss(self.coefficients(), params, tokens)

    @property
    def a(self) -> float:
        return fit.parametric_allocation(self.coefficients())["a"]

    @property
    def b(self) -> float:
        return fit.parametric_allocation(self.coefficients())["b"]

    @property
    def G(self) -> float:
        return fit.parametric_allocation(self.coefficients())["G"]

    def optimum(self, flops: float) -> tuple[float, float]:
        return fit.parametric_optimum(self.coefficients(), flops)

    def flops_for_params(self, params: float) -> float:
        return 6 * (params / self.G) ** (1 / self.a)

    def flops_for_tokens(self, tokens: float) -> float:
        return 6 * (tokens * self.G) ** (1 / self.b)

    def tokens_for_loss(self, params: float, loss: float) -> float | None:
        """D that reaches `loss` with N = params, or None when N alone cannot get there."""
        gap = loss - self.E - self.A / params**self.alpha
        return (self.B / gap) ** (1 / self.beta) if gap > 0 else None

    def coefficients(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}


@dataclass
class Law:
    """A named law: optimum(C), the reverse questions, and loss(N, D) when it has one."""

    name: str
    source: str
    kind: str  # "power" | "parametric"
    k_n: float = 0.0
    a: float = 0.0
    k_d: float = 0.0
    b: float = 0.0
    parametric: Parametric | None = None  # the loss (and, for kind "parametric", the optimum)
    loss_fn: Callable[[float, float], float] | None = None  # a loss of another form (Kaplan's)
    count: str = "total"  # which parameters N counts (shapes.COUNTS): Chinchilla all, Kaplan the layers'
    loss_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ the questions

    def optimum(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) for a budget of `flops`."""
        if self.kind == "parametric":
            return self.parametric.optimum(flops)
        return self.k_n * flops**self.a, self.k_d * flops**self.b

    def for_params(self, params: float) -> tuple[float, float]:
        """(budget, tokens) for which `params` is compute-optimal."""
        flops = (self.parametric.flops_for_params(params) if self.kind == "parametric"
                 else (params / self.k_n) ** (1 / self.a))
        return flops, self.optimum(flops)[1]

    def for_tokens(self, tokens: float) -> tuple[float, float]:
        """(budget, params) for which `tokens` is compute-optimal."""
        flops = (self.parametric.flops_for_tokens(tokens) if self.kind == "parametric"
                 else (tokens / self.k_d) ** (1 / self.b))
        return flops, self.optimum(flops)[0]

    def loss(self, params: float, tokens: float) -> float | None:
        """The predicted loss at (N, D), or None when the law has none."""
        if self.parametric:
            return self.parametric.loss(params, tokens)
        return self.loss_fn(params, tokens) if self.loss_fn else None

    def describe(self) -> dict[str, Any]:
        """The law's name, source and coefficients (what the output shows)."""
        out: dict[str, Any] = {"name": self.name, "source": self.source, "param_count": self.count}
        if self.kind == "power":
            out["coefficients"] = {"k_N": self.k_n, "a": self.a, "k_D": self.k_d, "b": self.b}
        if self.parametric:
            key = "coefficients" if self.kind == "parametric" else "loss_coefficients"
            out[key] = self.parametric.coefficients()
            if self.kind == "parametric":
                out["coefficients"].update(a=self.parametric.a, b=self.parametric.b, G=self.parametric.G)
        if self.loss_note:
            out["loss_note"] = self.loss_note
        return {**out, **self.extra}

    def formula(self) -> str:
        """One line with the law's numbers."""
        if self.kind == "parametric":
            p = self.parametric
            return (f"L(N, D) = {p.E:.4g} + {p.A:.4g}/N^{p.alpha:.4g} + {p.B:.4g}/D^{p.beta:.4g}; "
                    f"N_opt ~ C^{p.a:.3f}, D_opt ~ C^{p.b:.3f}")
        return f"N_opt = {self.k_n:.4g} * C^{self.a:.4f}; D_opt = {self.k_d:.4g} * C^{self.b:.4f}"


# ---------------------------------------------------------------------------- built-in laws


def _chinchilla() -> Law:
    params, flops, tokens = zip(*CHINCHILLA_TABLE3)
    n_law, d_law = fit.fit_power_law(flops, params), fit.fit_power_law(flops, tokens)
    return Law("chinchilla", "Hoffmann et al. 2022, approach 1: power laws fitted to the rows of Table 3",
               "power", n_law["k"], n_law["a"], d_law["k"], d_law["a"])


def _parametric(name: str, source: str, **coefficients: float) -> Law:
    return Law(name, source, "parametric", parametric=Parametric(**coefficients),
               loss_note="nats per token on the law's own data and tokenizer")


def _kaplan() -> Law:
    a = 0.73
    k_n = 1.3e9 / PF_DAY**a  # N_opt = 1.3e9 (C / PF-day)^0.73, non-embedding parameters
    # L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D: not of the parametric form
    return Law("kaplan", "Kaplan et al. 2020: N_opt = 1.3e9 (C / PF-day)^0.73, D = C / 6N", "power",
               k_n, a, 1 / (6 * k_n), 1 - a, loss_fn=kaplan_loss, count="layers",
               loss_note="Kaplan's L(N, D), nats per token of their tokenizer; N counts non-embedding parameters",
               extra={"loss_coefficients": dict(KAPLAN_LOSS)})


def kaplan_loss(params: float, tokens: float) -> float:
    """Kaplan et al. 2020 eq. (1.5): L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D."""
    k = KAPLAN_LOSS
    return ((k["N_c"] / params) ** (k["alpha_N"] / k["alpha_D"]) + k["D_c"] / tokens) ** k["alpha_D"]


LAWS = {
    "chinchilla": _chinchilla,
    "chinchilla-parametric": lambda: _parametric(
        "chinchilla-parametric", "Hoffmann et al. 2022, approach 3", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    "epoch": lambda: _parametric(
        "epoch", "Besiroglu et al. 2024 (Epoch AI), replication of Chinchilla's approach 3",
        E=1.817, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
    "kaplan": _kaplan,
}


def get_law(name_or_file: str) -> Law:
    """A built-in law by name, or a fit.json written by `slm sweep isoflop`."""
    if name_or_file in LAWS:
        return LAWS[name_or_file]()
    path = Path(name_or_file)
    if path.suffix == ".json" or path.exists():
        return law_from_fit(path)
    raise SlmError(f"unknown law {name_or_file!r}{did_you_mean(name_or_file, LAWS)}; laws: "
                   f"{', '.join(LAWS)}, or a fit.json from slm sweep isoflop")


def law_from_fit(path: Path) -> Law:
    """The law in a fit.json: its IsoFLOP power laws for the optimum, its parametric fit for the loss."""
    try:
        fit = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SlmError(f"law file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlmError(f"law file {path} is not readable JSON: {exc}") from None
    try:
        iso = fit["isoflop"]
        k_n, a = float(iso["params"]["k"]), float(iso["params"]["a"])
        k_d, b = float(iso["tokens"]["k"]), float(iso["tokens"]["b"])
    except (KeyError, TypeError, ValueError):
        raise SlmError(f"law file {path} has no isoflop.params.k/a and isoflop.tokens.k/b; "
                       "is it a fit.json from slm sweep isoflop?") from None
    parametric = None
    if isinstance(fit.get("parametric"), dict):
        p = fit["parametric"]
        try:
            parametric = Parametric(*(float(p[key]) for key in ("E", "A", "B", "alpha", "beta")))
        except (KeyError, TypeError, ValueError):
            raise SlmError(f"law file {path}: parametric needs E, A, B, alpha and beta") from None
    count = fit.get("param_count", "total")
    if count not in COUNTS:
        raise SlmError(f"law file {path}: param_count {count!r} is not one of {', '.join(COUNTS)}")
    return Law(f"fit:{path}", fit.get("source", f"fitted by slm sweep isoflop ({path})"), "power", k_n, a, k_d, b,
               parametric=parametric, count=count,
               loss_note="nats per token of the sweep's validation data" if parametric else "")


# ---------------------------------------------------------------------------- inference-aware sizing


def inference_optimum(law: Law, flops: float, inference_tokens: float) -> dict[str, Any]:
    """The cheapest (N, D) over training + inference with the loss of the compute-optimal model at `flops`.

    Lifetime cost 6 N D + 2 N I (Sardana et al. 2023), minimised along the law's iso-loss curve."""
    from scipy.optimize import minimize_scalar

    loss_model = law.parametric or LAWS["chinchilla-parametric"]().parametric
    n_opt, d_opt = law.optimum(flops)
    target = loss_model.loss(n_opt, d_opt)

    def cost(log_n: float) -> float:
        n = math.exp(log_n)
        d = loss_model.tokens_for_loss(n, target)
        return math.inf if d is None else 6 * n * d + 2 * n * inference_tokens

    # the smallest N that can reach the target at all, then search between it and the compute optimum
    n_floor = (loss_model.A / (target - loss_model.E)) ** (1 / loss_model.alpha) if target > loss_model.E else n_opt
    low = math.log(n_floor) + 1e-6
    best = minimize_scalar(cost, bounds=(low, math.log(n_opt)), method="bounded", options={"xatol": 1e-6})
    params = math.exp(best.x)
    tokens = loss_model.tokens_for_loss(params, target)
    baseline = 6 * n_opt * d_opt + 2 * n_opt * inference_tokens
    return {
        "params": params, "tokens": tokens, "loss": target,
        "train_flops": 6 * params * tokens, "inference_flops": 2 * params * inference_tokens,
        "total_flops": float(best.fun), "compute_optimal_total_flops": baseline,
        "saving": float(1 - best.fun / baseline),
        "loss_model": law.name if law.parametric else "chinchilla-parametric",
    }
