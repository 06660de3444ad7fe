"""Reading user text files: UTF-8 with file-naming errors, and JSON Lines with file:line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError


def read_text(path: Path) -> str:
    """Read a text file as UTF-8, naming the file on failure."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SlmError(f"file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise SlmError(f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    except OSError as exc:
        raise SlmError(f"cannot read {path}: {exc.strerror}") from None


def iter_json_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(\"file:line\", object) for each non-blank line of a JSON Lines file.

    A line that is not valid JSON, or not a JSON object, raises SlmError naming file and line.
    """
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
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
