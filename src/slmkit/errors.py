"""User-facing errors: the CLI prints them on one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SlmError(Exception):
    """Bad input from the user (recipe, data file, flag). Printed without a traceback, exit 2."""

    exit_code = 2


class BrokenInstallError(SlmError):
    """A part of slmkit itself is missing (a command module cannot be imported). Exit 1."""

    exit_code = 1


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to `word` (difflib), or None when nothing is close."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for error messages, or '' when nothing is close."""
    best = closest(word, candidates)
    return f" (did you mean {best!r}?)" if best else ""
