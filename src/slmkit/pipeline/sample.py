"""Sample stage: one completion per `sample.prompts` entry from a checkpoint (default: the latest).

Writes RUN/samples.json ({"checkpoint", "step", "settings", "samples": [{"prompt", "completion"}]})
and RUN/samples.md for reading. The run's objective says what a prompt becomes (SFT puts each in
the recipe's chat template, e.g. "Question: ...\\nAnswer:").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json, atomic_write_text
from slmkit.pipeline.rundir import RunDir


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def samples_markdown(data: dict[str, Any]) -> str:
    """samples.md: each prompt and its completion in code blocks (fences longer than any backtick run)."""
    settings = ", ".join(f"{k}={v}" for k, v in data["settings"].items())
    lines = [f"# Samples from {data['checkpoint']} (step {data['step']})", "", f"Settings: {settings}", ""]
    for i, item in enumerate(data["samples"], start=1):
        fence = _fence(item["prompt"] + item["completion"])
        lines += [f"## Sample {i}", "", "Prompt:", "", fence, item["prompt"].rstrip("\n"), fence, "",
                  "Completion:", "", fence, item["completion"].rstrip("\n"), fence, ""]
    return "\n".join(lines)


def sample_run(recipe: Any, run: str | Path | RunDir, ckpt: Path | None = None) -> dict[str, Any]:
    """Generate the samples, write samples.json + samples.md, and return the JSON data."""
    from slmkit.device import resolve_device
    from slmkit.generate import generate
    from slmkit.interop.hf import load_hf_folder
    from slmkit.objectives import get_objective
    from slmkit.tokenizer import load_tokenizer
    from slmkit.train.checkpoint import read_trainer_state

    run = RunDir.of(run)
    objective = get_objective(recipe.task, recipe)
    prompts = objective.sample_prompts(recipe)
    ckpt = ckpt or run.require_checkpoint()
    cfg = recipe.sample
    model = load_hf_folder(ckpt, device=resolve_device(cfg.device or recipe.train.device,
                                                       where="recipe key 'sample.device'"))
    tokenizer = load_tokenizer(ckpt)
    completions = generate(
        model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
    )
    data = {
        "checkpoint": run.label(ckpt),
        "step": int(read_trainer_state(ckpt).get("step", 0)),
        "settings": objective.sample_settings(recipe),
        "samples": [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)],
    }
    atomic_write_json(run.samples_json, data)
    atomic_write_text(run.samples_md, samples_markdown(data))
    return data


def samples_are_current(recipe: Any, run: str | Path | RunDir) -> bool:
    """True when samples.json holds the current prompts and settings for the latest checkpoint."""
    from slmkit.objectives import get_objective

    run = RunDir.of(run)
    objective = get_objective(recipe.task, recipe)
    try:
        prompts = objective.sample_prompts(recipe)
    except SlmError:
        return False
    saved = run.saved_for_latest_checkpoint(run.samples_json)
    return (
        saved is not None
        and run.samples_md.is_file()
        and saved.get("settings") == objective.sample_settings(recipe)
        and [s.get("prompt") for s in saved.get("samples", [])] == prompts
    )
