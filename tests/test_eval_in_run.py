"""Benchmark tasks inside a run: train.eval_tasks every eval_every steps, eval.tasks in the eval stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-pretrain.yaml"


def test_eval_tasks_in_training_and_eval_stage(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["run", str(FIXTURE), "--out", str(run), "--no-progress", "train.eval_tasks=[arc_easy,winogrande]",
            "train.eval_tasks_limit=4", "eval.tasks=[ppl:val,arc_easy,ppl:python-docs]", "eval.limit=4"]
    assert main(args) == 0
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [e for e in entries if "eval/arc_easy/acc" in e]
    assert [e["step"] for e in scored] == [6, 12]
    assert all(0 <= e["eval/winogrande/acc"] <= 1 for e in scored)
    tasks = json.loads((run / "eval" / "tasks.json").read_text())
    assert set(tasks["tasks"]) == {"arc_easy", "ppl:python-docs"} and tasks["tasks"]["arc_easy"]["n"] == 4
    assert (run / "eval" / "val.json").is_file() and (run / "eval" / "tasks.samples.jsonl").is_file()
    assert "<h2>Benchmarks</h2>" in (run / "report.html").read_text()
    capsys.readouterr()
    assert main(["run", str(FIXTURE), "--out", str(run), "--no-progress", "train.eval_tasks=[arc_easy,winogrande]",
                 "train.eval_tasks_limit=4", "eval.tasks=[ppl:val,arc_easy,ppl:python-docs]", "eval.limit=4"]) == 0
    assert "reusing" in capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("eval.tasks=[arc_esay]", "recipe key 'eval.tasks': unknown task 'arc_esay' (did you mean 'arc_easy'?)"),
    ("train.eval_tasks=[ppl:val]", "ppl:val is already scored during training"),
    ("eval.tasks=[]", "must be a non-empty list"),
])
def test_eval_tasks_checked_at_load(tmp_path, capsys, override, message):
    assert main(["run", str(FIXTURE), "--out", str(tmp_path / "r"), override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
