"""A tiny random checkpoint (HF folder with a small trained BPE tokenizer) for fast eval tests."""

from __future__ import annotations

import itertools
import json
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
