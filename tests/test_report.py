"""report.html from a synthetic run folder: picture, numbers, escaped samples, settings, freshness."""

from __future__ import annotations

import base64
import json
import math
import re

import pytest

from slmkit.config import load_recipe
from slmkit.pipeline import report
from slmkit.pipeline.rundir import open_run_dir

EVIL = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture()
def run_dir(tmp_path):
    from pathlib import Path

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "quickstart.yaml", ["name=report-test", "train.max_minutes=8.5"])
    out = open_run_dir(tmp_path / "run", recipe)
    lines = []
    for step in range(10, 310, 10):
        lines.append({"step": step, "loss": 9.0 * math.exp(-step / 100) + 2.5, "lr": 1e-3, "tok_per_s": 2048.0,
                      "mfu": 0.21, "tokens": step * 4096, "elapsed": step * 1.5})
        if step % 100 == 0:
            lines.append({"step": step, "val_loss": 9.0 * math.exp(-step / 100) + 2.7, "val_bpb": 1.5})
    (out / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"step": 31', encoding="utf-8")
    (out / "eval").mkdir()
    (out / "eval" / "val.json").write_text(json.dumps({
        "checkpoint": "ckpt/step-000300", "step": 300, "params": 15_123_456,
        "model": {"loss": 3.1234, "bpb": 1.2345, "tokens": 65536},
        "unigram": {"loss": 6.5432, "bpb": 2.8765, "tokens": 70000},
    }))
    (out / "samples.json").write_text(json.dumps({
        "step": 300, "settings": {"temperature": 0.7},
        "samples": [{"prompt": "def f(x):\n", "completion": f"    return {EVIL}\n"}],
    }))
    return out


def test_report_holds_picture_numbers_escaped_samples_and_settings(run_dir):
    path = report.write_report(run_dir)
    text = path.read_text(encoding="utf-8")
    assert EVIL not in text and "<script>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    match = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert match and base64.b64decode(match.group(1)).startswith(b"\x89PNG")
    assert (run_dir / "loss.png").read_bytes() == base64.b64decode(match.group(1))
    # val numbers, model size, tokens trained (300 steps * 4096)
    for number in ("3.1234", "1.2345", "6.5432", "2.8765", "15.12M (15,123,456)", "1,228,800"):
        assert number in text
    assert "report-test" in text and "max_minutes: 8.5" in text  # the resolved recipe.yaml
    assert report.report_is_current(run_dir)


def test_report_goes_stale_when_inputs_change(run_dir):
    report.write_report(run_dir)
    with open(run_dir / "samples.json", "a") as f:
        f.write(" ")
    assert not report.report_is_current(run_dir)


def test_report_without_metrics_or_eval(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: empty\n")
    text = report.write_report(tmp_path).read_text()
    assert "No metrics yet" in text and "<img" not in text
