"""Reading user text files: UTF-8 with file-naming errors, and JSON Lines with file:line errors."""

from __future__ import annotations

import codecs
import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a missing or unreadable file into an SlmError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise SlmError(f"file not found: {path}") from None
    except OSError as exc:
        raise SlmError(f"cannot read {path}: {exc.strerror}") from None


def _not_utf8(path: Path, byte: int) -> SlmError:
    return SlmError(f"{path}: not UTF-8 text (byte {byte}); convert it to UTF-8")


def read_text(path: Path) -> str:
    """Read a text file as UTF-8, naming the file on failure."""
    with _reading(path):
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc.start) from None


def iter_text_chunks(path: Path, size: int = 1 << 20) -> Iterator[str]:
    """A UTF-8 text file in consecutive pieces of about `size` characters, read `size` bytes at a time.

    Joined, the pieces equal `read_text(path)` (same universal-newline translation), but memory stays
    bounded by `size` however long the file or its lines are. Errors name the file (and the byte offset).
    """
    decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(), translate=True)
    offset = 0  # bytes of the file handed to the decoder so far
    with _reading(path), open(path, "rb") as f:
        while True:
            data = f.read(size)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:  # exc.object = bytes pending from the last read + data
                raise _not_utf8(path, offset + len(data) - len(exc.object) + exc.start) from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def iter_lines(path: Path) -> Iterator[str]:
    """`read_text(path).splitlines()`, read one line at a time (memory bounded by the longest line)."""
    offset = 0
    with _reading(path), open(path, "rb") as f:
        for raw in f:  # ends at b"\n", a boundary of str.splitlines too, so the lines are the same
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, offset + exc.start) from None
            offset += len(raw)
            yield from text.splitlines()


def iter_json_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(\"file:line\", object) for each non-blank line of a JSON Lines file, read line by line.

    A line that is not valid JSON, or not a JSON object, raises SlmError naming file and line.
    """
    for lineno, line in enumerate(iter_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SlmError(f"{where}: malformed JSON line ({exc.msg} at column {exc.colno}); fix or remove it") from None
        if not isinstance(record, dict):
            raise SlmError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record
