"""Supervised fine-tuning data: phi-1.5 prompt formats as named chat templates, jsonl reading,
tokenization with loss only on response tokens, and a packed, resumable batch loader.

Templates (phi-1.5, docs/REFERENCE.md), shown for one exchange; `<eot>` is `<|endoftext|>`:

    qa    "Question: {prompt}\\nAnswer: {response}<eot>"
    chat  "Alice: {prompt}\\nBob: {response}<eot>"          (turns joined by "\\n")
    code  "{signature + docstring}\\n{body}<eot>"

Each conversation is rendered as segments; only the assistant response segments (" {response}<eot>")
carry labels, everything else (system text, prompts, "Answer:" headers) is -100. The same formats are
available as Jinja strings (`chat_template(name)`) that HF `apply_chat_template` renders identically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.data.jsonl import iter_json_objects
from slmkit.data.paths import datasets_dir
from slmkit.errors import SlmError, did_you_mean
from slmkit.tokenizer import EOT, eos_id, pad_id

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class ChatFormat:
    """How one named template lays out system, user and assistant turns."""

    name: str
    user_prefix: str  # before the user's text
    user_suffix: str  # after the user's text ("\n"); with `suffix_if_missing` only when absent
    assistant_header: str  # generation prompt, not trained ("Answer:")
    response_prefix: str  # first characters of the trained response (" ")
    suffix_if_missing: bool = False
    turn_separator: str = "\n"  # after a response when another turn follows
    description: str = ""


TEMPLATES: dict[str, ChatFormat] = {
    "qa": ChatFormat("qa", "Question: ", "\n", "Answer:", " ", description='"Question: ... Answer: ..."'),
    "chat": ChatFormat("chat", "Alice: ", "\n", "Bob:", " ", description='"Alice: ... Bob: ..." (multi-turn)'),
    "code": ChatFormat(
        "code", "", "\n", "", "", suffix_if_missing=True,
        description='function signature + """docstring""" -> body',
    ),
}


def get_template(name: str) -> ChatFormat:
    """The named template, or SlmError listing the valid names."""
    if name not in TEMPLATES:
        raise SlmError(
            f"recipe key 'sft.template': unknown template {name!r}{did_you_mean(name, TEMPLATES)}; "
            f"choose one of {', '.join(TEMPLATES)}"
        )
    return TEMPLATES[name]


def render_segments(
    name: str, messages: list[dict[str, str]], add_generation_prompt: bool = False, eot: str = EOT
) -> list[tuple[str, bool]]:
    """Render a conversation as (text, trained) segments; `trained` marks assistant responses."""
    fmt = get_template(name)
    segments: list[tuple[str, bool]] = []
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "system":
            segments.append((content + "\n", False))
        elif role == "user":
            suffix = fmt.user_suffix
            if fmt.suffix_if_missing and content.endswith(suffix):
                suffix = ""
            segments.append((fmt.user_prefix + content + suffix, False))
        elif role == "assistant":
            if fmt.assistant_header:
                segments.append((fmt.assistant_header, False))
            segments.append((fmt.response_prefix + content + eot, True))
            if i + 1 < len(messages):
                segments.append((fmt.turn_separator, False))
        else:
            raise ValueError(f"unknown role {role!r}")
    if add_generation_prompt and fmt.assistant_header:
        segments.append((fmt.assistant_header, False))
    return [(text, trained) for text, trained in segments if text]


def render(name: str, messages: list[dict[str, str]], add_generation_prompt: bool = False, eot: str = EOT) -> str:
    """The full text of a conversation in the named template (what `apply_chat_template` returns)."""
    return "".join(text for text, _ in render_segments(name, messages, add_generation_prompt, eot))


def format_prompt(name: str, prompt: str) -> str:
    """A single user prompt ready for generation, e.g. 'Question: 2+2?\\nAnswer:'."""
    return render(name, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def _literal(text: str) -> str:
    """A Jinja string literal: 'Answer:'."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _emit(text: str) -> str:
    """Jinja that outputs `text` verbatim (nothing for an empty string)."""
    return "{{ " + _literal(text) + " }}" if text else ""


def chat_template(name: str, eot: str = EOT) -> str:
    """The named template as a Jinja chat template for HF `tokenizer.apply_chat_template`.

    Rendering with transformers gives exactly `render(name, messages, add_generation_prompt)`.
    """
    fmt = get_template(name)
    suffix = _emit(fmt.user_suffix)
    if fmt.suffix_if_missing and fmt.user_suffix:
        suffix = "{% if not message['content'].endswith(" + _literal(fmt.user_suffix) + ") %}" + suffix + "{% endif %}"
    header = _emit(fmt.assistant_header)
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}" + _emit("\n")
        + "{% elif message['role'] == 'user' %}" + _emit(fmt.user_prefix) + "{{ message['content'] }}" + suffix
        + "{% elif message['role'] == 'assistant' %}" + header + _emit(fmt.response_prefix)
        + "{{ message['content'] }}" + _emit(eot)
        + "{% if not loop.last %}" + _emit(fmt.turn_separator) + "{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}" + header + "{% endif %}"
    )


# --------------------------------------------------------------------------- jsonl reading


def resolve_sft_path(path: str, key: str = "sft.path") -> Path:
    """A recipe path: absolute, relative to the working folder, or relative to the shared datasets."""
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        candidates.append(datasets_dir() / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SlmError(
        f"recipe key {key!r}: file {path!r} not found (looked in the working folder and {datasets_dir()}); "
        "give a jsonl path"
    )


def _messages_from_record(record: dict, where: str, prompt_field: str, response_field: str, messages_field: str):
    if messages_field in record:
        messages = record[messages_field]
        if not isinstance(messages, list) or not messages:
            raise SlmError(f"{where}: field {messages_field!r} must be a non-empty list of {{role, content}}")
        out = []
        for j, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise SlmError(f"{where}: {messages_field}[{j}] needs 'role' and 'content'")
            role, content = message["role"], message["content"]
            if role not in ROLES:
                raise SlmError(
                    f"{where}: {messages_field}[{j}] has role {role!r}{did_you_mean(str(role), ROLES)}; "
                    f"use one of {', '.join(ROLES)}"
                )
            if not isinstance(content, str):
                raise SlmError(f"{where}: {messages_field}[{j}].content must be a string")
            out.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in out):
            raise SlmError(f"{where}: {messages_field} has no 'assistant' message to train on")
        return out
    missing = [f for f in (prompt_field, response_field) if f not in record]
    if missing:
        raise SlmError(
            f"{where}: missing field {missing[0]!r} (the line has: {', '.join(map(str, record)) or 'nothing'}); "
            f"set sft.prompt_field / sft.response_field, or give a {messages_field!r} list"
        )
    prompt, response = record[prompt_field], record[response_field]
    for field_name, value in ((prompt_field, prompt), (response_field, response)):
        if not isinstance(value, str):
            raise SlmError(f"{where}: field {field_name!r} must be a string, got {type(value).__name__}")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def read_sft_jsonl(
    path: str | Path,
    prompt_field: str = "prompt",
    response_field: str = "response",
    messages_field: str = "messages",
) -> list[list[dict[str, str]]]:
    """Conversations (lists of {role, content}) from a jsonl of prompt/response pairs or messages.

    Blank lines are skipped; a malformed line or missing field raises SlmError naming file:line.
    """
    path = Path(path)
    conversations = [
        _messages_from_record(record, where, prompt_field, response_field, messages_field)
        for where, record in iter_json_objects(path)
    ]
    if not conversations:
        raise SlmError(f"{path}: no examples (the file is empty)")
    return conversations


def load_sft_split(recipe: Any, split: str) -> list[list[dict[str, str]]]:
    """The train or val conversations of a recipe's `sft` section.

    Without `sft.val_path`, a deterministic `data.val_fraction` of the examples (by content hash)
    is held out from `sft.path` for validation.
    """
    cfg = recipe.sft
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    if not cfg.path:
        raise SlmError("recipe key 'sft.path' is required for fine-tuning (a jsonl of prompt/response pairs)")
    fields = (cfg.prompt_field, cfg.response_field, cfg.messages_field)
    if split == "val" and cfg.val_path:
        return read_sft_jsonl(resolve_sft_path(cfg.val_path, "sft.val_path"), *fields)
    conversations = read_sft_jsonl(resolve_sft_path(cfg.path), *fields)
    if cfg.val_path:
        return conversations
    held_out = [_is_val(c, recipe.data.val_fraction) for c in conversations]
    keep = [c for c, v in zip(conversations, held_out) if v == (split == "val")]
    if not keep:
        raise SlmError(
            f"{cfg.path}: the {split} split is empty (data.val_fraction={recipe.data.val_fraction}); "
            "set sft.val_path or change data.val_fraction"
        )
    return keep


def _is_val(conversation: list[dict[str, str]], fraction: float) -> bool:
    import hashlib

    digest = hashlib.sha256(json.dumps(conversation, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# --------------------------------------------------------------------------- tokenization


@dataclass
class SFTExample:
    """Token ids of one rendered conversation and which of them are trained (response) tokens."""

    ids: np.ndarray  # int64 [n]
    trained: np.ndarray  # bool [n]


def tokenize_conversations(
    tokenizer: Any, template: str, conversations: list[list[dict[str, str]]]
) -> list[SFTExample]:
    """Tokenize segment by segment (so response tokens are exact), batched in Rust.

    The text of each segment is plain text (a special token spelled out in the data stays text); the
    end of every response is the EOT special token id.
    """
    eot_id = eos_id(tokenizer)
    rendered = [render_segments(template, messages) for messages in conversations]
    texts = [text.removesuffix(EOT) if trained else text for segments in rendered for text, trained in segments]
    previous = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    finally:
        tokenizer.encode_special_tokens = previous
    examples, k = [], 0
    for segments in rendered:
        ids: list[int] = []
        trained: list[bool] = []
        for _, is_response in segments:
            piece = encodings[k].ids + ([eot_id] if is_response else [])
            k += 1
            ids.extend(piece)
            trained.extend([is_response] * len(piece))
        examples.append(SFTExample(np.asarray(ids, dtype=np.int64), np.asarray(trained, dtype=bool)))
    return examples


def tokenize_conversation(tokenizer: Any, template: str, messages: list[dict[str, str]]) -> SFTExample:
    """One conversation's tokens and response mask (see tokenize_conversations)."""
    return tokenize_conversations(tokenizer, template, [messages])[0]


def tokenize_examples(
    tokenizer: Any, template: str, conversations: list[list[dict[str, str]]], max_len: int
) -> tuple[list[SFTExample], int]:
    """Tokenize and truncate to `max_len` tokens; drop examples left without any response token.

    Returns (examples, number dropped).
    """
    examples, dropped = [], 0
    for ex in tokenize_conversations(tokenizer, template, conversations):
        ex = SFTExample(ex.ids[:max_len], ex.trained[:max_len])
        if not ex.trained[1:].any():  # position 0 is never a target
            dropped += 1
            continue
        examples.append(ex)
    return examples, dropped


def pack_rows(examples: list[SFTExample], order: np.ndarray, seq_len: int, pad: int) -> list[np.ndarray]:
    """Greedily pack whole examples (in `order`) into rows of seq_len+1 tokens.

    Each row is an int64 array [2, seq_len+1]: token ids and a trained mask (0 for padding).
    """
    width = seq_len + 1
    rows: list[np.ndarray] = []
    row = np.zeros((2, width), dtype=np.int64)
    row[0].fill(pad)
    fill = 0
    for idx in order:
        ex = examples[int(idx)]
        n = len(ex.ids)
        if fill + n > width and fill > 0:
            rows.append(row)
            row = np.zeros((2, width), dtype=np.int64)
            row[0].fill(pad)
            fill = 0
        row[0, fill : fill + n] = ex.ids
        row[1, fill : fill + n] = ex.trained
        fill += n
    if fill:
        rows.append(row)
    return rows


def rows_to_batch(rows: list[np.ndarray]) -> dict[str, Any]:
    """Stack packed rows into {"input_ids", "labels"} LongTensors [B, T]; labels[t] targets position t."""
    import torch

    block = np.stack(rows)  # [B, 2, T+1]
    ids, trained = block[:, 0], block[:, 1].astype(bool)
    labels = np.where(trained[:, 1:], ids[:, 1:], IGNORE_INDEX)
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(ids[:, :-1])),
        "labels": torch.from_numpy(np.ascontiguousarray(labels)),
    }


def _prepare(recipe: Any, tokenizer: Any, split: str) -> tuple[list[SFTExample], int]:
    conversations = load_sft_split(recipe, split)
    get_template(recipe.sft.template)
    examples, dropped = tokenize_examples(tokenizer, recipe.sft.template, conversations, recipe.data.seq_len + 1)
    if not examples:
        raise SlmError(
            f"no {split} SFT example keeps a response token within data.seq_len={recipe.data.seq_len}; "
            "raise data.seq_len or shorten the prompts"
        )
    return examples, dropped


# --------------------------------------------------------------------------- loaders


class SFTLoader:
    """Packed SFT batches, shuffled per epoch by seed, resumable via state_dict.

    Each global batch is batch_size * world_size rows; rank r takes rows [r*B, (r+1)*B).
    """

    def __init__(
        self,
        examples: list[SFTExample],
        seq_len: int,
        batch_size: int,
        seed: int,
        pad: int,
        rank: int = 0,
        world_size: int = 1,
        dropped: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.examples = examples
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.pad = pad
        self.rank = rank
        self.world_size = world_size
        self.dropped = dropped
        self.epoch = 0
        self.cursor = 0  # next row of the current epoch
        self._rows: list[np.ndarray] | None = None
        self._rows_epoch = -1

    @property
    def tokens_per_batch(self) -> int:
        """Input positions per micro-batch on this rank (batch_size * seq_len)."""
        return self.batch_size * self.seq_len

    @property
    def response_tokens(self) -> int:
        """Trained tokens in one epoch."""
        return int(sum(int(ex.trained[1:].sum()) for ex in self.examples))

    def _epoch_rows(self, epoch: int) -> list[np.ndarray]:
        if self._rows_epoch != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            self._rows = pack_rows(self.examples, order, self.seq_len, self.pad)
            self._rows_epoch = epoch
        assert self._rows is not None
        return self._rows

    def next_batch(self) -> dict[str, Any]:
        """The next {"input_ids", "labels"} micro-batch of this rank."""
        needed = self.batch_size * self.world_size
        taken: list[np.ndarray] = []
        while len(taken) < needed:
            rows = self._epoch_rows(self.epoch)
            take = rows[self.cursor : self.cursor + needed - len(taken)]
            taken.extend(take)
            self.cursor += len(take)
            if self.cursor >= len(rows):
                self.epoch += 1
                self.cursor = 0
        start = self.rank * self.batch_size
        return rows_to_batch(taken[start : start + self.batch_size])

    def state_dict(self) -> dict[str, int]:
        """Position in the stream (epoch, row) plus what must match on resume."""
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "examples": len(self.examples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a saved position."""
        if state.get("examples", len(self.examples)) != len(self.examples):
            raise SlmError(
                f"cannot resume SFT data: the checkpoint saw {state['examples']} examples, the data now has "
                f"{len(self.examples)}; restore the jsonl or start a new run folder"
            )
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])


def build_sft_loader(
    recipe: Any,
    tokenizer: Any,
    split: str,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> SFTLoader:
    """The packed SFT loader of a recipe's `sft` section for `split` ("train" or "val")."""
    examples, dropped = _prepare(recipe, tokenizer, split)
    return SFTLoader(
        examples, recipe.data.seq_len, batch_size, seed, pad_id(tokenizer), rank, world_size, dropped
    )


def iter_sft_eval_batches(
    recipe: Any, tokenizer: Any, batch_size: int, max_batches: int | None
) -> Iterator[dict[str, Any]]:
    """Validation batches in a fixed order (no shuffle), at most `max_batches` (None = all)."""
    examples, _ = _prepare(recipe, tokenizer, "val")
    rows = pack_rows(examples, np.arange(len(examples)), recipe.data.seq_len, pad_id(tokenizer))
    n_batches = math.ceil(len(rows) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        yield rows_to_batch(rows[b * batch_size : (b + 1) * batch_size])
