"""Checkpoints in the run folder, written atomically.

    OUT/ckpt/step-000200/   config.json + model.safetensors + tokenizer.json ... (an HF folder)
                            optimizer.pt          (single process / DDP)
                            dcp/                  (FSDP: model + optimizer shards, torch.distributed.checkpoint)
                            trainer_state.json    (step, RNG states and data position of every rank, ...)
    OUT/ckpt/latest         relative symlink to the newest complete checkpoint

A checkpoint is assembled in `ckpt/.step-NNNNNN.tmp/` and renamed into place when every rank has
written its part, so a kill at any moment leaves either the old or the new checkpoint, never half.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json, replace_dir
from slmkit.pipeline.rundir import STATE_FILE, RunDir, resolve_checkpoint
from slmkit.train.distributed import (
    DistEnv,
    barrier,
    full_model_state_dict,
    load_sharded_state,
    sharded_state,
)

OPTIM_FILE = "optimizer.pt"
DCP_DIR = "dcp"


def read_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SlmError(f"{ckpt}: not a training checkpoint (no {STATE_FILE})") from None
    except json.JSONDecodeError as exc:
        raise SlmError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None


def load_model_from_checkpoint(path: str | Path, device: torch.device | str | None = None,
                               dtype: torch.dtype | None = None) -> nn.Module:
    """The model stored in a checkpoint (step folder, ckpt/latest or run folder), in eval mode."""
    from slmkit.interop.folder import load_model_folder

    return load_model_folder(resolve_checkpoint(path), device=device, dtype=dtype)


# --------------------------------------------------------------------------- layout


def clean_temp(run: str | Path | RunDir) -> None:
    """Remove half-written checkpoints left by a killed run (rank 0 only)."""
    root = RunDir.of(run).ckpt_root
    if root.is_dir():
        for path in root.glob(".step-*.tmp"):
            shutil.rmtree(path, ignore_errors=True)


def _update_latest(run: RunDir, name: str) -> None:
    link = run.latest_link
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(name, tmp)
    os.replace(tmp, link)


def prune(run: str | Path | RunDir, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (keep_last <= 0 keeps all); returns the deleted."""
    if keep_last <= 0:
        return []
    run = RunDir.of(run)
    found = run.checkpoints()
    keep = set(found[-keep_last:])
    latest = run.latest_checkpoint()
    deleted = [p for p in found if p not in keep and p != latest]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted


# --------------------------------------------------------------------------- save / load


def save_checkpoint(run: str | Path | RunDir, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    parallel: str, env: DistEnv, trainer_state: dict[str, Any], keep_last: int,
                    tokenizer_file: Path | None = None, chat_template: str | None = None,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write ckpt/step-NNNNNN atomically (every rank must call this), point `latest` at it, prune.

    The model part is an HF folder (rank 0, from the full state dict); the optimizer goes to
    optimizer.pt, or with FSDP model + optimizer shards go to dcp/ via torch.distributed.checkpoint.
    """
    from slmkit.interop.folder import save_model_folder

    run = RunDir.of(run)
    final = run.step_dir(step)
    tmp = final.with_name(f".{final.name}.tmp")
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(env)
    full_state = full_model_state_dict(model, parallel)  # collective under FSDP
    if env.is_main:
        save_model_folder(model, tmp, tokenizer_file=tokenizer_file, chat_template=chat_template, metadata=metadata,
                          state_dict=full_state)
    del full_state
    if parallel == "fsdp":
        import torch.distributed.checkpoint as dcp

        dcp.save(sharded_state(model, optimizer), checkpoint_id=str(tmp / DCP_DIR))
    elif env.is_main:
        torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
    if env.is_main:
        atomic_write_json(tmp / STATE_FILE, trainer_state)
        replace_dir(tmp, final)  # re-saving a step (after --no-resume) replaces the old folder
        _update_latest(run, final.name)
        prune(run, keep_last)
    barrier(env)
    return final


def load_checkpoint(ckpt: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, parallel: str,
                    env: DistEnv) -> None:
    """Restore model weights and optimizer state in place (after `parallelize`, before training)."""
    if parallel == "fsdp":
        import torch.distributed.checkpoint as dcp

        if not (ckpt / DCP_DIR).is_dir():
            raise SlmError(f"{ckpt}: no {DCP_DIR}/ shards; it was not written with train.parallel=fsdp")
        state = sharded_state(model, optimizer)
        dcp.load(state, checkpoint_id=str(ckpt / DCP_DIR))
        load_sharded_state(model, optimizer, state)
        return
    from slmkit.interop.folder import load_model_folder

    optim_file = ckpt / OPTIM_FILE
    if not optim_file.is_file():
        raise SlmError(f"{ckpt}: no {OPTIM_FILE}; it was written with train.parallel=fsdp (resume with fsdp)")
    loaded = load_model_folder(ckpt, device=env.device)
    with torch.no_grad():
        model.load_state_dict(loaded.state_dict())
    del loaded
    optimizer.load_state_dict(torch.load(optim_file, map_location=env.device, weights_only=True))
