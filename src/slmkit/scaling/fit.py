"""Fit scaling laws to an IsoFLOP sweep: Chinchilla approach 2 (parabolas) and approach 3 (parametric L(N, D)).

A point is a dict with float keys `budget` (the nominal FLOP budget C of its IsoFLOP group), `params` (N),
`tokens` (D) and `loss` (final validation loss, > 0). A run's actual compute is 6*N*D, which may differ
slightly from `budget`; the fits use the nominal budget. Every output is made of plain dicts, lists, floats,
ints, bools and None, so it can go straight to json.dumps.

Approach 2: per budget, loss = c2*x^2 + c1*x + c0 with x = log10(N); the vertex is the optimal size, and
N_opt = k_N * C^a, D_opt = k_D * C^b are fitted over the budgets, with bootstrap percentile intervals.

Approach 3: L(N, D) = E + A/N^alpha + B/D^beta, fitted as in Hoffmann et al. (2022, "Chinchilla"): the
Huber loss (delta 1e-3) between log L_hat = logsumexp(a - alpha*log N, b - beta*log D, e) and log L, with
A = exp(a), B = exp(b), E = exp(e), minimized by L-BFGS-B from a grid of starts, keeping the best.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from slmkit.errors import SlmError

POINT_KEYS = ("budget", "params", "tokens", "loss")
LAW_NAMES = ("E", "A", "B", "alpha", "beta")
CI_NAMES = ("E", "A", "B", "alpha", "beta", "a", "b")

# Chinchilla's grid of starts, one list per fitted variable (a = log A, b = log B, e = log E): 4500 starts.
CHINCHILLA_GRID: dict[str, list[float]] = {
    "alpha": [0.0, 0.5, 1.0, 1.5, 2.0],
    "beta": [0.0, 0.5, 1.0, 1.5, 2.0],
    "e": [-1.0, -0.5, 0.0, 0.5, 1.0],
    "a": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
    "b": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
}
# The whole grid is scored at once (vectorized); L-BFGS-B then runs from this many of its best starts.
DEFAULT_MAX_STARTS = 16
THETA_ORDER = ("a", "b", "e", "alpha", "beta")
# Bounds for (a, b, e, alpha, beta): exponents >= 0; an exponent pinned at a bound is not identified.
THETA_BOUNDS = ((-20.0, 60.0), (-20.0, 60.0), (-20.0, 10.0), (0.0, 5.0), (0.0, 5.0))
EXPONENT_MIN = 1e-4
LBFGS_OPTIONS = {"maxiter": 3000, "ftol": 1e-15, "gtol": 1e-10}
MIN_PARAMETRIC_POINTS = 5


# ---------------------------------------------------------------------------------------------------------
# Input


def _as_arrays(points: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Validate the points and return one float array per key (SlmError on bad input)."""
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
        raise SlmError(f"scaling fit: points must be a list of dicts, got {type(points).__name__}")
    if not points:
        raise SlmError("scaling fit: no points to fit")
    cols: dict[str, list[float]] = {key: [] for key in POINT_KEYS}
    for i, point in enumerate(points):
        if not isinstance(point, Mapping):
            raise SlmError(f"scaling fit: point {i} is a {type(point).__name__}, not a dict")
        for key in POINT_KEYS:
            cols[key].append(_positive(point, key, i))
    return {key: np.asarray(values, dtype=float) for key, values in cols.items()}


def _positive(point: Mapping[str, Any], key: str, i: int) -> float:
    """point[key] as a finite float > 0 (SlmError naming the point otherwise)."""
    if key not in point:
        raise SlmError(f"scaling fit: point {i} has no {key!r} (needs {', '.join(POINT_KEYS)})")
    try:
        value = float(point[key])
    except (TypeError, ValueError):
        raise SlmError(f"scaling fit: point {i}: {key} must be a number, got {point[key]!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise SlmError(f"scaling fit: point {i}: {key} must be a finite number > 0, got {value!r}")
    return value


def _check_level(level: float, n_boot: int) -> None:
    """SlmError unless 0 < level < 1 and n_boot >= 0."""
    if not 0 < level < 1:
        raise SlmError(f"scaling fit: level must be between 0 and 1 (exclusive), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise SlmError(f"scaling fit: n_boot must be a whole number >= 0, got {n_boot!r}")


def _groups(budget: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(budget, indices of its runs) per distinct budget, ascending; budgets equal to 9 digits are one group."""
    keys = np.array([float(f"{b:.9g}") for b in budget])
    return [(float(budget[keys == key][0]), np.flatnonzero(keys == key)) for key in np.unique(keys)]


def _percentiles(samples: Sequence[float], level: float) -> list[float] | None:
    """The central `level` percentile interval [lo, hi] of the samples, or None without samples."""
    if len(samples) == 0:
        return None
    lo, hi = np.percentile(np.asarray(samples, dtype=float), [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


# ---------------------------------------------------------------------------------------------------------
# Approach 2: IsoFLOP parabolas and power laws


def _parabola(x: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """(c2, c1, c0) of the least-squares parabola loss = c2*x^2 + c1*x + c0."""
    c2, c1, c0 = np.polyfit(x, loss, 2)
    return float(c2), float(c1), float(c0)


def _check_sizes(budget: float, params: np.ndarray) -> None:
    """SlmError unless the group has at least 3 distinct sizes."""
    n_sizes = len(np.unique(params))
    if n_sizes < 3:
        runs = f"{len(params)} runs" if len(params) == n_sizes else f"{len(params)} runs but {n_sizes} sizes"
        raise SlmError(f"budget {budget:.3g} has {runs}; a parabola needs at least 3 sizes")


def _budget_fit(budget: float, params: np.ndarray, tokens: np.ndarray, loss: np.ndarray, strict: bool) -> dict:
    """The parabola of one IsoFLOP group and its vertex (see fit_isoflop_parabolas)."""
    _check_sizes(budget, params)
    x = np.log10(params)
    c2, c1, c0 = _parabola(x, loss)
    out: dict[str, Any] = {
        "budget": budget, "n_runs": int(len(params)), "n_sizes": int(len(np.unique(params))),
        "coefficients": [c2, c1, c0], "convex": bool(c2 > 0),
        "params_range": [float(params.min()), float(params.max())],
        "compute": float(np.exp(np.mean(np.log(6 * params * tokens)))),
        "params_opt": None, "tokens_opt": None, "loss_opt": None, "inside_range": False,
    }
    if not out["convex"]:
        if strict:
            raise SlmError(f"budget {budget:.3g}: the loss is not convex in log10(N) (c2 = {c2:.3g}); "
                           "its sizes do not bracket a minimum")
        return out
    xv = -c1 / (2 * c2)
    params_opt = _pow10(xv) if np.isfinite(xv) and xv > -300 else None
    if params_opt is None:
        if strict:
            raise SlmError(f"budget {budget:.3g}: the parabola is too flat to locate a minimum (vertex at "
                           f"log10(N) = {xv:.4g})")
        return out
    out.update(params_opt=params_opt, tokens_opt=budget / (6 * params_opt), loss_opt=c0 - c1 * c1 / (4 * c2),
               inside_range=bool(x.min() <= xv <= x.max()))
    return out


def fit_isoflop_parabolas(points: Sequence[Mapping[str, Any]], strict: bool = True) -> list[dict]:
    """One dict per budget (ascending): the parabola in x = log10(N) and its vertex.

    Keys: budget, n_runs, n_sizes, coefficients [c2, c1, c0], convex (c2 > 0), params_range [min N, max N],
    compute (geometric mean of 6ND over the group), params_opt = 10^(-c1/(2 c2)), tokens_opt =
    budget/(6 params_opt), loss_opt (the parabola at its vertex), inside_range (vertex within the sampled N).
    A group with fewer than 3 sizes raises SlmError; so does a non-convex group (or one too flat to place a
    vertex) unless strict=False, which returns it with the vertex fields None.
    """
    data = _as_arrays(points)
    return [_budget_fit(b, data["params"][idx], data["tokens"][idx], data["loss"][idx], strict)
            for b, idx in _groups(data["budget"])]


def _loglog_line(log_x: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line log_y = slope*log_x + intercept."""
    slope, intercept = np.polyfit(log_x, log_y, 1)
    return float(slope), float(intercept)


def _pow10(x: float) -> float | None:
    """10^x as a float, or None when it overflows (a law too extreme to report)."""
    return float(10.0**x) if x < 300 else None


def fit_power_law(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict:
    """y = k * x^a by least squares on log10(y) against log10(x): {"k": k, "a": a}."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise SlmError(f"power law: x and y must be 1-d lists of the same length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise SlmError("power law: x and y must be finite and > 0")
    if len(np.unique(x)) < 2:
        raise SlmError(f"power law: needs at least 2 distinct x values, got {len(np.unique(x))}")
    a, log_k = _loglog_line(np.log10(x), np.log10(y))
    k = _pow10(log_k)
    if k is None or not k > 0:
        raise SlmError(f"power law: the fitted k = 10^{log_k:.4g} is out of range (a = {a:.4g})")
    return {"k": k, "a": a}


def _resample_vertices(data: dict[str, np.ndarray], groups: list, rng: np.random.Generator) -> np.ndarray | None:
    """log10 N_opt per budget for one bootstrap resample within each budget, or None if a group fails."""
    vertices = []
    for _, idx in groups:
        pick = rng.choice(idx, size=len(idx), replace=True)
        if len(np.unique(data["params"][pick])) < 3:
            return None
        c2, c1, _ = _parabola(np.log10(data["params"][pick]), data["loss"][pick])
        if not c2 > 0:
            return None
        vertices.append(-c1 / (2 * c2))
    vertices = np.asarray(vertices)
    return vertices if np.all(np.isfinite(vertices)) else None


def _bootstrap_isoflop(data: dict[str, np.ndarray], groups: list, n_boot: int, seed: int) -> dict[str, list]:
    """Bootstrap samples of (a, log10 k_N, b, log10 k_D) from resampling runs with replacement within budgets."""
    rng = np.random.default_rng(seed)
    log_c = np.log10([b for b, _ in groups])
    samples: dict[str, list] = {"a": [], "log_k": [], "b": [], "log_k_d": []}
    for _ in range(n_boot):
        log_n = _resample_vertices(data, groups, rng)
        if log_n is None:
            continue
        a, log_k = _loglog_line(log_c, log_n)
        b, log_k_d = _loglog_line(log_c, log_c - np.log10(6) - log_n)
        for key, value in (("a", a), ("log_k", log_k), ("b", b), ("log_k_d", log_k_d)):
            samples[key].append(value)
    return samples


def _pow10_interval(log_ci: list[float] | None) -> list[float | None] | None:
    """An interval of log10 values as an interval of values."""
    return None if log_ci is None else [_pow10(v) for v in log_ci]


def fit_isoflop(points: Sequence[Mapping[str, Any]], n_boot: int = 200, seed: int = 0, level: float = 0.9) -> dict:
    """Chinchilla approach 2: parabolas per budget, then N_opt = k C^a and D_opt = k C^b over the budgets.

    Returns {"budgets": [fit_isoflop_parabolas dicts], "params": {k, a, a_ci, k_ci}, "tokens": {k, b, b_ci,
    k_ci}, "tokens_per_param": {"at": [D_opt/N_opt per budget]}, "n_boot": resamples used, "n_boot_requested",
    "level"}. Intervals are bootstrap percentile intervals (None when no resample could be fitted): runs are
    resampled with replacement within each budget; a resample whose parabola is not convex or has fewer than
    3 distinct sizes is skipped. Needs at least 2 budgets.
    """
    _check_level(level, n_boot)
    data = _as_arrays(points)
    groups = _groups(data["budget"])
    if len(groups) < 2:
        raise SlmError(f"IsoFLOP fit: needs at least 2 budgets to fit N_opt = k*C^a, got {len(groups)}")
    fits = [_budget_fit(b, data["params"][idx], data["tokens"][idx], data["loss"][idx], True) for b, idx in groups]
    budgets = [f["budget"] for f in fits]
    n_law = fit_power_law(budgets, [f["params_opt"] for f in fits])
    d_law = fit_power_law(budgets, [f["tokens_opt"] for f in fits])
    boot = _bootstrap_isoflop(data, groups, int(n_boot), seed)
    return {
        "budgets": fits,
        "params": {"k": n_law["k"], "a": n_law["a"], "a_ci": _percentiles(boot["a"], level),
                   "k_ci": _pow10_interval(_percentiles(boot["log_k"], level))},
        "tokens": {"k": d_law["k"], "b": d_law["a"], "b_ci": _percentiles(boot["b"], level),
                   "k_ci": _pow10_interval(_percentiles(boot["log_k_d"], level))},
        "tokens_per_param": {"at": [f["tokens_opt"] / f["params_opt"] for f in fits]},
        "n_boot": len(boot["a"]), "n_boot_requested": int(n_boot), "level": float(level),
    }


# ---------------------------------------------------------------------------------------------------------
# Approach 3: parametric L(N, D) = E + A/N^alpha + B/D^beta


def parametric_loss(params: Mapping[str, float], N: Any, D: Any) -> Any:
    """E + A/N^alpha + B/D^beta for a law dict (keys E, A, B, alpha, beta); float for scalars, else an array."""
    n, d = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    loss = params["E"] + params["A"] / n ** params["alpha"] + params["B"] / d ** params["beta"]
    return float(loss) if np.ndim(loss) == 0 else loss


def parametric_allocation(params: Mapping[str, float]) -> dict[str, float]:
    """The compute-optimal allocation exponents under C = 6ND: {"a", "b", "G"}."""
    alpha, beta = params["alpha"], params["beta"]
    with np.errstate(over="ignore", divide="ignore"):
        g = (alpha * params["A"] / (beta * params["B"])) ** (1 / (alpha + beta))
    return {"a": beta / (alpha + beta), "b": alpha / (alpha + beta), "G": float(g)}


def parametric_optimum(params: Mapping[str, float], C: Any) -> tuple[Any, Any]:
    """(N_opt, D_opt) minimizing the law at compute C = 6ND: N_opt = G (C/6)^a, D_opt = (C/6)^b / G."""
    alloc = parametric_allocation(params)
    c6 = np.asarray(C, dtype=float) / 6
    n_opt, d_opt = alloc["G"] * c6 ** alloc["a"], c6 ** alloc["b"] / alloc["G"]
    if np.ndim(c6) == 0:
        return float(n_opt), float(d_opt)
    return n_opt, d_opt


def _log_terms(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray) -> np.ndarray:
    """The three log terms (a - alpha log N, b - beta log D, e), shape (3, ..., n) for theta of shape (..., 5)."""
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))
    return np.stack(np.broadcast_arrays(a - alpha * logn, b - beta * logd, e + 0 * logn))


def _objective(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Sum of Huber(log L_hat - log L) / delta^2 and its gradient in (a, b, e, alpha, beta)."""
    terms = _log_terms(theta, logn, logd)
    lse = logsumexp(terms, axis=0)
    r = lse - logl
    weights = np.exp(terms - lse)
    g = np.clip(r, -delta, delta) / delta**2
    grad = [(g * weights[0]).sum(), (g * weights[1]).sum(), (g * weights[2]).sum(),
            -(g * weights[0] * logn).sum(), -(g * weights[1] * logd).sum()]
    return float(huber(delta, r).sum() / delta**2), np.array(grad)


def _grid(init_grid: Mapping[str, Sequence[float]] | None) -> np.ndarray:
    """Every start of the grid as rows (a, b, e, alpha, beta); missing variables take Chinchilla's values."""
    grid = dict(CHINCHILLA_GRID)
    for key, values in (init_grid or {}).items():
        if key not in CHINCHILLA_GRID:
            raise SlmError(f"parametric fit: init_grid key {key!r} is not one of {', '.join(THETA_ORDER)}")
        try:
            grid[key] = [float(v) for v in values]
        except (TypeError, ValueError):
            raise SlmError(f"parametric fit: init_grid[{key!r}] must be a list of numbers, got {values!r}") from None
        if not grid[key]:
            raise SlmError(f"parametric fit: init_grid[{key!r}] is empty")
    return np.array(list(itertools.product(*(grid[k] for k in THETA_ORDER))), dtype=float)


def _best_starts(starts: np.ndarray, logs: tuple, delta: float, max_starts: int | None) -> np.ndarray:
    """The `max_starts` starts with the lowest objective (all of them when max_starts is None)."""
    if max_starts is None or max_starts >= len(starts):
        return starts
    if max_starts < 1:
        raise SlmError(f"parametric fit: max_starts must be >= 1, got {max_starts}")
    logn, logd, logl = logs
    r = logsumexp(_log_terms(starts, logn, logd), axis=0) - logl
    score = huber(delta, r).sum(axis=-1)
    return starts[np.argsort(score, kind="stable")[:max_starts]]


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while L-BFGS-B runs (threadpoolctl when installed, else a no-op).

    Each L-BFGS-B step calls BLAS on tiny matrices; OpenBLAS's thread pool made a fit ~20x slower on a busy
    2-core machine (17 s against 0.9 s).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _minimize(starts: np.ndarray, logs: tuple, delta: float) -> tuple[np.ndarray, float]:
    """The best (theta, objective) over L-BFGS-B runs from each start."""
    best_theta, best_fun = starts[0], np.inf
    for x0 in starts:
        res = minimize(_objective, x0, args=(*logs, delta), jac=True, method="L-BFGS-B", bounds=THETA_BOUNDS,
                       options=LBFGS_OPTIONS)
        if np.isfinite(res.fun) and res.fun < best_fun:
            best_theta, best_fun = res.x, float(res.fun)
    return best_theta, best_fun


def _logs(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log N, log D, log L) after checking there are enough points to identify the five parameters."""
    n = len(data["loss"])
    if n < MIN_PARAMETRIC_POINTS:
        raise SlmError(f"parametric fit: needs at least {MIN_PARAMETRIC_POINTS} points for 5 parameters, got {n}")
    for key, name in (("params", "sizes (N)"), ("tokens", "token counts (D)")):
        if len(np.unique(data[key])) < 3:
            raise SlmError(f"parametric fit: needs at least 3 distinct {name}, got {len(np.unique(data[key]))}")
    return np.log(data["params"]), np.log(data["tokens"]), np.log(data["loss"])


def _law(theta: np.ndarray) -> dict[str, float]:
    """{E, A, B, alpha, beta} from (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta}


def _identified(theta: np.ndarray) -> str | None:
    """Why the fit does not identify the law (an exponent at its bound, a non-finite value), or None."""
    if not np.all(np.isfinite(theta)):
        return "the fit did not converge to finite values"
    for name, i in (("alpha", 3), ("beta", 4)):
        lo, hi = THETA_BOUNDS[i]
        if theta[i] < lo + EXPONENT_MIN or theta[i] > hi - EXPONENT_MIN:
            return f"{name} ran to its bound ({theta[i]:.3g}); the points do not identify L(N, D)"
    return None


def _parametric_theta(data: dict[str, np.ndarray], delta: float, init_grid: Mapping[str, Sequence[float]] | None,
                      max_starts: int | None) -> tuple[np.ndarray, float, int]:
    """(theta, scaled objective, number of starts) of the best fit from the grid."""
    if not delta > 0:
        raise SlmError(f"parametric fit: delta must be > 0, got {delta!r}")
    logs = _logs(data)
    starts = _best_starts(_grid(init_grid), logs, delta, max_starts)
    with _one_blas_thread():
        theta, fun = _minimize(starts, logs, delta)
    why = _identified(theta)
    if why:
        raise SlmError(f"parametric fit: {why}")
    return theta, fun, len(starts)


def _parametric_result(theta: np.ndarray, fun: float, delta: float, n_points: int, n_starts: int) -> dict:
    """The JSON-ready output of fit_parametric."""
    law = _law(theta)
    allocation = parametric_allocation(law)
    if not 0 < allocation["G"] < np.inf:
        raise SlmError(f"parametric fit: the allocation constant G = {allocation['G']:.3g} is out of range; "
                       "the points do not identify L(N, D)")
    return {**law, "huber_loss": fun * delta**2, "delta": float(delta), "n_points": int(n_points),
            "n_starts": int(n_starts), **allocation}


def fit_parametric(points: Sequence[Mapping[str, Any]], delta: float = 1e-3,
                   init_grid: Mapping[str, Sequence[float]] | None = None,
                   max_starts: int | None = DEFAULT_MAX_STARTS) -> dict:
    """Chinchilla approach 3: fit L(N, D) = E + A/N^alpha + B/D^beta by Huber loss on log L.

    The start grid is Chinchilla's (CHINCHILLA_GRID, 4500 starts; `init_grid` overrides any of its lists by
    name: alpha, beta, e, a, b). All starts are scored at once and L-BFGS-B runs from the `max_starts` best
    (None: from every start, which takes minutes); the lowest objective wins.
    Returns {E, A, B, alpha, beta, huber_loss (sum over points), delta, n_points, n_starts, a, b, G} where
    a = beta/(alpha+beta), b = alpha/(alpha+beta) and G give N_opt = G (C/6)^a, D_opt = (C/6)^b / G.
    SlmError with fewer than 5 points, fewer than 3 distinct N or D, or an exponent pinned at its bound.
    """
    data = _as_arrays(points)
    theta, fun, n_starts = _parametric_theta(data, delta, init_grid, max_starts)
    return _parametric_result(theta, fun, delta, len(data["loss"]), n_starts)


def _bootstrap_parametric(data: dict[str, np.ndarray], theta0: np.ndarray, delta: float, n_boot: int,
                          seed: int) -> dict[str, list[float]]:
    """Bootstrap samples of the law and its allocation exponents, each refit warm-started from theta0."""
    rng = np.random.default_rng(seed)
    n = len(data["loss"])
    samples: dict[str, list[float]] = {name: [] for name in CI_NAMES}
    for _ in range(n_boot):
        pick = rng.integers(0, n, size=n)
        sub = {key: values[pick] for key, values in data.items()}
        try:
            logs = _logs(sub)
        except SlmError:
            continue
        theta, _ = _minimize(theta0[None, :], logs, delta)
        if _identified(theta):
            continue
        law = _law(theta)
        law.update({k: v for k, v in parametric_allocation(law).items() if k in ("a", "b")})
        for name in CI_NAMES:
            samples[name].append(law[name])
    return samples


def fit_parametric_bootstrap(points: Sequence[Mapping[str, Any]], n_boot: int = 100, seed: int = 0,
                             level: float = 0.9, delta: float = 1e-3,
                             init_grid: Mapping[str, Sequence[float]] | None = None,
                             max_starts: int | None = DEFAULT_MAX_STARTS) -> dict:
    """fit_parametric plus bootstrap percentile intervals: "ci": {E, A, B, alpha, beta, a, b: [lo, hi] or None}.

    Points are resampled with replacement and refitted by one L-BFGS-B run warm-started from the full fit;
    resamples that cannot be fitted are skipped. Adds "n_boot" (resamples used), "n_boot_requested", "level".
    """
    _check_level(level, n_boot)
    data = _as_arrays(points)
    theta, fun, n_starts = _parametric_theta(data, delta, init_grid, max_starts)
    out = _parametric_result(theta, fun, delta, len(data["loss"]), n_starts)
    with _one_blas_thread():
        samples = _bootstrap_parametric(data, theta, delta, int(n_boot), seed)
    out["ci"] = {name: _percentiles(samples[name], level) for name in CI_NAMES}
    out.update(n_boot=len(samples["alpha"]), n_boot_requested=int(n_boot), level=float(level))
    return out


# ---------------------------------------------------------------------------------------------------------
# Both


def fit_parametric_or_error(points: Sequence[Mapping[str, Any]], n_boot: int = 100, seed: int = 0,
                            level: float = 0.9) -> dict:
    """{"parametric": fit_parametric_bootstrap, "parametric_error": None}, or {None, why it could not be fitted}
    when there are too few points or the parameters are not identified."""
    try:
        return {"parametric": fit_parametric_bootstrap(points, n_boot=n_boot, seed=seed, level=level),
                "parametric_error": None}
    except SlmError as exc:
        return {"parametric": None, "parametric_error": str(exc)}


def fit_all(points: Sequence[Mapping[str, Any]], n_boot: int = 200, seed: int = 0, level: float = 0.9,
            n_boot_parametric: int | None = None) -> dict:
    """Both approaches: {"isoflop": fit_isoflop, "parametric": fit_parametric_bootstrap or None,
    "parametric_error": None or why the parametric law could not be fitted, "n_points"}.

    The IsoFLOP part raises SlmError on bad input; the parametric part is None (with its message) when there
    are too few points or the parameters are not identified. n_boot_parametric defaults to min(n_boot, 100).
    """
    data = _as_arrays(points)
    isoflop = fit_isoflop(points, n_boot=n_boot, seed=seed, level=level)
    n_boot_p = min(int(n_boot), 100) if n_boot_parametric is None else n_boot_parametric
    return {"isoflop": isoflop, **fit_parametric_or_error(points, n_boot=n_boot_p, seed=seed, level=level),
            "n_points": int(len(data["loss"]))}
