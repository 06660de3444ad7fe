"""Byte-level BPE tokenizers <-> GGUF vocabularies (llama.cpp's `tokenizer.ggml.*` keys).

llama.cpp does not run a tokenizer.json: it re-implements each known pre-tokenizer under a name
(`tokenizer.ggml.pre`) and tokenizes with the vocabulary and merges stored in the file. A tokenizer
therefore exports only when its pre-tokenizer is one llama.cpp has under some name, and is the same
split exactly. The table below holds the two we produce or import (checked token-for-token against
llama.cpp in tests/test_gguf_export.py):

- "gpt-2": HF ByteLevel(use_regex=True), the GPT-2 regex; what `slm tokenizer train` builds.
- "smollm" (and llama.cpp's aliases with the same regexes): every digit split off first, then the
  GPT-2 regex; SmolLM2's and StarCoder's tokenizers.

Written by hand because neither `gguf` nor transformers writes GGUF vocabularies from a tokenizer
(llama.cpp's convert_hf_to_gguf.py does, but it is a script, not an installable library).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from slmkit.errors import SlmError

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}
# llama.cpp pre-tokenizer name -> the HF pre_tokenizer (tokenizer.json) that splits text the same way.
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [_DIGITS, _BYTE_LEVEL]},
}
# Other names llama.cpp gives the same regexes (llama-vocab.cpp): imported files may carry them.
PRE_ALIASES = {"gpt2": "gpt-2", "phi-2": "gpt-2", "starcoder": "smollm", "refact": "smollm", "codeshell": "smollm"}

# gguf.TokenType values (kept here so that importing this module does not need `gguf`).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def _canonical(spec: Any) -> Any:
    """A pre_tokenizer spec without the keys that do not change the split (trim_offsets: offsets only)."""
    if isinstance(spec, dict):
        return {k: _canonical(v) for k, v in spec.items() if k != "trim_offsets"}
    if isinstance(spec, list):
        return [_canonical(v) for v in spec]
    return spec


def hf_pre_tokenizer(pre: str) -> Any | None:
    """The `tokenizers` pre-tokenizer for a llama.cpp pre-tokenizer name, or None when not in our table."""
    from tokenizers import Tokenizer

    spec = PRE_TOKENIZERS.get(PRE_ALIASES.get(pre, pre))
    if spec is None:
        return None
    # Built through a minimal tokenizer.json: the one way `tokenizers` deserializes a pre-tokenizer spec.
    tok = Tokenizer.from_str(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []},
                                         "pre_tokenizer": spec}))
    return tok.pre_tokenizer


def gguf_pre_name(tok_json: dict[str, Any], source: str = "") -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer; SlmError when llama.cpp has no equivalent."""
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise SlmError(f"{source}: the tokenizer model is {model.get('type')!r}; GGUF export supports byte-level "
                       "BPE tokenizers only")
    if tok_json.get("normalizer") is not None:
        raise SlmError(f"{source}: the tokenizer has a normalizer ({tok_json['normalizer'].get('type')}), which "
                       "llama.cpp's byte-level BPE does not apply; it cannot be exported to GGUF")
    if (tok_json.get("decoder") or {}).get("type") != "ByteLevel":
        raise SlmError(f"{source}: the tokenizer's decoder is not ByteLevel; GGUF export supports byte-level "
                       "BPE tokenizers only")
    found = _canonical(tok_json.get("pre_tokenizer"))
    for name, spec in PRE_TOKENIZERS.items():
        if found == _canonical(spec):
            return name
    raise SlmError(f"{source}: the tokenizer's pre-tokenizer {json.dumps(tok_json.get('pre_tokenizer'))[:120]} "
                   f"has no llama.cpp equivalent; exportable: {', '.join(PRE_TOKENIZERS)}")


def _merges(model: dict[str, Any]) -> list[str]:
    """tokenizer.json merges ("a b" strings, or [a, b] pairs in newer files) as GGUF's "a b" strings."""
    merges = model.get("merges") or []
    return [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in merges]


def _bos_prefix(tok_json: dict[str, Any]) -> str | None:
    """The special token the post-processor puts before every text (add_bos), or None."""
    post = tok_json.get("post_processor") or {}
    for step in post.get("processors") or [post]:  # a Sequence of processors, or one
        if step.get("type") == "TemplateProcessing" and step.get("single"):
            return (step["single"][0].get("SpecialToken") or {}).get("id")
    return None


@dataclass
class GgufVocab:
    """What GGUF's tokenizer.ggml.* keys need, read from a tokenizer.json."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    add_bos: bool
    special_ids: dict[str, int] = field(default_factory=dict)  # bos / eos / unk / pad / mask -> id


def vocab_from_tokenizer(tok_json_text: str, n_vocab: int, special_ids: dict[str, int | None],
                         source: str = "") -> GgufVocab:
    """The GGUF vocabulary of a tokenizer.json for a model with `n_vocab` embedding rows.

    Rows beyond the tokenizer's size get "[PAD{id}]" tokens of type UNUSED (as llama.cpp's converter
    writes them); special added tokens are CONTROL, other added tokens USER_DEFINED.
    special_ids: bos/eos/pad/unk/mask ids from the model folder (None entries are dropped).
    """
    try:
        tok_json = json.loads(tok_json_text)
    except json.JSONDecodeError as exc:
        raise SlmError(f"{source}: tokenizer.json is malformed ({exc.msg}, line {exc.lineno})") from None
    pre = gguf_pre_name(tok_json, source)
    model = tok_json["model"]
    by_id: dict[int, str] = {int(i): t for t, i in (model.get("vocab") or {}).items()}
    types = {i: TOKEN_NORMAL for i in by_id}
    for added in tok_json.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    if by_id and max(by_id) >= n_vocab:
        raise SlmError(f"{source}: the tokenizer has token id {max(by_id)} but the model only {n_vocab} embedding "
                       "rows")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    token_types = [types.get(i, TOKEN_UNUSED) for i in range(n_vocab)]
    bos_name = _bos_prefix(tok_json)
    ids = {role: i for role, i in special_ids.items() if isinstance(i, int) and 0 <= i < n_vocab}
    add_bos = bos_name is not None and bos_name in tokens
    if add_bos:
        ids["bos"] = tokens.index(bos_name)
    return GgufVocab(pre=pre, tokens=tokens, token_types=token_types, merges=_merges(model), add_bos=add_bos,
                     special_ids=ids)


def write_vocab(writer: Any, vocab: GgufVocab, chat_template: str | None) -> None:
    """Add the tokenizer.ggml.* keys (and the chat template) to a `gguf.GGUFWriter`."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id, "mask": writer.add_mask_token_id}
    for role, token_id in vocab.special_ids.items():
        adders[role](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
