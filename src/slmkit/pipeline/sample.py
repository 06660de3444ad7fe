"""Sample stage: one completion per `sample.prompts` entry from the latest checkpoint.

Writes RUN/samples.json ({"checkpoint", "step", "settings", "samples": [{"prompt", "completion"}]})
and RUN/samples.md for reading. With `task: sft` each prompt is first put in the recipe's chat
template (e.g. "Question: ...\\nAnswer:").
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json, atomic_write_text

SAMPLES_JSON = "samples.json"
SAMPLES_MD = "samples.md"


def sample_settings(recipe: Any) -> dict[str, Any]:
    """What determines the samples besides the checkpoint."""
    settings = dataclasses.asdict(recipe.sample)
    settings.pop("prompts")
    if recipe.task == "sft":
        settings["template"] = recipe.sft.template
    return settings


def shown_prompts(recipe: Any) -> list[str]:
    """The prompts as the model sees them (templated for SFT)."""
    if not recipe.sample.prompts:
        raise SlmError("recipe key 'sample.prompts' is empty; add prompts or drop the sample stage from 'stages'")
    if recipe.task == "sft":
        from slmkit.data.sft import format_prompt

        return [format_prompt(recipe.sft.template, p) for p in recipe.sample.prompts]
    return list(recipe.sample.prompts)


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


def sample_run(recipe: Any, run_dir: str | Path) -> dict[str, Any]:
    """Generate the samples, write samples.json + samples.md, and return the JSON data."""
    from slmkit.eval.perplexity import checkpoint_info, checkpoint_label
    from slmkit.generate import generate
    from slmkit.interop.hf import load_hf_folder
    from slmkit.tokenizer import load_tokenizer
    from slmkit.train.distributed import resolve_device

    run_dir = Path(run_dir)
    ckpt, step = checkpoint_info(run_dir)
    prompts = shown_prompts(recipe)
    cfg = recipe.sample
    model = load_hf_folder(ckpt, device=resolve_device(recipe.train.device))
    tokenizer = load_tokenizer(ckpt)
    completions = generate(
        model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
    )
    data = {
        "checkpoint": checkpoint_label(run_dir, ckpt),
        "step": step,
        "settings": sample_settings(recipe),
        "samples": [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)],
    }
    atomic_write_json(run_dir / SAMPLES_JSON, data)
    atomic_write_text(run_dir / SAMPLES_MD, samples_markdown(data))
    return data


def samples_are_current(recipe: Any, run_dir: str | Path) -> bool:
    """True when samples.json holds the current prompts and settings for the latest checkpoint."""
    from slmkit.eval.perplexity import saved_for_latest_checkpoint

    run_dir = Path(run_dir)
    try:
        prompts = shown_prompts(recipe)
    except SlmError:
        return False
    saved = saved_for_latest_checkpoint(run_dir, run_dir / SAMPLES_JSON)
    return (
        saved is not None
        and (run_dir / SAMPLES_MD).is_file()
        and saved.get("settings") == sample_settings(recipe)
        and [s.get("prompt") for s in saved.get("samples", [])] == prompts
    )
