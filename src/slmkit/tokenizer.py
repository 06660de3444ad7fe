"""Byte-level BPE tokenizer: train with HF `tokenizers`, save `tokenizer.json`, load, special-token ids.

This module owns the special tokens (their names, defaults and ids) and is the one writer of
`tokenizer_config.json` / `special_tokens_map.json`, for run folders and checkpoints alike.
The trained file loads in `tokenizers.Tokenizer.from_file` and `transformers.PreTrainedTokenizerFast`.
Special tokens take ids 0..k-1 in recipe order (first = end-of-text, second = pad, last = mask).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from slmkit.pipeline.rundir import TOKENIZER_FILE, RunDir

if TYPE_CHECKING:
    from slmkit.config import Recipe

HF_CONFIG_FILE = "tokenizer_config.json"
HF_SPECIAL_MAP_FILE = "special_tokens_map.json"
EOT, PAD, MASK = "<|endoftext|>", "<|pad|>", "<|mask|>"
DEFAULT_SPECIAL_TOKENS = [
    EOT,  # document separator and end of generation
    PAD,
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    MASK,  # diffusion / infilling
]


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


def tokenizer_is_current(recipe: Recipe, run: str | Path | RunDir) -> bool:
    """RUN/tokenizer.json exists and was trained from this recipe (same fingerprint and file hash).

    A tokenizer.json placed in the run folder without `tokenizer.meta.json` is used as is.
    """
    run = RunDir.of(run)
    if not run.tokenizer.is_file():
        return False
    if not run.tokenizer_meta.exists():
        return True
    try:
        meta = json.loads(run.tokenizer_meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (isinstance(meta, dict) and meta.get("fingerprint") == tokenizer_fingerprint(recipe)
            and meta.get("sha256") == sha256_file(run.tokenizer))


def train_tokenizer(recipe: Recipe, run: str | Path | RunDir, progress: bool = True) -> Path:
    """Train (or reuse) RUN/tokenizer.json for the recipe and return its path.

    Reused when `tokenizer.meta.json` records the same fingerprint and file hash. With
    `tokenizer.path` set, that file is checked and copied instead of training.
    """
    from tokenizers import pre_tokenizers, trainers

    run = RunDir.of(run)
    out = run.tokenizer
    cfg = recipe.tokenizer
    if run.tokenizer_meta.exists() and tokenizer_is_current(recipe, run):
        _log(f"reusing {out} (same tokenizer config)")
        return out
    run.root.mkdir(parents=True, exist_ok=True)
    if cfg.path:
        src = Path(cfg.path).expanduser()
        if not src.is_file():
            raise SlmError(f"recipe key 'tokenizer.path': file not found: {src}")
        _check_special_tokens(load_tokenizer(src), cfg.special_tokens, str(src))
        atomic_write_bytes(out, src.read_bytes())
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
        atomic_write_text(out, tok.to_str(pretty=True))
    trained = load_tokenizer(out)
    write_hf_config(run.root, trained)
    meta = {"fingerprint": tokenizer_fingerprint(recipe), "sha256": sha256_file(out),
            "vocab_size": trained.get_vocab_size()}
    atomic_write_json(run.tokenizer_meta, meta)
    _log(f"tokenizer: {out} (vocab {meta['vocab_size']})")
    return out


def write_hf_config(folder: str | Path, tok: Any, model_max_length: int | None = None,
                    chat_template: str | None = None, specials: dict[str, str] | None = None) -> None:
    """tokenizer_config.json + special_tokens_map.json so `AutoTokenizer.from_pretrained(folder)` works.

    The one writer of these files (run folders and checkpoints): special tokens come from `tok` itself.
    `specials` (e.g. {"bos_token": "<s>", "eos_token": "</s>"}, from an imported model) names the
    bos/eos/unk/pad/mask tokens explicitly instead of the heuristics of `special_map`.
    """
    names = special_tokens(tok)
    if specials is not None:
        unknown = [f"{key}={name!r}" for key, name in specials.items() if tok.token_to_id(name) is None]
        if unknown:
            raise SlmError(f"special token(s) {', '.join(unknown)} are not in the tokenizer's vocabulary")
        specials = dict(specials)
    else:
        specials = special_map(names) if names else {}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length or 1_000_000_000,
        **specials,
        "additional_special_tokens": [t for t in names if t not in specials.values()],
    }
    if chat_template:
        config["chat_template"] = chat_template
    atomic_write_json(Path(folder) / HF_CONFIG_FILE, config)
    atomic_write_json(Path(folder) / HF_SPECIAL_MAP_FILE, specials)


def read_hf_tokenizer_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's tokenizer_config.json as a mapping; {} when it is missing or unreadable."""
    try:
        data = json.loads((Path(folder) / HF_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def chat_template_of(folder: str | Path) -> str | None:
    """The chat template a model folder's tokenizer_config.json carries, or None."""
    template = read_hf_tokenizer_config(folder).get("chat_template")
    return template if isinstance(template, str) and template else None


def special_token_ids(tok: Any) -> dict[str, int | None]:
    """bos/eos/pad ids for an HF config.json / generation_config.json (None when the token is absent)."""
    eos = tok.token_to_id(EOT)
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": tok.token_to_id(PAD)}


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
