"""Points drawn from known scaling laws L(N, D) = E + A/N^alpha + B/D^beta, for the fitter and sweep tests."""

from __future__ import annotations

import numpy as np

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
EPOCH = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}  # Besiroglu et al. 2024
LAWS = {"chinchilla": CHINCHILLA, "epoch": EPOCH}
BUDGETS = (1e18, 1e19, 1e20, 1e21)
OFFSETS = np.linspace(-0.6, 0.6, 7)  # sizes, in decades of N around the true optimum of each budget


def true_exponent(law: dict) -> float:
    """a in N_opt ~ C^a, from the law's exponents."""
    return law["beta"] / (law["alpha"] + law["beta"])


def true_n_opt(law: dict, budget: float) -> float:
    """N minimizing the law at C = 6ND, by dense search (independent of the closed form under test)."""
    n = np.logspace(4, 14, 200_001)
    loss = law["E"] + law["A"] / n ** law["alpha"] + law["B"] / (budget / (6 * n)) ** law["beta"]
    i = int(np.argmin(loss))
    return float(n[i])


def isoflop_points(law: dict, noise: float = 0.0, seed: int = 0, offsets=OFFSETS, budgets=BUDGETS) -> list[dict]:
    """An IsoFLOP grid centred on the true optimum of each budget; lognormal noise of `noise` on the loss."""
    rng = np.random.default_rng(seed)
    points = []
    for budget in budgets:
        centre = true_n_opt(law, budget)
        for u in offsets:
            n = centre * 10.0**u
            d = budget / (6 * n)
            loss = law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]
            points.append({"budget": budget, "params": n, "tokens": d, "loss": loss * np.exp(rng.normal(0, noise))})
    return points
