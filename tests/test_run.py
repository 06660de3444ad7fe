"""`slm run` end to end on a tiny recipe (real stdlib data): every stage, then a second run reuses
everything; changed keys redo only the stages they affect; SFT from the pretrained checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from slmkit.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-pretrain.yaml"
OUTPUTS = ["tokenizer.json", "data/manifest.json", "ckpt/step-000012/model.safetensors", "metrics.jsonl",
           "eval/val.json", "samples.json", "samples.md", "report.html", "loss.png"]


def slm(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def statuses(run_dir: Path) -> dict[str, str]:
    record = json.loads((run_dir / "run.json").read_text())
    return {s["name"]: s["status"] for s in record["stages"]}


def mtimes(run_dir: Path) -> dict[str, int]:
    return {name: (run_dir / name).stat().st_mtime_ns for name in OUTPUTS}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run (first invocation) and its stdout."""
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    code, stdout, stderr = slm("run", str(TINY), "--out", str(run_dir))
    assert code == 0, stderr
    return run_dir, stdout


def test_first_run_makes_everything_and_says_where(tiny_run):
    run_dir, stdout = tiny_run
    for name in OUTPUTS:
        assert (run_dir / name).is_file(), name
    assert set(statuses(run_dir).values()) == {"ran"}
    assert f"report:     {run_dir / 'report.html'}" in stdout
    assert f"checkpoint: {run_dir / 'ckpt' / 'step-000012'}" in stdout
    val = json.loads((run_dir / "eval" / "val.json").read_text())
    assert f"val loss:   {val['model']['loss']:.4f} nats/token" in stdout
    samples = json.loads((run_dir / "samples.json").read_text())
    assert len(samples["samples"]) == 5 and samples["step"] == 12
    html = (run_dir / "report.html").read_text()
    assert "# &lt;b&gt;&amp;&lt;/b&gt;" in html and "<b>&</b>" not in html  # the 5th prompt, escaped


def test_second_run_reuses_every_stage(tiny_run):
    run_dir, first_stdout = tiny_run
    before = mtimes(run_dir)
    code, stdout, stderr = slm("run", str(TINY), "--out", str(run_dir))
    assert code == 0, stderr
    assert set(statuses(run_dir).values()) == {"reused"}
    assert mtimes(run_dir) == before
    assert stdout == first_stdout


def test_more_steps_resume_training_and_redo_later_stages(tiny_run, tmp_path):
    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny_run[0], run_dir, symlinks=True)
    code, _, stderr = slm("run", str(TINY), "train.max_steps=16", "--out", str(run_dir))
    assert code == 0, stderr
    assert statuses(run_dir) == {"tokenizer": "reused", "data": "reused", "train": "ran", "eval": "ran",
                                 "sample": "ran", "report": "ran"}
    assert "resuming from" in stderr and "step 12" in stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 2 and steps[-1] == 16  # one history: resumed, not restarted
    assert json.loads((run_dir / "eval" / "val.json").read_text())["step"] == 16


def test_new_prompts_redo_only_sample_and_report(tiny_run, tmp_path):
    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny_run[0], run_dir, symlinks=True)
    code, _, stderr = slm("run", str(TINY), "sample.prompts=[\"def g():\"]", "--out", str(run_dir))
    assert code == 0, stderr
    assert [k for k, v in statuses(run_dir).items() if v == "ran"] == ["sample", "report"]
    assert json.loads((run_dir / "samples.json").read_text())["samples"][0]["prompt"] == "def g():"


def test_bad_input_exits_2_with_one_line(tmp_path):
    code, _, stderr = slm("run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x"))
    assert code == 2 and stderr.startswith("error: recipe file not found")
    code, _, stderr = slm("run", str(TINY), "stages=[tokenizer,trian]", "--out", str(tmp_path / "x"))
    assert code == 2 and "'train'" in stderr and "Traceback" not in stderr
    sft_recipe = str(Path(__file__).parents[1] / "recipes" / "sft-qa.yaml")
    code, _, stderr = slm("run", sft_recipe, f"train.init_from={tmp_path / 'none'}", "--out", str(tmp_path / "s1"))
    assert code == 2 and "'train.init_from'" in stderr and "does not exist" in stderr
    code, _, stderr = slm("run", sft_recipe, "sft.path=nope.jsonl", "--out", str(tmp_path / "s2"))
    assert code == 2 and "'sft.path'" in stderr and "not found" in stderr


def test_sft_run_from_the_pretrained_checkpoint(tiny_run, tmp_path, datasets):
    from transformers import AutoTokenizer

    from slmkit.data.sft import chat_template, render

    pretrained = tiny_run[0] / "ckpt" / "latest"
    out = tmp_path / "sft"
    code, stdout, stderr = slm(
        "run", str(Path(__file__).parents[1] / "recipes" / "sft-qa.yaml"), f"train.init_from={pretrained}",
        "sft.path=gsm8k/test.jsonl", "data.seq_len=128", "train.max_steps=3", "train.batch_size=2",
        "train.eval_batches=2", "train.eval_every=3", "sample.max_new_tokens=8", "--out", str(out),
    )
    assert code == 0, stderr
    ckpt = out / "ckpt" / "step-000003"
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat_template("qa")
    hf = AutoTokenizer.from_pretrained(str(ckpt))
    messages = [{"role": "user", "content": "What is 2+2?"}]
    expected = "Question: What is 2+2?\nAnswer:"
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    assert render("qa", messages, add_generation_prompt=True) == expected
    val = json.loads((out / "eval" / "val.json").read_text())
    assert val["task"] == "sft" and val["model"]["tokens"] > 0 and val["model"]["bpb"] > 0
    samples = json.loads((out / "samples.json").read_text())
    assert samples["samples"][0]["prompt"].startswith("Question: Tom has 3 apples")
    assert samples["samples"][0]["prompt"].endswith("\nAnswer:")
    assert (out / "report.html").is_file() and "report:" in stdout
