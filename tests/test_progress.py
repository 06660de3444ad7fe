"""slmkit.progress: plain throttled lines when stderr is not a terminal (logs, CI), tqdm on a terminal;
and `slm run` with stderr piped writes a readable log (no carriage returns)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from slmkit import progress
from slmkit.progress import (
    NoProgress,
    PlainProgress,
    TerminalProgress,
    format_duration,
    progress_bar,
    progress_interval,
    progress_iter,
)

REPO = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "fixtures" / "tiny-pretrain.yaml"


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "\r" not in err
    return err.splitlines()


def test_plain_lines_show_count_postfix_and_eta_at_most_once_per_interval(capsys):
    clock = FakeClock()
    bar = PlainProgress(400, "train", unit="step", interval_s=5, clock=clock)
    for _ in range(120):  # 120 steps over 15 s: a line at 5, 10 and 15 s, none in between
        clock.t += 0.125
        bar.update(1)
        if bar.n == 60:
            bar.set_postfix({"loss": "5.1234", "lr": "1.20e-03", "tok/s": "3,400"}, refresh=False)
    assert lines(capsys) == ["train: 40/400 (10%) elapsed 5.0s ETA 45s",
                             "train: 80/400 (20%) loss=5.1234 lr=1.20e-03 tok/s=3,400 elapsed 10s ETA 40s",
                             "train: 120/400 (30%) loss=5.1234 lr=1.20e-03 tok/s=3,400 elapsed 15s ETA 35s"]
    clock.t += 50
    bar.set_postfix(loss=4.5)
    bar.update(0)  # a due line also comes with no progress
    clock.t += 1
    bar.update(280)
    bar.close()
    bar.close()  # idempotent
    rest = lines(capsys)
    assert rest == ["train: 120/400 (30%) loss=4.5 elapsed 1m05s ETA 2m32s",
                    "train: 400/400 (100%) loss=4.5 elapsed 1m06s"]


def test_plain_resume_initial_bytes_and_write(capsys):
    clock = FakeClock()
    with PlainProgress(1000, "train", initial=900, interval_s=5, clock=clock) as bar:
        bar.write("resuming from ckpt")
        clock.t += 10
        bar.update(50)  # ETA from the 50 steps done in this process, not 950
    out = lines(capsys)
    assert out == ["resuming from ckpt", "train: 950/1000 (95%) elapsed 10s ETA 10s"]  # close: no repeat
    with PlainProgress(3_000_000, "tokenize", unit="B", unit_scale=True, interval_s=5, clock=clock) as bar:
        clock.t += 2
        bar.update(1_500_000)
    assert lines(capsys) == ["tokenize: 1.50MB/3.00MB (50%) 750kB/s elapsed 2.0s ETA 2.0s"]  # only the final one


def test_plain_unknown_total_and_transient_bar(capsys):
    clock = FakeClock()
    with PlainProgress(None, "eval", unit="batch", interval_s=5, clock=clock) as bar:
        bar.update(7)
    assert lines(capsys) == ["eval: 7 elapsed 0.0s"]
    with PlainProgress(3, "eval", leave=False, interval_s=5, clock=clock) as bar:  # short and transient: no trace
        bar.update(3)
    assert lines(capsys) == []
    with PlainProgress(3, "eval", leave=False, interval_s=1, clock=clock) as bar:  # long: a final line too
        clock.t += 1
        bar.update(1)
        bar.update(2)
    assert lines(capsys) == ["eval: 1/3 (33%) elapsed 1.0s ETA 2.0s", "eval: 3/3 (100%) elapsed 1.0s"]


def test_progress_bar_picks_display_and_interval(capsys, monkeypatch):
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)
    assert progress_interval() == 5.0 and progress_interval(2) == 2.0
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.5")
    assert progress_interval() == 0.5 and progress_interval(3) == 3.0
    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    assert progress_interval() == 5.0
    assert isinstance(progress_bar(10, "x"), PlainProgress)  # capsys: stderr is not a terminal
    assert isinstance(progress_bar(10, "x", enabled=False), NoProgress)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    bar = progress_bar(10, "x", initial=2, dynamic_ncols=True, smoothing=0.1)
    assert isinstance(bar, TerminalProgress) and bar.n == 2
    bar.update(3)
    bar.set_postfix({"loss": "1.0"}, refresh=False)
    assert bar.n == 5
    bar.close()
    capsys.readouterr()


def test_progress_iter_and_disabled(capsys, monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    assert list(progress_iter(iter(range(3)), total=3, desc="eval", unit="batch")) == [0, 1, 2]
    out = lines(capsys)
    assert out[-1].startswith("eval: 3/3 (100%) elapsed ")
    assert len(out) == 3  # one per item (interval 0); the last already shows the final count
    assert list(progress_iter([1, 2], desc="x", enabled=False)) == [1, 2]
    with progress_bar(5, "x", enabled=False) as bar:
        bar.update(2)
        assert bar.n == 2
        bar.write("still printed")
    assert lines(capsys) == ["still printed"]


def test_format_duration():
    assert [format_duration(s) for s in (0.42, 9.4, 12, 62, 3599, 3600 * 3 + 300)] == \
        ["0.4s", "9.4s", "12s", "1m02s", "59m59s", "3h05m"]


def test_slm_run_log_has_no_carriage_returns(tmp_path):
    env = dict(os.environ)
    env.pop(progress.INTERVAL_ENV, None)
    env.update(OMP_NUM_THREADS="1", SLMKIT_PEAK_FLOPS="1e11", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "slmkit.cli", "run", str(TINY), "--out", str(tmp_path / "run"), "train.max_steps=12"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert "\r" not in err
    log = err.splitlines()
    assert 10 <= len(log) <= 60, err
    final = [line for line in log if line.startswith("train: 12/12 (100%)")]
    assert len(final) == 1 and "loss=" in final[0] and "tok/s=" in final[0]
    assert any(line.startswith("tokenize: ") for line in log)
