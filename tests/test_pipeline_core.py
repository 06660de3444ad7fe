"""The pipeline spine: recipes checked at load, the run-folder lock, --force invalidation, shard
verification, unwritable folders, umask, the stage registry and its verbs, and the architecture rules
(no task-name tests outside the objectives, no run-folder file names outside RunDir)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from train_utils import REPO, subprocess_env

from slmkit.cli import main
from slmkit.config import load_recipe
from slmkit.errors import SlmError
from slmkit.pipeline.rundir import RunDir, invalidated_artifacts

TINY = REPO / "tests" / "fixtures" / "tiny-pretrain.yaml"
SRC = REPO / "src" / "slmkit"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


# --------------------------------------------------------------------------- recipes checked at load

BAD_OVERRIDES = [
    ("train.schedule=cosin", "did you mean 'cosine'"),
    ("train.precision=bf61", "'train.precision'"),
    ("train.parallel=fdsp", "did you mean 'fsdp'"),
    ("train.device=gpu", "'train.device'"),
    ("train.optimizer=lama", "did you mean 'llama'"),
    ("task=pretrian", "did you mean 'pretrain'"),
    ("stages=[tokenizer,trian]", "did you mean 'train'"),
    ("data.sources.0.type=jsnl", "did you mean 'jsonl'"),
    ("data.sources.0.weight=.inf", "not a finite number"),
    ("data.sources.0.weight=.nan", "not a finite number"),
    ("train.lr=.nan", "'train.lr'"),
    ("train.max_minutes=-1", "'train.max_minutes'"),
    ("model.preset=tiny-lama", "did you mean 'tiny-llama'"),
    ("model.n_layers=0", "'model.n_layers'"),
    ("model.mlp=swiglo", "did you mean 'swiglu'"),
    ("data.seq_len=4096", "exceeds the model context"),
    ("sample.top_p=2", "'sample.top_p'"),
    ("sample.temperature=-1", "'sample.temperature'"),
    ("sample.temperature=1e-300", "'sample.temperature' must be 0 (greedy) or >= 1e-06"),
    ("eval.batches=0", "'eval.batches'"),
    ("eval.device=tpu", "'eval.device'"),
    ("train.seed=-1", "'train.seed'"),
    ("data.seed=-5", "'data.seed'"),
    ("train.batch_size=0", "'train.batch_size'"),
    ("train.max_bad_steps=-1", "'train.max_bad_steps'"),
    ("task=sft", "stage 'data' does not apply to task: sft"),
]


@pytest.mark.parametrize("override,fragment", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_hostile_recipe_value_fails_at_load_and_writes_nothing(override, fragment, tmp_path, capsys):
    out = tmp_path / "never"
    code, stdout, err = run_cli(capsys, "run", TINY, "--out", out, override)
    assert_one_line_error(code, err, fragment)
    assert not out.exists() and stdout == ""


def test_hostile_sft_keys_are_checked_at_load(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", TINY, "--out", tmp_path / "x", "task=sft", "sft.path=a.jsonl",
                           "sft.template=qaa", "stages=[train]")
    assert_one_line_error(code, err, "did you mean 'qa'")
    code, _, err = run_cli(capsys, "run", TINY, "--out", tmp_path / "x", "task=sft", "sft.path=a.jsonl",
                           "stages=[data]")
    assert_one_line_error(code, err, "stage 'data' does not apply to task: sft")
    assert not (tmp_path / "x").exists()


def test_a_typo_is_refused_without_importing_torch(tmp_path):
    """The acceptance case `train.schedule=cosin`: refused by the recipe check alone (no torch, no stage)."""
    code = (
        "import sys; from slmkit.cli import main; "
        f"rc = main(['run', {str(TINY)!r}, '--out', {str(tmp_path / 'x')!r}, 'train.schedule=cosin']); "
        "print(rc, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert "did you mean 'cosine'" in result.stderr and not (tmp_path / "x").exists()


def test_hostile_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    lines = ["a0: &a0 [" + ", ".join(["'lol'"] * 10) + "]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("x:\n" + "\n".join("  " + line for line in lines) + "\nname: *a8\n")
    with pytest.raises(SlmError, match="expands to more than"):  # counted, never expanded (10^9 values)
        load_recipe(bomb)
    # an alias bomb inside a string-typed key of a small recipe: the error message stays short
    small = tmp_path / "small.yaml"
    small.write_text("a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nname: [*b, *b, *b, *b]\n")
    with pytest.raises(SlmError) as info:
        load_recipe(small)
    assert len(str(info.value)) < 300


def test_old_recipes_without_an_eval_section_keep_their_settings():
    recipe = load_recipe(TINY)
    from slmkit.eval.perplexity import eval_settings

    assert eval_settings(recipe) == {"max_batches": recipe.train.eval_batches, "batch_size": recipe.train.batch_size}
    recipe = load_recipe(TINY, ["eval.batches=3", "eval.batch_size=2"])
    assert eval_settings(recipe) == {"max_batches": 3, "batch_size": 2}


# --------------------------------------------------------------------------- runs shared by the tests below


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The tiny recipe trained for 6 steps (tokenizer, data, train) through `slm train`."""
    run = tmp_path_factory.mktemp("core") / "run"
    assert main(["train", str(TINY), "--out", str(run), "train.max_steps=6", "train.save_every=3",
                 "--no-progress"]) == 0
    return run


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def test_slm_train_makes_the_earlier_stages_through_the_runner(trained):
    run = RunDir(trained)
    assert run.tokenizer.is_file() and run.manifest.is_file() and run.latest_checkpoint().name == "step-000006"
    assert not run.lock_file.exists()  # released and removed


# --------------------------------------------------------------------------- --force


def test_force_with_a_changed_tokenizer_rebuilds_tokenizer_data_and_model(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path / "run")
    code, _, err = run_cli(capsys, "train", TINY, "--out", work, "train.max_steps=6", "tokenizer.vocab_size=600",
                           "--no-progress")
    assert_one_line_error(code, err, "different recipe", "tokenizer.vocab_size", "--force")
    code, out, err = run_cli(capsys, "train", TINY, "--out", work, "train.max_steps=6", "tokenizer.vocab_size=600",
                             "--no-progress", "--force")
    assert code == 0, err
    assert "discarding tokenizer.json" in err and "data/" in err and "ckpt/ (2 checkpoints)" in err  # steps 3, 6
    run = RunDir(work)
    assert json.loads(run.tokenizer_meta.read_text())["vocab_size"] == 600
    assert run.read_manifest()["tokenizer"]["vocab_size"] == 600
    config = json.loads((run.latest_checkpoint() / "config.json").read_text())
    assert config["vocab_size"] == 600
    assert json.loads(out.splitlines()[-1])["steps"] == 6  # trained from scratch, not resumed


def test_force_with_a_changed_model_keeps_tokenizer_and_data(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path / "run")
    run = RunDir(work)
    kept = {p: p.stat().st_mtime_ns for p in (run.tokenizer, run.manifest)}
    code, _, err = run_cli(capsys, "train", TINY, "--out", work, "train.max_steps=6", "model.n_layers=3",
                           "--no-progress", "--force")
    assert code == 0, err
    assert "discarding ckpt/" in err and "tokenizer.json" not in err.split("discarding", 1)[1].splitlines()[0]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    config = json.loads((run.latest_checkpoint() / "config.json").read_text())
    assert config["num_hidden_layers"] == 3


def test_artifacts_invalidated_by_each_kind_of_change():
    everything = ["tokenizer", "data", "checkpoints", "eval", "samples", "report"]
    assert invalidated_artifacts(["tokenizer.vocab_size"]) == everything
    assert invalidated_artifacts(["data.sources"]) == everything
    assert invalidated_artifacts(["data.val_fraction"]) == everything[1:]
    assert invalidated_artifacts(["model.n_layers"]) == everything[2:]
    assert invalidated_artifacts(["train.lr"]) == everything[2:]
    assert invalidated_artifacts(["name"]) == []


# --------------------------------------------------------------------------- the lock


def test_a_second_writer_is_refused_naming_the_holder(trained, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from slmkit.pipeline.rundir import RunDir\n"
         f"with RunDir({str(trained)!r}).writing('slm train'):\n"
         "    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=subprocess_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (["train", TINY, "--out", trained, "train.max_steps=6"], ["eval", trained],
                     ["report", trained]):
            code, _, err = run_cli(capsys, *argv)
            assert_one_line_error(code, err, "is in use by", f"PID {holder.pid}", "slm train")
    finally:
        holder.kill()
        holder.wait()
    assert main(["report", str(trained)]) == 0  # a killed holder leaves no stale lock


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.writing("outer"), run.writing("inner"):
        assert run.lock_file.exists()
    assert not run.lock_file.exists()


# --------------------------------------------------------------------------- shards


def test_training_refuses_a_corrupt_shard_and_data_prepare_rebuilds_it(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path / "run")
    run = RunDir(work)
    shard = run.data / run.read_manifest()["splits"]["train"]["shards"][0]["path"]
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    code, _, err = run_cli(capsys, "train", TINY, "--out", work, "train.max_steps=8", "--no-progress")
    assert_one_line_error(code, err, shard.name, "corrupt", f"slm data prepare {run.recipe} --out {work}")
    assert run.latest_checkpoint().name == "step-000006"  # nothing trained on it
    code, _, err = run_cli(capsys, "data", "prepare", TINY, "--out", work, "train.max_steps=8", "--quiet")
    assert code == 0 and "corrupt" in err
    assert main(["train", str(TINY), "--out", str(work), "train.max_steps=8", "--no-progress"]) == 0


# --------------------------------------------------------------------------- unwritable folders


def _as_nobody(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `slm ARGV` as an unprivileged user (root writes anywhere, so permissions need another user)."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    env = subprocess_env(HOME=str(cwd), XDG_CACHE_HOME=str(cwd / ".cache"))
    return subprocess.run([*prefix, sys.executable, "-m", "slmkit.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd)


def _unprivileged_python_works(cwd: Path) -> bool:
    """Whether `_as_nobody` can run this interpreter and import slmkit (parent folders may be private)."""
    result = _as_nobody(["--version"], cwd)
    return result.returncode == 0


def test_hostile_unwritable_folder_is_refused_before_any_work_in_process(trained, tmp_path, monkeypatch, capsys):
    """The same refusal, wherever the checkout lives: the write probe of ckpt/ fails as for a read-only folder."""
    import slmkit.pipeline.rundir as rundir

    work = copy_run(trained, tmp_path / "run")
    real = tempfile.TemporaryFile

    def probe(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
        if Path(dir) == work / "ckpt":
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", probe)
    code, _, err = run_cli(capsys, "train", TINY, "--out", work, "train.max_steps=8", "--no-progress")
    assert_one_line_error(code, err, "cannot write into", "ckpt", "Permission denied")
    assert RunDir(work).latest_checkpoint().name == "step-000006" and not (work / "ckpt" / "step-000008").exists()


def test_hostile_unwritable_run_folder_or_ckpt_folder_is_refused_before_any_work(trained):
    base = Path(tempfile.mkdtemp(prefix="slmkit-ro-"))
    os.chmod(base, 0o755)
    if os.geteuid() == 0 and not _unprivileged_python_works(base):
        shutil.rmtree(base)
        pytest.skip("an unprivileged user cannot run this checkout's Python (private parent folder); "
                    "the in-process variant above covers the refusal")
    try:
        ro = copy_run(trained, base / "ro")  # owned by us, not writable by the child
        os.chmod(ro, 0o555)
        result = _as_nobody(["train", str(TINY), "--out", str(ro), "train.max_steps=8", "--no-progress"], base)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: cannot write into") and "Traceback" not in result.stderr
        writable = copy_run(trained, base / "rw")  # the child may write the run folder but not ckpt/
        for path in [writable, *writable.rglob("*")]:
            if path.parts[len(writable.parts):][:1] != ("ckpt",) and not path.is_symlink():
                os.chown(path, 65534, 65534) if os.geteuid() == 0 else None
        os.chmod(writable / "ckpt", 0o555)
        result = _as_nobody(["train", str(TINY), "--out", str(writable), "train.max_steps=8", "--no-progress"], base)
        assert result.returncode == 2, result.stderr
        assert "cannot write into" in result.stderr and "ckpt" in result.stderr
        assert RunDir(writable).latest_checkpoint().name == "step-000006"
    finally:
        for path in base.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                os.chmod(path, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    from slmkit.fileio import atomic_dir, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "folder") as folder:
            (folder / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "folder").stat().st_mode & 0o777 == mode | 0o111 & ~umask


def test_run_outputs_get_the_mode_of_ordinary_new_files(trained):
    from slmkit.fileio import current_umask

    run = RunDir(trained)
    ckpt = run.latest_checkpoint()
    for path in (run.recipe, run.manifest, run.tokenizer, ckpt / "model.safetensors", ckpt / "config.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask(), path


# --------------------------------------------------------------------------- verbs from the registry


def test_every_stage_is_a_verb_and_runs_alone(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path / "run")
    code, out, err = run_cli(capsys, "eval", work)
    assert code == 0, err
    assert "ckpt/step-000006 (step 6)" in out and "unigram baseline" in out
    val = RunDir(work).read_json(RunDir(work).val_results)
    assert val["checkpoint"] == "ckpt/step-000006" and val["max_batches"] == 2
    code, out, err = run_cli(capsys, "eval", work / "ckpt" / "step-000003", "eval.batches=1", "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == 3 and json.loads(out)["max_batches"] == 1
    code, out, err = run_cli(capsys, "sample", work)
    assert code == 0 and "# Samples from ckpt/step-000006" in out and RunDir(work).samples_md.is_file()
    code, out, err = run_cli(capsys, "report", work)
    assert code == 0 and Path(out.strip()) == RunDir(work).report
    code, _, err = run_cli(capsys, "eval", tmp_path / "nothing")
    assert_one_line_error(code, err, "not a run folder")


def test_a_verb_whose_module_cannot_be_imported_is_an_error(monkeypatch, capsys):
    import slmkit.cli as cli

    monkeypatch.setattr(cli, "TOOL_COMMANDS", (*cli.TOOL_COMMANDS, "slmkit.commands.not_there"))
    code = main(["--help"])
    err = capsys.readouterr().err
    assert code == 1 and "slmkit.commands.not_there cannot be imported" in err


def test_every_registered_verb_is_in_the_help(capsys):
    from slmkit.pipeline.stages import STAGES

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    verbs = [m.rsplit(".", 1)[1] for m in (s.command for s in STAGES.values())]
    assert all(re.search(rf"^\s+{v}\b", out, re.M) for v in [*verbs, "run", "model", "generate"]), out


# --------------------------------------------------------------------------- architecture rules


def _sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in SRC.rglob("*.py")}


def test_only_the_objective_registry_looks_at_the_task_name():
    offenders = [str(p.relative_to(SRC)) for p, text in _sources().items()
                 if re.search(r"task\s*[!=]=|\.task\s+in\b", text) and p.parent.name != "objectives"]
    assert offenders == []


def test_run_folder_file_names_are_spelled_only_in_rundir():
    names = ["recipe.yaml", "metrics.jsonl", "manifest.json", "report.html", "samples.json", "samples.md",
             "val.json", "tokenizer.meta.json", "trainer_state.json", "run.json", "loss.png", "tokenizer.json"]
    pattern = re.compile("[\"'](" + "|".join(re.escape(n) for n in names) + ")[\"']")
    offenders = [f"{p.relative_to(SRC)}: {m.group(0)}" for p, text in _sources().items()
                 if p.name != "rundir.py" for m in pattern.finditer(text)]
    assert offenders == []


def test_special_tokens_are_spelled_only_in_the_tokenizer_module():
    offenders = [str(p.relative_to(SRC)) for p, text in _sources().items()
                 if re.search(r"[\"']<\|(endoftext|pad|mask)\|>[\"']", text) and p.name != "tokenizer.py"]
    assert offenders == []


def test_saved_recipe_round_trips(trained):
    saved = yaml.safe_load(RunDir(trained).recipe.read_text())
    assert saved["stages"] == ["tokenizer", "data", "train", "eval", "sample", "report"]
    assert load_recipe(RunDir(trained).recipe).train.max_steps == 6


def test_hostile_recipe_that_is_not_utf8_or_not_a_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe name: x\n")
    code, _, err = run_cli(capsys, "run", bad, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "not UTF-8")
    code, _, err = run_cli(capsys, "run", tmp_path, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "recipe file not found")
    (tmp_path / "afile").write_text("")
    code, _, err = run_cli(capsys, "run", TINY, "--out", tmp_path / "afile")
    assert_one_line_error(code, err, "cannot create run folder")


@pytest.mark.parametrize("override", ["n_layers=.nan", "d_model=abc", "rope_theta=.inf", "n_layerz=2"])
def test_hostile_model_info_overrides_are_type_checked(override, capsys):
    code, _, err = run_cli(capsys, "model", "info", "tiny-llama", override)
    assert_one_line_error(code, err, override.split("=")[0] if "n_layerz" not in override else "did you mean 'n_layers'")


def test_hostile_inputs_of_later_stages_are_checked_before_the_first_runs(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", TINY, "--out", out, "sample.prompts=[]")
    assert_one_line_error(code, err, "'sample.prompts' is empty")
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]  # no stage ran


def test_hostile_eval_overrides_may_not_change_what_the_run_was_made_from(trained, capsys):
    code, _, err = run_cli(capsys, "eval", trained, "data.val_fraction=0.5")
    assert_one_line_error(code, err, "cannot change data.val_fraction")
    code, _, err = run_cli(capsys, "sample", trained, "model.n_layers=9")
    assert_one_line_error(code, err, "cannot change model.n_layers")


def test_hostile_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "run", TINY, "--out", "")
    assert_one_line_error(code, err, "--out is empty")
    assert list(tmp_path.iterdir()) == []


def test_shared_datasets_are_found_from_any_working_folder(tmp_path, monkeypatch):
    from slmkit.data.paths import datasets_dir

    monkeypatch.delenv("SLMKIT_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert datasets_dir() == (REPO / ".." / "shared" / "datasets").resolve()
