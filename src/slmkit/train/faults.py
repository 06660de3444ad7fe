"""Faults: non-finite steps, stop signals, and test-only fault injection.

Test-only fault injection (environment variables, read once at start of training):

    SLMKIT_FAULT_KILL_AT_STEP=12        SIGKILL this process in the middle of step 12 (1-based),
                                        after the forward/backward and before the optimizer update
    SLMKIT_FAULT_NONFINITE_AT_STEPS=5,6 multiply the loss of steps 5 and 6 (1-based) by inf
    SLMKIT_FAULT_SIGNAL_AT_STEP=7       send SIGTERM to this process in the middle of step 7
    SLMKIT_FAULT_STEP_SECONDS=0.5       a train.max_steps: auto probe measures 0.5 s per step, whatever
                                        the clock says (so that two runs fix the same total)
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

from slmkit.errors import SlmError


def _env_steps(name: str) -> set[int]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return set()
    try:
        return {int(part) for part in raw.split(",") if part.strip()}
    except ValueError:
        raise SlmError(f"environment variable {name}={raw!r} must be a comma-separated list of step numbers") from None


def _env_seconds(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SlmError(f"environment variable {name}={raw!r} must be a positive number of seconds")
    return value


@dataclass
class FaultInjector:
    """Test-only faults taken from the SLMKIT_FAULT_* environment variables."""

    kill_at: set[int] = field(default_factory=set)
    nonfinite_at: set[int] = field(default_factory=set)
    signal_at: set[int] = field(default_factory=set)
    step_seconds: float | None = None

    @classmethod
    def from_env(cls) -> FaultInjector:
        return cls(
            kill_at=_env_steps("SLMKIT_FAULT_KILL_AT_STEP"),
            nonfinite_at=_env_steps("SLMKIT_FAULT_NONFINITE_AT_STEPS"),
            signal_at=_env_steps("SLMKIT_FAULT_SIGNAL_AT_STEP"),
            step_seconds=_env_seconds("SLMKIT_FAULT_STEP_SECONDS"),
        )

    def loss_factor(self, step: int) -> float:
        """1.0, or inf for steps listed in SLMKIT_FAULT_NONFINITE_AT_STEPS."""
        return float("inf") if step in self.nonfinite_at else 1.0

    def mid_step(self, step: int) -> None:
        """Called between backward and the optimizer update of `step`."""
        if step in self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if step in self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


class BadStepTracker:
    """Counts skipped (non-finite) updates; too many in a row stops the run."""

    def __init__(self, max_in_a_row: int, total: int = 0, in_a_row: int = 0) -> None:
        self.max_in_a_row = max_in_a_row
        self.total = total
        self.in_a_row = in_a_row

    def record(self, finite: bool) -> None:
        if finite:
            self.in_a_row = 0
        else:
            self.total += 1
            self.in_a_row += 1

    @property
    def exceeded(self) -> bool:
        return self.max_in_a_row > 0 and self.in_a_row >= self.max_in_a_row

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total = int(state.get("total", 0))
        self.in_a_row = int(state.get("in_a_row", 0))


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then checkpoints and exits)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
