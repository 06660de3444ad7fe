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


def check_choice(value: object, allowed: Iterable[str], where: str) -> None:
    """SlmError "WHERE: 'x' is not one of a, b (did you mean 'a'?)" unless `value` is in `allowed`."""
    allowed = list(allowed)
    if value not in allowed:
        raise SlmError(f"{where}: {value!r} is not one of {', '.join(allowed)}{did_you_mean(str(value), allowed)}")


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to `word` (difflib), or None when nothing is close."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for error messages, or '' when nothing is close."""
    best = closest(word, candidates)
    return f" (did you mean {best!r}?)" if best else ""
