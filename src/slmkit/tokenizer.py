"""Byte-level BPE tokenizer: train with HF `tokenizers`, save `tokenizer.json`, load, special-token ids.

The trained file loads in `tokenizers.Tokenizer.from_file` and `transformers.PreTrainedTokenizerFast`.
Special tokens take ids 0..k-1 in recipe order (first = end-of-text, second = pad, last = mask).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from slmkit.config import Recipe
from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json, sha256_file

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer.meta.json"
EOT, PAD, MASK = "<|endoftext|>", "<|pad|>", "<|mask|>"


def tokenizer_fingerprint(recipe: Recipe) -> str:
    """Hash of everything that determines the trained tokenizer (tokenizer config + sources + seed)."""
    import tokenizers

    spec = {
        "tokenizer": asdict(recipe.tokenizer),
        "sources": [asdict(s) for s in recipe.data.sources],
        "seed": recipe.data.seed,
        "tokenizers": tokenizers.__version__,
        "format": 1,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build_tokenizer():
    """An untrained byte-level BPE tokenizer: no normalizer, ByteLevel pre-tokenizer without prefix space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def training_texts(recipe: Recipe) -> Iterator[str]:
    """A deterministic sample of the recipe's documents, capped at tokenizer.max_train_bytes.

    When the sources hold more than the cap, each source contributes a seeded random subset of about
    weight_share * cap bytes.
    """
    from slmkit.data.sources import load_sources

    loaded = load_sources(recipe.data.sources)
    cap = recipe.tokenizer.max_train_bytes
    sizes = [[len(d.text.encode("utf-8")) for d in src.docs] for src in loaded]
    total = sum(map(sum, sizes))
    weights = [src.config.weight for src in loaded]
    for src, doc_sizes, weight in zip(loaded, sizes, weights):
        budget = cap * weight / sum(weights) if total > cap else float("inf")
        order = list(range(len(src.docs)))
        if total > cap:
            random.Random(f"{recipe.data.seed}:{src.config.name}").shuffle(order)
        used = 0
        for i in order:
            if used >= budget:
                break
            used += doc_sizes[i]
            yield src.docs[i].text


def _check_special_tokens(tok, specials: list[str], where: str) -> None:
    missing = [t for t in specials if tok.token_to_id(t) is None]
    if missing:
        raise SlmError(f"{where} lacks the recipe's special tokens {missing}; set tokenizer.special_tokens to match")


def train_tokenizer(recipe: Recipe, run_dir: str | Path, progress: bool = True) -> Path:
    """Train (or reuse) RUN/tokenizer.json for the recipe and return its path.

    Reused when `tokenizer.meta.json` records the same fingerprint and file hash. With
    `tokenizer.path` set, that file is checked and copied instead of training.
    """
    from tokenizers import pre_tokenizers, trainers

    run_dir = Path(run_dir)
    out, meta_path = run_dir / TOKENIZER_FILE, run_dir / META_FILE
    cfg = recipe.tokenizer
    fingerprint = tokenizer_fingerprint(recipe)
    if out.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            meta = {}
        if meta.get("fingerprint") == fingerprint and meta.get("sha256") == sha256_file(out):
            _log(f"reusing {out} (same tokenizer config)")
            return out
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.path:
        src = Path(cfg.path).expanduser()
        if not src.is_file():
            raise SlmError(f"recipe key 'tokenizer.path': file not found: {src}")
        _check_special_tokens(load_tokenizer(src), cfg.special_tokens, str(src))
        tmp = out.with_name(f".{out.name}.copy.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(out)
    else:
        tok = build_tokenizer()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=list(cfg.special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress and sys.stdout.isatty(),  # it draws on stdout
        )
        tok.train_from_iterator(training_texts(recipe), trainer=trainer)
        tmp = out.with_name(f".{out.name}.tmp")
        tok.save(str(tmp))
        tmp.replace(out)
    write_hf_config(run_dir, cfg.special_tokens)
    meta = {"fingerprint": fingerprint, "sha256": sha256_file(out), "vocab_size": load_tokenizer(out).get_vocab_size()}
    atomic_write_json(meta_path, meta)
    _log(f"tokenizer: {out} (vocab {meta['vocab_size']})")
    return out


def ensure_tokenizer(recipe: Recipe, run_dir: str | Path, progress: bool = True) -> Path:
    """RUN/tokenizer.json, training it when missing or when it was trained from a different config.

    A tokenizer.json placed in the run folder without `tokenizer.meta.json` is used as is.
    """
    run_dir = Path(run_dir)
    path, meta_path = run_dir / TOKENIZER_FILE, run_dir / META_FILE
    if path.exists() and not meta_path.exists():
        return path
    if path.exists():
        try:
            current = json.loads(meta_path.read_text()).get("fingerprint") == tokenizer_fingerprint(recipe)
        except json.JSONDecodeError:
            current = False
        if current:
            return path
    return train_tokenizer(recipe, run_dir, progress=progress)


def write_hf_config(folder: str | Path, special_tokens: list[str]) -> None:
    """tokenizer_config.json + special_tokens_map.json so `AutoTokenizer.from_pretrained(folder)` works."""
    specials = special_map(special_tokens)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        **specials,
        "additional_special_tokens": [t for t in special_tokens if t not in specials.values()],
    }
    atomic_write_json(Path(folder) / "tokenizer_config.json", config)
    atomic_write_json(Path(folder) / "special_tokens_map.json", specials)


def special_map(special_tokens: list[str]) -> dict[str, str]:
    """eos/bos/unk/pad/mask token names for transformers, from the recipe's special-token list."""
    eos = EOT if EOT in special_tokens else special_tokens[0]
    pad = PAD if PAD in special_tokens else (special_tokens[1] if len(special_tokens) > 1 else eos)
    mask = MASK if MASK in special_tokens else special_tokens[-1]
    return {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": pad, "mask_token": mask}


def load_tokenizer(path: str | Path):
    """Load a tokenizer.json (a file, or a folder holding one) as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise SlmError(f"tokenizer not found: {path}; run `slm tokenizer train RECIPE` first")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception for malformed files
        raise SlmError(f"{path}: not a valid tokenizer.json ({exc})") from None


def special_tokens(tok) -> list[str]:
    """The tokenizer's special tokens, ordered by id."""
    added = tok.get_added_tokens_decoder()
    return [t.content for _, t in sorted(added.items()) if t.special]


def _special_id(tok, name: str, position: int) -> int:
    tid = tok.token_to_id(name)
    if tid is not None:
        return tid
    specials = special_tokens(tok)
    if not specials:
        raise SlmError(f"tokenizer has no special tokens (needed: {name})")
    return tok.token_to_id(specials[position] if -len(specials) <= position < len(specials) else specials[0])


def eos_id(tok) -> int:
    """Id of the end-of-text token (document separator)."""
    return _special_id(tok, EOT, 0)


def pad_id(tok) -> int:
    """Id of the padding token."""
    return _special_id(tok, PAD, 1)


def mask_id(tok) -> int:
    """Id of the mask token (diffusion / infilling)."""
    return _special_id(tok, MASK, -1)


def hf_tokenizer(path: str | Path):
    """A `transformers.PreTrainedTokenizerFast` for a tokenizer.json, with eos/pad/mask set."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    specials = special_map(special_tokens(load_tokenizer(path)))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), **specials)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)
