"""`slm quantize`: a checkpoint -> a folder with int8 / int4 weight-only layers, with the cost measured.

The perplexity delta is measured on the same tokens for the source and the quantized model: a run's
checkpoint on its validation split (the run's eval stage, without touching RUN/eval/val.json), any
other folder on a named data source (`ppl:<source type>` of `slm eval`, default python-docs).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError

DEFAULT_GROUP = {8: None, 4: 64}  # int8: one scale per output channel; int4: groups of 64 inputs


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _check_source(folder: Path) -> tuple[str, dict[str, Any]]:
    """(kind, config.json) of a checkpoint that can be quantized."""
    from slmkit.interop.folder import check_model_folder, read_config_json
    from slmkit.interop.quantized_folder import quantization_spec

    if not folder.exists():
        raise SlmError(f"checkpoint not found: {folder}")
    kind = check_model_folder(folder)
    config = read_config_json(folder)
    if quantization_spec(config) is not None:
        raise SlmError(f"{folder} is already quantized; quantize the checkpoint it was made from")
    return kind, config


def _val_loss(ckpt: Path, model: Any, progress: bool = True) -> tuple[dict[str, Any], str]:
    """(loss / bits per byte of `model` on the run's val split, what was scored)."""
    from slmkit.config import load_recipe
    from slmkit.eval.perplexity import evaluate_run
    from slmkit.pipeline.rundir import run_of_checkpoint

    run = run_of_checkpoint(ckpt)
    recipe = load_recipe(run.recipe)
    report = evaluate_run(recipe, run, ckpt=ckpt, progress=progress, model=model, write=False)
    return {"loss": report["model"]["loss"], "bits_per_byte": report["model"]["bpb"],
            "tokens": report["model"]["tokens"]}, f"{run.root}/data (val split)"


def _denoising_loss(ckpt: Path, model: Any, progress: bool = True) -> tuple[dict[str, Any], str]:
    """CodeFusion's validation loss (the trainer's own measure) with the noise fixed by a seed, so the
    source and its quantized copy see the same timesteps and noise."""
    import torch

    from slmkit.config import load_recipe
    from slmkit.eval.loss import evaluate
    from slmkit.eval.perplexity import eval_settings
    from slmkit.objectives import get_objective
    from slmkit.pipeline.rundir import run_of_checkpoint
    from slmkit.tokenizer import load_tokenizer

    run = run_of_checkpoint(ckpt)
    recipe = load_recipe(run.recipe)
    objective = get_objective(recipe.task, recipe)
    settings = eval_settings(recipe)
    batches = objective.eval_batches(recipe, run, load_tokenizer(ckpt), settings["batch_size"], settings["max_batches"])
    with torch.random.fork_rng(), torch.inference_mode():
        torch.manual_seed(0)
        result = evaluate(model, batches, loss_fn=lambda batch: objective.loss(model, batch),
                          count_fn=objective.batch_targets)
    return {"loss": result["loss"], "tokens": result["tokens"]}, f"{run.root}/data (val split)"


def _source_loss(folder: Path, source: str, limit: int, progress: bool = True) -> tuple[dict[str, Any], str]:
    """Bits per byte of the model in `folder` on `limit` documents of a data source (ppl:<source>)."""
    from slmkit.data.paths import datasets_dir
    from slmkit.eval.harness import EvalOptions, evaluate, load_lm
    from slmkit.eval.tasks import get_tasks

    tasks = get_tasks([f"ppl:{source}"], limit=limit)
    results, _ = evaluate(load_lm(folder), tasks, EvalOptions(data_root=datasets_dir(), limit=limit,
                                                                    progress=progress))
    entry = results["tasks"][f"ppl:{source}"]
    if "metrics" not in entry:
        raise SlmError(f"ppl:{source}: {entry.get('skipped', 'no result')}")
    bpb = entry["metrics"]["bits_per_byte"]["value"]
    return {"bits_per_byte": bpb, "loss": None, "documents": entry["n"]}, f"ppl:{source} ({entry['n']} documents)"


def _delta(before: dict[str, Any], after: dict[str, Any], kind: str) -> dict[str, Any]:
    """Perplexity change in %: per token from the losses, else per byte from bits per byte.
    CodeFusion's loss is a denoising loss, not a log-likelihood: its change is given as is."""
    if kind == "codefusion":
        return {"loss_before": before["loss"], "loss_after": after["loss"],
                "loss_delta_pct": 100 * (after["loss"] / before["loss"] - 1)}
    if before.get("loss") is not None and after.get("loss") is not None:
        ppl_before, ppl_after = math.exp(before["loss"]), math.exp(after["loss"])
        unit = "token"
    else:
        ppl_before, ppl_after = 2 ** before["bits_per_byte"], 2 ** after["bits_per_byte"]
        unit = "byte"
    return {"ppl_before": ppl_before, "ppl_after": ppl_after, "ppl_unit": unit,
            "ppl_delta_pct": 100 * (ppl_after / ppl_before - 1)}


def quantize_checkpoint(ckpt: str | Path, out: str | Path, bits: int, group_size: int | None = None,
                        symmetric: bool = False, force: bool = False, evaluate: bool = True,
                        ppl_source: str = "python-docs", limit: int = 20, progress: bool = True) -> dict[str, Any]:
    """Quantize the decoder checkpoint `ckpt` into the folder `out`; returns (and stores) the measurements."""
    from slmkit.errors import check_choice
    from slmkit.fileio import atomic_dir, atomic_write_json
    from slmkit.interop.folder import check_output_path, load_model_folder
    from slmkit.interop.quantized_folder import REPORT_FILE, save_quantized_folder
    from slmkit.models.quantized import BITS, GROUP_SIZES, quantize_model
    from slmkit.pipeline.rundir import run_of_checkpoint

    check_choice(str(bits), [str(b) for b in BITS], "--bits")
    if group_size is not None:
        check_choice(str(group_size), [str(g) for g in GROUP_SIZES], "--group-size")
    group = DEFAULT_GROUP[bits] if group_size is None else group_size
    ckpt, out = Path(ckpt), Path(out)
    kind, config = _check_source(ckpt)
    check_output_path(out, ckpt, force, folder_output=True)
    in_run = run_of_checkpoint(ckpt) is not None
    if evaluate and kind == "codefusion" and not in_run:
        raise SlmError(f"{ckpt}: a CodeFusion checkpoint outside a run has no likelihood to score (its loss needs "
                       "the run's validation split); pass --no-eval, or give the run's checkpoint")
    t0 = time.perf_counter()
    model = load_model_folder(ckpt)
    before = None
    val_loss = _denoising_loss if kind == "codefusion" else _val_loss
    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    if evaluate and in_run:
        say("scoring the source checkpoint on the run's validation split")
        before, scored = val_loss(ckpt, model, progress)
    modules = quantize_model(model, bits, group, symmetric)
    spec = {"bits": bits, "group_size": group, "symmetric": symmetric, "modules": modules, "source": str(ckpt)}
    summary: dict[str, Any] = {"folder": str(out), "source": str(ckpt), "kind": kind, "bits": bits,
                               "group_size": group, "symmetric": symmetric, "layers": len(modules),
                               "bytes_before": _folder_bytes(ckpt)}
    try:
        with atomic_dir(out) as tmp:
            save_quantized_folder(model, ckpt, tmp, config, spec)
            summary["bytes_after"] = _folder_bytes(tmp)
            if evaluate:
                if in_run:
                    say("scoring the quantized model on the same tokens")
                    after, _ = val_loss(ckpt, load_model_folder(tmp), progress)
                else:
                    say(f"scoring the source on ppl:{ppl_source} ({limit} documents)")
                    before, scored = _source_loss(ckpt, ppl_source, limit, progress)
                    say("scoring the quantized model on the same documents")
                    after, _ = _source_loss(tmp, ppl_source, limit, progress)
                summary.update({"scored_on": scored, "before": before, "after": after,
                                **_delta(before, after, kind)})
            summary["seconds"] = round(time.perf_counter() - t0, 1)
            atomic_write_json(tmp / REPORT_FILE, {**summary, "folder": str(out)})
    except OSError as exc:
        raise SlmError(f"--out {out}: cannot write the folder ({exc.strerror or exc})") from None
    return summary
