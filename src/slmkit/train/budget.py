"""Time-budgeted training: `train.max_steps: auto` with `train.max_minutes`.

A fixed number of steps and a time limit disagree on every machine but one: a slow machine stops
before the learning-rate schedule has decayed, a fast one finishes early. With `max_steps: auto`
the trainer runs a short probe (the first steps of the warm-up, whose learning rate does not depend
on the total), measures its own seconds per step, and fixes the total number of steps so that the
whole schedule (warm-up, decay, periodic evaluations) fits in the budget:

    steps = probe + floor(SAFETY * (budget - elapsed) / (step_s + eval_s / eval_every))

where eval_s, one validation pass, is estimated as eval_batches forward passes of one
micro-batch (a third of a training micro-step). The number is written to RUN/train_budget.json
and into every checkpoint's trainer_state.json, so a resumed run (or a rerun of a run killed
before its first checkpoint) keeps the same schedule and stays bit-exact. `train.max_minutes`
still stops the run if the estimate was wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_text
from slmkit.pipeline.rundir import RunDir

AUTO = "auto"
SAFETY = 0.97  # share of the remaining budget planned for: the rest absorbs checkpoints and jitter
MAX_PROBE_STEPS = 20
MIN_PROBE_STEPS = 3


def is_auto(max_steps: int | str) -> bool:
    """Whether train.max_steps asks the trainer to choose the number of steps."""
    return max_steps == AUTO


def check_max_steps(max_steps: int | str, max_minutes: float | None) -> None:
    """train.max_steps is an integer >= 1, or 'auto' together with train.max_minutes."""
    if isinstance(max_steps, str):
        if max_steps != AUTO:
            raise SlmError(f"recipe key 'train.max_steps' must be an integer >= 1 or 'auto', got {max_steps!r:.40}")
        if max_minutes is None:
            raise SlmError("recipe key 'train.max_steps' is 'auto': set train.max_minutes too (the time budget "
                           "the schedule is fitted to)")
        return
    if max_steps < 1:
        raise SlmError(f"recipe key 'train.max_steps' must be >= 1, got {max_steps}")


def probe_steps(warmup_steps: int) -> int:
    """Steps measured before the total is fixed: inside the warm-up (whose lr ignores the total) when it has one."""
    if warmup_steps <= 0:
        return MAX_PROBE_STEPS // 2
    return max(MIN_PROBE_STEPS, min(MAX_PROBE_STEPS, warmup_steps))


@dataclass
class BudgetPlan:
    """What the probe measured and the number of steps it fixed (RUN/train_budget.json)."""

    max_steps: int
    max_minutes: float
    probe_steps: int
    step_seconds: float
    tokens_per_second: float
    eval_seconds: float
    eval_every: int
    elapsed_seconds: float

    @property
    def seconds_per_step(self) -> float:
        """A training step plus its share of the periodic evaluations."""
        return self.step_seconds + (self.eval_seconds / self.eval_every if self.eval_every else 0.0)

    def describe(self) -> str:
        """One log line."""
        minutes = (self.elapsed_seconds + (self.max_steps - self.probe_steps) * self.seconds_per_step
                   + self.eval_seconds) / 60
        return (f"time budget {self.max_minutes:g} min: measured {self.step_seconds:.3f} s/step "
                f"({self.tokens_per_second:,.0f} tok/s) over the first {self.probe_steps} steps; training "
                f"{self.max_steps} steps (schedule and evaluations fitted to ~{minutes:.1f} min)")


def plan_steps(*, max_minutes: float, elapsed_s: float, step_seconds: float, tokens_per_step: int,
               probe: int, eval_seconds: float, eval_every: int) -> BudgetPlan:
    """The total number of steps that fits the rest of the budget (at least probe + 1)."""
    plan = BudgetPlan(max_steps=probe, max_minutes=max_minutes, probe_steps=probe, step_seconds=step_seconds,
                      tokens_per_second=tokens_per_step / max(step_seconds, 1e-12), eval_seconds=eval_seconds,
                      eval_every=eval_every, elapsed_seconds=elapsed_s)
    remaining = 60 * max_minutes - elapsed_s - eval_seconds  # the final evaluation too
    per_step = plan.seconds_per_step
    plan.max_steps += max(1, math.floor(SAFETY * remaining / per_step)) if per_step > 0 else 1
    return plan


def write_plan(run: RunDir, plan: BudgetPlan) -> None:
    """RUN/train_budget.json, atomically."""
    atomic_write_text(run.budget_file, json.dumps(asdict(plan), indent=2) + "\n")


def read_plan(run: RunDir) -> dict[str, Any] | None:
    """The recorded plan, or None when there is none (or it is unreadable)."""
    saved = run.read_json(run.budget_file)
    if isinstance(saved, dict) and isinstance(saved.get("max_steps"), int) and saved["max_steps"] >= 1:
        return saved
    return None


def finished(state: dict[str, Any], max_steps: int | None, max_minutes: float | None) -> str | None:
    """'complete' when a checkpoint's trainer_state reached `max_steps` (None: not fixed yet), 'time limit'
    when it spent `max_minutes`, else None (training goes on)."""
    if max_steps is not None and state.get("step", 0) >= max_steps:
        return "complete"
    if max_minutes is not None and state.get("train_time_s", 0.0) >= 60 * max_minutes:
        return "time limit"
    return None


def recorded_max_steps(state: dict[str, Any] | None, run: RunDir, max_minutes: float | None) -> int | None:
    """The total an auto run fixed earlier, or None when it has yet to measure itself.

    From the latest checkpoint's trainer_state when there is one; with no checkpoint yet (a run killed
    before its first), from RUN/train_budget.json when that was planned for the same budget."""
    if state is not None:
        return state["max_steps"] if isinstance(state.get("max_steps"), int) else None
    plan = read_plan(run)
    return plan["max_steps"] if plan and plan.get("max_minutes") == max_minutes else None
