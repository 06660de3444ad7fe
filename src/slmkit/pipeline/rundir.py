"""The run folder contract: every path of a run folder, its readers, its lock and what `--force` discards.

    RUN/recipe.yaml              the fully resolved recipe (overrides applied)
    RUN/tokenizer.json           + tokenizer.meta.json, tokenizer_config.json, special_tokens_map.json
    RUN/data/manifest.json       + the shards it lists (their names belong to slmkit.data)
    RUN/ckpt/step-NNNNNN/        HF folder + optimizer state + trainer_state.json; ckpt/latest -> newest
    RUN/metrics.jsonl  RUN/tb/   training metrics and TensorBoard events
    RUN/eval/val.json            validation loss / bits per byte beside the unigram baseline
    RUN/samples.json  .md        the sample stage's completions
    RUN/report.html  loss.png    the report page
    RUN/run.json                 what the last `slm run` did
    RUN/.lock                    held (flock) by the process writing into the folder

This module is a leaf (standard library, yaml and slmkit.errors/fileio only), so every layer may ask it
for a path; no other module spells a run-folder file name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_text

if TYPE_CHECKING:
    from slmkit.config import Recipe

CKPT_DIR = "ckpt"
LATEST = "latest"
STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks it complete
MODEL_CONFIG_FILE = "config.json"  # what makes a folder a model (HF) folder
TOKENIZER_FILE = "tokenizer.json"  # in run folders and model folders alike
RECIPE_FILE = "recipe.yaml"
MANIFEST_FILE = "manifest.json"  # in RUN/data
_STEP_RE = re.compile(r"^step-(\d+)$")

# Keys that may change between invocations on the same run folder (they do not change results
# already on disk): extending training, logging cadence, where it runs, what to sample and evaluate.
MUTABLE_PREFIXES = (
    "stages",
    "sample.",
    "eval.",
    "train.max_steps",
    "train.max_minutes",
    "train.save_every",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.keep_last",
    "train.device",
    "data.workers",
)


@dataclass(frozen=True)
class Artifact:
    """A group of run-folder products made from the recipe keys in `inputs` and the artifacts in `after`."""

    name: str
    paths: tuple[str, ...]
    inputs: tuple[str, ...]  # recipe key prefixes
    after: tuple[str, ...] = ()  # artifacts it is made from: discarding one of them discards this too


# In pipeline order. The tokenizer's inputs are what tokenizer_fingerprint hashes, plus what the SFT
# objective copies it from; the checkpoints' are everything training reads.
ARTIFACTS = (
    Artifact("tokenizer", ("tokenizer.json", "tokenizer.meta.json", "tokenizer_config.json", "special_tokens_map.json"),
             ("tokenizer.", "data.sources", "data.seed", "task", "train.init_from")),
    Artifact("data", ("data",), ("data.",), ("tokenizer",)),
    Artifact("checkpoints", ("ckpt", "metrics.jsonl", "tb", "train_budget.json"), ("task", "model.", "train.", "sft.", "data."),
             ("tokenizer", "data")),
    Artifact("eval", ("eval",), (), ("checkpoints",)),
    Artifact("samples", ("samples.json", "samples.md"), (), ("checkpoints",)),
    Artifact("report", ("report.html", "loss.png", "run.json"), (), ("tokenizer", "data", "checkpoints")),
)


def step_name(step: int) -> str:
    """The folder name of the checkpoint after `step` updates (step-000200)."""
    return f"step-{step:06d}"


class RunDir:
    """One run folder: paths, readers and the write lock. Cheap to create; touches no file until asked."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, run: str | Path | RunDir) -> RunDir:
        """`run` itself when it is a RunDir, else the RunDir at that path."""
        return run if isinstance(run, RunDir) else cls(run)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # ------------------------------------------------------------------ paths

    recipe = property(lambda self: self.root / RECIPE_FILE)
    tokenizer = property(lambda self: self.root / TOKENIZER_FILE)
    tokenizer_meta = property(lambda self: self.root / "tokenizer.meta.json")
    data = property(lambda self: self.root / "data")
    manifest = property(lambda self: self.root / "data" / MANIFEST_FILE)
    ckpt_root = property(lambda self: self.root / CKPT_DIR)
    latest_link = property(lambda self: self.root / CKPT_DIR / LATEST)
    metrics = property(lambda self: self.root / "metrics.jsonl")
    tensorboard = property(lambda self: self.root / "tb")
    eval_dir = property(lambda self: self.root / "eval")
    val_results = property(lambda self: self.root / "eval" / "val.json")
    task_results = property(lambda self: self.root / "eval" / "tasks.json")
    samples_json = property(lambda self: self.root / "samples.json")
    samples_md = property(lambda self: self.root / "samples.md")
    report = property(lambda self: self.root / "report.html")
    loss_plot = property(lambda self: self.root / "loss.png")
    run_record = property(lambda self: self.root / "run.json")
    budget_file = property(lambda self: self.root / "train_budget.json")  # the steps train.max_steps: auto fixed
    lock_file = property(lambda self: self.root / ".lock")

    def step_dir(self, step: int) -> Path:
        """ckpt/step-NNNNNN (it may not exist)."""
        return self.ckpt_root / step_name(step)

    def report_inputs(self) -> list[Path]:
        """The files the report page is made from (its freshness fingerprint hashes them)."""
        return [self.recipe, self.metrics, self.val_results, self.task_results, self.samples_json, self.manifest]

    # ------------------------------------------------------------------ checkpoints

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (those with trainer_state.json), oldest first."""
        if not self.ckpt_root.is_dir():
            return []
        found = []
        for path in self.ckpt_root.iterdir():
            m = _STEP_RE.match(path.name)
            if m and path.is_dir() and not path.is_symlink() and (path / STATE_FILE).is_file():
                found.append((int(m.group(1)), path))
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (following ckpt/latest when it is valid), or None."""
        link = self.latest_link
        if link.is_symlink() or link.is_dir():
            target = link.resolve()
            if (target / STATE_FILE).is_file():
                return target
        found = self.checkpoints()
        return found[-1] if found else None

    def require_checkpoint(self) -> Path:
        """The latest checkpoint; SlmError naming the command that makes one when there is none."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise SlmError(f"{self.root}: no checkpoint yet; train first (slm train RECIPE --out {self.root})")
        return ckpt

    def label(self, path: Path) -> str:
        """`path` relative to the run folder (ckpt/step-000200), or as given when outside it."""
        try:
            return str(Path(path).resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------------ readers

    def read_json(self, path: Path) -> Any:
        """A JSON file of the run folder, or None when it is missing or unreadable."""
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def read_manifest(self) -> dict:
        """data/manifest.json, with a clear error when it is missing or malformed."""
        return read_manifest(self.data)

    def saved_for_latest_checkpoint(self, path: Path) -> dict | None:
        """The JSON at `path` when it was written for the run's latest checkpoint, else None."""
        ckpt = self.latest_checkpoint()
        saved = self.read_json(path)
        if ckpt is None or not isinstance(saved, dict) or saved.get("checkpoint") != self.label(ckpt):
            return None
        return saved

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writing(self, holder: str) -> Iterator[RunDir]:
        """Hold the run folder's lock while a stage writes into it (torchrun: rank 0 holds it for all).

        A folder that cannot be written, or that another process holds, is refused before any work.
        """
        if int(os.environ.get("RANK", "0")) != 0:
            yield self
            return
        self._check_writable()
        with _RunLock(self.lock_file, holder, self.root):
            yield self

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SlmError(f"cannot create run folder {self.root}: {exc.strerror}; choose another --out") from None
        if not self.root.is_dir():
            raise SlmError(f"run folder {self.root} exists and is not a folder; choose another --out")
        for folder in (self.root, *(p for p in (self.ckpt_root, self.data, self.eval_dir, self.tensorboard)
                                    if p.is_dir())):
            try:
                with tempfile.TemporaryFile(dir=folder, prefix=".write-test."):
                    pass
            except OSError as exc:
                raise SlmError(
                    f"cannot write into {folder} ({exc.strerror}); make it writable or choose another --out"
                ) from None

    def adopt(self, recipe: Recipe, force: bool = False, log=None) -> None:
        """Make `recipe` the run's recipe (write recipe.yaml), refusing or, with `force`, discarding
        every artifact whose inputs changed. Call inside `writing()`; under torchrun only rank 0 writes."""
        from slmkit.config import dump_recipe, to_dict

        log = log or _log
        if int(os.environ.get("RANK", "0")) != 0:
            return
        has_products = self.root.is_dir() and any(
            p.name not in (self.recipe.name, self.lock_file.name) for p in self.root.iterdir()
        )
        if self.recipe.exists() and has_products:
            try:
                old = yaml.safe_load(self.recipe.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError):
                old = {}
            diff = recipe_differences(old if isinstance(old, dict) else {}, to_dict(recipe))
            if diff and not force:
                shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
                raise SlmError(
                    f"run folder {self.root} holds a different recipe (differs in: {shown}); "
                    "use another --out or pass --force to rebuild what those keys change"
                )
            if diff:
                self.discard(invalidated_artifacts(diff), diff, log)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.recipe, dump_recipe(recipe))

    def discard(self, artifacts: list[str], diff: list[str], log) -> list[str]:
        """Delete the named artifacts' files; logs and returns what was removed."""
        removed = []
        for artifact in ARTIFACTS:
            if artifact.name not in artifacts:
                continue
            for rel in artifact.paths:
                path = self.root / rel
                if path.is_dir() and not path.is_symlink():
                    n = len(self.checkpoints()) if rel == CKPT_DIR else 0
                    shutil.rmtree(path)
                    removed.append(f"{rel}/" + (f" ({n} checkpoint{'s' * (n != 1)})" if n else ""))
                elif path.exists() or path.is_symlink():
                    path.unlink()
                    removed.append(rel)
        shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
        if removed:
            log(f"--force: the recipe differs in {shown}; discarding {', '.join(removed)}")
        else:
            log(f"--force: the recipe differs in {shown}; nothing to discard")
        return removed


def read_manifest(data_dir: str | Path) -> dict:
    """The data manifest of a data folder (RUN/data), with a clear error when missing or malformed."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        raise SlmError(f"no data manifest at {path}; run `slm data prepare RECIPE --out RUN` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlmError(f"{path}: malformed manifest ({exc}); rerun `slm data prepare`") from None
    if not isinstance(manifest, dict) or "splits" not in manifest:
        raise SlmError(f"{path}: not a data manifest (no 'splits'); rerun `slm data prepare`")
    return manifest


def invalidated_artifacts(diff: list[str]) -> list[str]:
    """Names of the artifacts made from any of the changed keys `diff`, and of everything made from those."""
    gone: list[str] = []
    for artifact in ARTIFACTS:
        changed = any(key == p.rstrip(".") or key.startswith(p) for key in diff for p in artifact.inputs)
        if changed or any(dep in gone for dep in artifact.after):
            gone.append(artifact.name)
    return gone


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipe mappings, ignoring mutable keys."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not k.startswith(MUTABLE_PREFIXES)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from what a user names: a model folder, `ckpt/latest`, `ckpt/`, or a run folder.

    `ckpt/latest` may be a link or a small file naming the step folder (where links are unavailable).
    """
    path = Path(path)
    if (path / MODEL_CONFIG_FILE).is_file():
        return path.resolve()
    for run in (RunDir(path), RunDir(path.parent)):
        if not (path == run.root or path.name == CKPT_DIR):
            continue
        latest = run.latest_link
        if latest.is_file() and not latest.is_symlink():
            named = run.ckpt_root / latest.read_text(encoding="utf-8", errors="replace").strip()
            if named.name and (named / MODEL_CONFIG_FILE).is_file():
                return named.resolve()
        found = run.latest_checkpoint()
        if found is not None:
            return found
    why = "it does not exist" if not path.exists() else "no config.json, and no ckpt/ with a checkpoint inside"
    raise SlmError(f"{path}: not a checkpoint folder ({why}); no checkpoint found there")


def run_of_checkpoint(ckpt: Path) -> RunDir | None:
    """The run folder a checkpoint folder belongs to (RUN/ckpt/step-N), or None for a bare model folder."""
    ckpt = Path(ckpt).resolve()
    if ckpt.parent.name == CKPT_DIR and (ckpt.parent.parent / RECIPE_FILE).is_file():
        return RunDir(ckpt.parent.parent)
    return None


def default_run_dir(recipe: Recipe) -> Path:
    """runs/NAME for a recipe without --out."""
    return Path("runs") / recipe.name


def open_run_dir(out: str | Path, recipe: Recipe, force: bool = False) -> RunDir:
    """Create or reuse the run folder `out` for `recipe` (writes recipe.yaml) without keeping the lock."""
    run = RunDir.of(out)
    with run.writing("slmkit"):
        run.adopt(recipe, force)
    return run


# --------------------------------------------------------------------------- lock


class _RunLock:
    """An exclusive flock on RUN/.lock; the file names the holder. Re-entrant within one process."""

    _held: dict[str, list] = {}  # resolved path -> [fd, depth]

    def __init__(self, path: Path, holder: str, root: Path) -> None:
        self.path, self.holder, self.root = path, holder, root
        self.key = str(path.resolve())

    def __enter__(self) -> _RunLock:
        held = self._held.get(self.key)
        if held is not None:
            held[1] += 1
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise SlmError(f"cannot write into {self.root} ({exc.strerror}); choose another --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                who = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise SlmError(
                    f"run folder {self.root} is in use by {who}; wait for it to finish or use another --out"
                ) from None
            try:  # the holder before us may have removed the file after we opened it: lock the live one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} ({self.holder})\n".encode(), 0)
        self._held[self.key] = [fd, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        held = self._held[self.key]
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.key]
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # removed while still locked, so no one can lock a stale file
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
