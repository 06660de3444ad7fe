"""What a run shows and records: progress bar (stderr), metrics.jsonl, TensorBoard events in tb/.

metrics.jsonl holds one JSON object per line: train entries (step, loss, lr, grad_norm, tok_per_s,
mfu, tokens, elapsed, skipped) and validation entries (step, val_loss, val_bpb). On resume the
entries after the checkpoint's step are dropped, so the file always describes one history.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from slmkit.fileio import atomic_write_text
from slmkit.pipeline.rundir import RunDir


def read_metrics(run: str | Path | RunDir) -> list[dict[str, Any]]:
    """All complete entries of RUN/metrics.jsonl (a torn last line from a kill is ignored)."""
    path = RunDir.of(run).metrics
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def truncate_metrics(run: str | Path | RunDir, last_step: int) -> None:
    """Keep only entries with step <= last_step (atomically rewritten)."""
    path = RunDir.of(run).metrics
    if not path.is_file():
        return
    kept = [e for e in read_metrics(run) if e.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in kept))


def _clean(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Writes metrics.jsonl + TensorBoard and drives the progress bar; a no-op when not `enabled`."""

    def __init__(self, run: str | Path | RunDir, start_step: int, max_steps: int | None, enabled: bool = True,
                 progress: bool = True) -> None:
        self.enabled = enabled
        self.run = RunDir.of(run)
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        truncate_metrics(self.run, start_step)
        self._file = open(self.run.metrics, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run.tensorboard), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
            self._tb = None
        if progress:
            from slmkit.progress import progress_bar

            self._bar = progress_bar(max_steps, "train", unit="step", initial=start_step, dynamic_ncols=True,
                                     smoothing=0.1)

    def log(self, entry: dict[str, Any]) -> None:
        """Append one entry (must hold 'step') to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in entry.items()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = entry["step"]
            for key, value in entry.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    group = "val" if key.startswith("val_") else "train"
                    self._tb.add_scalar(f"{group}/{key.removeprefix('val_')}", value, step)

    def progress(self, step: int, **postfix: str) -> None:
        """Move the bar to `step` and show the given fields (already formatted)."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def set_total(self, max_steps: int) -> None:
        """The bar's total, once a time-budgeted run has fixed it."""
        if self._bar is not None:
            self._bar.set_total(max_steps)

    def message(self, text: str) -> None:
        """A line on stderr that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._tb = self._file = None


def format_postfix(loss: float, lr: float, tok_per_s: float, mfu: float | None) -> dict[str, str]:
    """Progress-bar fields: loss, lr, tok/s, MFU."""
    fields = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_per_s:,.0f}"}
    if mfu is not None:
        fields["mfu"] = f"{100 * mfu:.1f}%"
    return fields
