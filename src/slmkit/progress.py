"""Progress display for the whole project: a tqdm bar on a terminal, plain throttled lines otherwise.

When stderr is a terminal, `progress_bar` is a real tqdm bar on stderr. When it is not (CI, a log
file, nohup), it prints a plain line such as

    train: 120/400 (30%) loss=5.12 lr=1.2e-03 tok/s=3,400 elapsed 1m02s ETA 2m10s

at most every `interval_s` seconds (default 5; the SLMKIT_PROGRESS_INTERVAL environment variable
overrides it) and one final line on close; it never writes a carriage return.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

INTERVAL_ENV = "SLMKIT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 5.0

T = TypeVar("T")


def stderr_is_terminal() -> bool:
    """Whether sys.stderr (as it is now) is an interactive terminal."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def progress_interval(interval_s: float | None = None) -> float:
    """Seconds between plain progress lines: `interval_s`, else $SLMKIT_PROGRESS_INTERVAL, else 5."""
    if interval_s is not None:
        return max(0.0, float(interval_s))
    try:
        return max(0.0, float(os.environ[INTERVAL_ENV]))
    except (KeyError, ValueError):
        return DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    """0.4s, 12s, 1m02s, 3h05m."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """The interface every display has: update, set_postfix, write, close, `n`; a context manager."""

    n: int | float = 0

    def update(self, n: int | float = 1) -> None:
        raise NotImplementedError

    def set_postfix(self, fields: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        raise NotImplementedError

    def write(self, text: str) -> None:
        """A normal line on stderr."""
        print(text, file=sys.stderr, flush=True)

    def set_total(self, total: int | float | None) -> None:
        """Change the expected total (e.g. once a time-budgeted run has fixed its steps)."""
        self.total = total

    def close(self) -> None:
        pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainProgress(Progress):
    """tqdm's subset (update, set_postfix, write, close, n) as throttled plain lines on stderr."""

    def __init__(self, total: int | float | None, desc: str, unit: str = "it", unit_scale: bool = False,
                 leave: bool = True, interval_s: float | None = None, initial: int | float = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.unit_scale, self.leave = total, desc, unit, unit_scale, leave
        self.n = self.initial = initial
        self.interval = progress_interval(interval_s)
        self._clock = clock
        self._start = self._last = clock()
        self._postfix: dict[str, str] = {}
        self._lines = 0
        self._emitted_n: int | float | None = None
        self._closed = False

    def _count(self, value: float) -> str:
        if self.unit_scale:
            from tqdm import tqdm

            return f"{tqdm.format_sizeof(value)}{self.unit}"
        return f"{value:g}" if isinstance(value, float) else str(value)

    def line(self, now: float | None = None) -> str:
        """The progress line as of `now` (the clock's time when None)."""
        elapsed = (self._clock() if now is None else now) - self._start
        done = self.n - self.initial
        parts = [f"{self.desc}: {self._count(self.n)}" + (f"/{self._count(self.total)}" if self.total else "")]
        if self.total:
            parts.append(f"({100 * self.n / self.total:.0f}%)")
        if self.unit_scale and elapsed > 0:
            parts.append(f"{self._count(done / elapsed)}/s")
        parts += [f"{k}={v}" for k, v in self._postfix.items()]
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and self.n < self.total:
            eta = format_duration(elapsed / done * (self.total - self.n)) if done > 0 else "?"
            parts.append(f"ETA {eta}")
        return " ".join(parts)

    def _emit(self, now: float) -> None:
        print(self.line(now), file=sys.stderr, flush=True)
        self._last = now
        self._lines += 1
        self._emitted_n = self.n

    def update(self, n: int | float = 1) -> None:
        """Advance by `n`; prints a line if `interval` seconds passed since the last one."""
        self.n += n
        if self._closed:
            return
        now = self._clock()
        if now - self._last >= self.interval:
            self._emit(now)

    def set_postfix(self, fields: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Fields shown after the count (`refresh` is accepted for tqdm compatibility)."""
        self._postfix = {str(k): _format_value(v) for k, v in {**(fields or {}), **kwargs}.items()}

    def close(self) -> None:
        """Print the final line (unless `leave` is False and no line was printed yet)."""
        if self._closed:
            return
        self._closed = True
        if (self.leave or self._lines) and (not self._lines or self._emitted_n != self.n):
            self._emit(self._clock())  # the final count, unless the last line already showed it


class TerminalProgress(Progress):
    """A tqdm bar on stderr, with the same small interface as PlainProgress."""

    def __init__(self, total: int | float | None, desc: str, unit: str = "it", unit_scale: bool = False,
                 leave: bool = True, initial: int | float = 0, **tqdm_kwargs: Any) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave, initial=initial,
                         file=sys.stderr, **tqdm_kwargs)

    @property
    def n(self) -> int | float:
        return self._bar.n

    def update(self, n: int | float = 1) -> None:
        self._bar.update(n)

    def set_postfix(self, fields: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self._bar.set_postfix(fields, refresh=refresh, **kwargs)

    def write(self, text: str) -> None:
        self._bar.write(text, file=sys.stderr)

    def set_total(self, total: int | float | None) -> None:
        self._bar.total = total
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class NoProgress(Progress):
    """Shows nothing (progress disabled); still counts `n`, and `write` still prints."""

    def __init__(self, initial: int | float = 0) -> None:
        self.n = initial

    def update(self, n: int | float = 1) -> None:
        self.n += n

    def set_postfix(self, fields: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        pass


def progress_bar(total: int | float | None, desc: str, unit: str = "it", unit_scale: bool = False,
                 enabled: bool = True, leave: bool = True, interval_s: float | None = None,
                 initial: int | float = 0, **tqdm_kwargs: Any) -> Progress:
    """A progress display on stderr: tqdm on a terminal, plain lines every `interval_s` s otherwise.

    `tqdm_kwargs` (dynamic_ncols, smoothing, ...) only apply to the terminal bar.
    """
    if not enabled:
        return NoProgress(initial)
    if stderr_is_terminal():
        return TerminalProgress(total, desc, unit=unit, unit_scale=unit_scale, leave=leave, initial=initial,
                                **tqdm_kwargs)
    return PlainProgress(total, desc, unit=unit, unit_scale=unit_scale, leave=leave, interval_s=interval_s,
                         initial=initial)


def progress_iter(iterable: Iterable[T], total: int | float | None = None, desc: str = "", unit: str = "it",
                  enabled: bool = True, leave: bool = True, interval_s: float | None = None,
                  **tqdm_kwargs: Any) -> Iterator[T]:
    """Yield from `iterable`, counting one step per item on a `progress_bar` (closed at the end)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit=unit, enabled=enabled, leave=leave, interval_s=interval_s,
                      **tqdm_kwargs) as bar:
        for item in iterable:
            yield item
            bar.update(1)
