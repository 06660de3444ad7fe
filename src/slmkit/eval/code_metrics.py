"""Metrics for the CodeFusion benchmarks (NL -> Bash / NL -> Python), top-k over ranked candidates.

Bash
----
:func:`bash_template` approximates NL2Bash's *typed-argument templates* (Lin et al., 2018); it is
not the NL2Bash tokenizer/typer, only a coarse stand-in.  Scheme:

* utilities (first word of each simple command, plus the command run by ``xargs`` / ``find -exec``)
  are kept verbatim;
* flags (words starting with ``-`` that are not numbers) are kept verbatim;
* other arguments become placeholders: ``Number`` if the word parses as a number (``-1`` and
  ``+7`` included, as in ``-mtime -1``), else the single generic placeholder ``Arg``;
* structure is kept: pipes ``|``, operators ``&& || ; &``, redirections (``>`` ``>>`` ``<``
  ``2>&1`` ...; the redirect target becomes ``Arg``), ``$( ... )`` / ``<( ... )`` substitutions
  (templated recursively), reserved words (``for``/``do``/``done``, ``{``/``}`` ...), and
  ``find``'s ``{}`` / ``\\;`` / ``+`` terminators.

E.g. ``find . -name "*.txt" -mtime -1`` -> ``find Arg -name Arg -mtime Number``.
Parsing is done with ``bashlex``; when it raises (it does on many real commands) we fall back to
whitespace tokens with the same placeholder rules (a token after ``|``, ``;``, ``&&``, ``||`` is a
utility). Candidates are model output: on some malformed text (unbalanced ``${`` inside quotes)
bashlex allocates memory without bound (24 GB seen before the OOM killer), so it parses under a
temporary address-space cap (`_address_space_cap`); a command that hits it is templated by the
fallback.

Python
------
:func:`normalize_python` re-joins ``tokenize`` tokens with single spaces and rewrites string literals
to a canonical ``repr`` via ``ast.literal_eval`` (so ``x = 'a'`` == ``x="a"``); f-strings and
anything that fails are left as written; tokenize errors fall back to whitespace collapsing.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import tokenize
from itertools import combinations
from typing import Sequence

_NUMBER_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_OPERATORS = {"|", "|&", "&&", "||", ";", "&", ";;"}
_EXEC_FLAGS = {"-exec", "-execdir", "-ok", "-okdir"}
_FIND_TERMINATORS = {";", "\\;", "+", "{}"}
_PREFIX_UTILITIES = {"xargs", "sudo", "nohup", "time", "nice", "watch"}
# flags of the prefix utilities that take a separate value (the value becomes a placeholder)
_PREFIX_VALUE_FLAGS = {"-I", "-n", "-P", "-d", "-L", "-s", "-E", "-u", "-i"}


def _arg_token(word: str) -> str:
    if _NUMBER_RE.match(word):
        return "Number"
    if word.startswith("-") and len(word) > 1:
        return word
    return "Arg"


# ----------------------------------------------------------------------------------------------
# bashlex walk


def _word_tokens(node, source: str) -> list[str] | None:
    """Tokens for a word containing $(...)/<(...) substitutions; None for a plain word."""
    subs = [p for p in getattr(node, "parts", []) or [] if p.kind in ("commandsubstitution", "processsubstitution")]
    if not subs:
        return None
    out: list[str] = []
    for sub in subs:
        opener = "$(" if sub.kind == "commandsubstitution" else source[sub.pos[0]: sub.pos[0] + 2]
        out.append(opener)
        out.extend(_walk(sub.command, source))
        out.append(")")
    return out


def _command_tokens(node, source: str) -> list[str]:
    out: list[str] = []
    expect_utility = True
    in_exec = False
    prefix_value = False
    for part in node.parts:
        kind = part.kind
        if kind == "assignment":
            out.append("Assignment")
            continue
        if kind == "redirect":
            out.extend(_redirect_tokens(part, source))
            continue
        if kind != "word":
            out.extend(_walk(part, source))
            continue
        sub = _word_tokens(part, source)
        text = part.word
        if sub is not None:
            out.extend(sub)
            expect_utility = False
            continue
        if prefix_value:  # value of e.g. `xargs -I {}`
            out.append(_arg_token(text) if not text.startswith("-") else text)
            prefix_value = False
            continue
        if expect_utility:
            if out and out[-1] in _PREFIX_UTILITIES | _PREFIX_VALUE_FLAGS and text.startswith("-") or (
                text.startswith("-") and len(out) > 0 and out[-1].startswith("-")
            ):
                out.append(text)  # flag of a prefix utility (xargs -0 -I {} cmd)
                prefix_value = text in _PREFIX_VALUE_FLAGS
                continue
            out.append(text)
            expect_utility = text in _PREFIX_UTILITIES
            continue
        if in_exec and text in _FIND_TERMINATORS:
            out.append(text)
            if text != "{}":
                in_exec = False
            continue
        tok = _arg_token(text)
        out.append(tok)
        if text in _EXEC_FLAGS:
            expect_utility, in_exec = True, True
    return out


def _redirect_tokens(node, source: str) -> list[str]:
    prefix = "" if node.input is None else str(node.input)
    target = node.output
    if isinstance(target, int):
        return [f"{prefix}{node.type}{target}"]
    toks = [f"{prefix}{node.type}"]
    if target is None:
        return toks
    sub = _word_tokens(target, source)
    toks.extend(sub if sub is not None else ["Arg"])
    return toks


def _walk(node, source: str) -> list[str]:
    kind = node.kind
    if kind == "command":
        return _command_tokens(node, source)
    if kind == "pipe":
        return [node.pipe]
    if kind == "operator":
        return [node.op]
    if kind == "reservedword":
        return [node.word]
    if kind == "redirect":
        return _redirect_tokens(node, source)
    if kind in ("commandsubstitution", "processsubstitution"):
        return ["$(", *_walk(node.command, source), ")"]
    if kind == "word":
        sub = _word_tokens(node, source)
        return sub if sub is not None else [_arg_token(node.word)]
    if kind == "assignment":
        return ["Assignment"]
    out: list[str] = []
    for key in ("parts", "list"):
        children = getattr(node, key, None)
        if children:
            for child in children:
                out.extend(_walk(child, source))
            return out
    if hasattr(node, "command"):
        return _walk(node.command, source)
    return out


def _fallback_template(command: str) -> list[str]:
    out: list[str] = []
    expect_utility = True
    for tok in command.split():
        if tok in _OPERATORS:
            out.append(tok)
            expect_utility = True
        elif expect_utility:
            out.append(tok)
            expect_utility = tok in _PREFIX_UTILITIES or (tok.startswith("-") and len(out) > 1)
        else:
            out.append(_arg_token(tok))
    return out


BASHLEX_EXTRA_BYTES = 512 << 20  # address space bashlex may add to the process while it parses one command


@contextlib.contextmanager
def _address_space_cap(extra: int):
    """Cap this process's address space at its current size + `extra` (Linux) for the duration, so that a
    runaway allocation raises MemoryError here instead of waking the OOM killer; the old limit comes back."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        old = resource.getrlimit(resource.RLIMIT_AS)
        cap = size + extra if old[0] == resource.RLIM_INFINITY else min(old[0], size + extra)
        resource.setrlimit(resource.RLIMIT_AS, (cap, old[1]))
    except (OSError, StopIteration, ValueError):  # no /proc, or a hard limit below the cap: parse uncapped
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


def bashlex_tokens(command: str) -> list[str] | None:
    """Template tokens from bashlex's parse tree, or None where bashlex fails or runs out of its memory cap."""
    try:
        import bashlex

        with _address_space_cap(BASHLEX_EXTRA_BYTES):
            trees = bashlex.parse(command)
        out: list[str] = []
        for i, tree in enumerate(trees):
            if i:
                out.append(";")
            out.extend(_walk(tree, command))
        return out
    except Exception:  # bashlex raises many types (ParsingError, NotImplementedError, MemoryError, ...)
        return None


def bash_template_tokens(command: str) -> tuple[list[str], bool]:
    """(template tokens, parsed_by_bashlex)."""
    command = command.strip()
    if not command:
        return [], True
    tokens = bashlex_tokens(command)
    return (tokens, True) if tokens is not None else (_fallback_template(command), False)


def bash_template(command: str) -> str:
    """NL2Bash-style template (utilities and flags kept, arguments -> Number / Arg); see module doc."""
    return " ".join(bash_template_tokens(command)[0])


def bash_match(candidate: str, reference: str) -> bool:
    """Template equality (NL2Bash-style structural match)."""
    return bash_template(candidate) == bash_template(reference)


def seen_in_train(test_items: Sequence[dict], train_items: Sequence[dict], key: str = "Code") -> list[bool]:
    """Per test item: does its code occur verbatim (after strip) in the train split?"""
    train = {str(it[key]).strip() for it in train_items}
    return [str(it[key]).strip() in train for it in test_items]


# ----------------------------------------------------------------------------------------------
# Python


def _canonical_string(tok: str) -> str:
    if re.match(r"^[A-Za-z]*[fF]", tok):  # f-strings: not literal_eval-able
        return tok
    try:
        value = ast.literal_eval(tok)
    except Exception:
        return tok
    return repr(value) if isinstance(value, (str, bytes)) else tok


def normalize_python(code: str) -> str:
    """Tokens joined by single spaces, string literals canonicalised; whitespace collapse on error."""
    skip = {tokenize.NL, tokenize.COMMENT, tokenize.ENCODING, tokenize.ENDMARKER}
    out: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code.strip() + "\n").readline):
            if tok.type in skip:
                continue
            if tok.type == tokenize.NEWLINE:
                out.append("\n")
            elif tok.type == tokenize.INDENT:
                out.append("<INDENT>")
            elif tok.type == tokenize.DEDENT:
                out.append("<DEDENT>")
            elif tok.type == tokenize.STRING:
                out.append(_canonical_string(tok.string))
            else:
                out.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return " ".join(code.split())
    return " ".join(out).replace(" \n ", "\n").strip()


def python_exact_match(candidate: str, reference: str) -> bool:
    return normalize_python(candidate) == normalize_python(reference)


def chrf(candidate: str, reference: str) -> float:
    """Sentence chrF (0-100) via sacrebleu."""
    from sacrebleu import sentence_chrf

    return float(sentence_chrf(candidate.strip(), [reference.strip()]).score)


# ----------------------------------------------------------------------------------------------
# top-k and diversity


def top_k(scores_per_candidate: Sequence[bool | float], k: int) -> bool | float:
    """Best over the first k ranked candidates: any() for bools, max() for numbers (0.0 if empty)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    head = list(scores_per_candidate[:k])
    if head and all(isinstance(s, bool) for s in head):
        return any(head)
    return max((float(s) for s in head), default=0.0)


def distinct_fraction(cands: Sequence[str]) -> float:
    """Unique / total after stripping (0.0 for an empty list)."""
    if not cands:
        return 0.0
    return len({c.strip() for c in cands}) / len(cands)


def _levenshtein(a: str, b: str) -> int:
    # Plain two-row DP: no edit-distance library (rapidfuzz, python-Levenshtein) is in the venv and the
    # candidate lists are short, so a dependency isn't worth it.
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalized_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance / max(len a, len b), in [0, 1]; 0.0 for two empty strings."""
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else _levenshtein(a, b) / longest


def mean_pairwise_edit_distance(cands: Sequence[str]) -> float:
    """Mean normalized edit distance over all unordered pairs (stripped); 0.0 with < 2 candidates."""
    items = [c.strip() for c in cands]
    pairs = list(combinations(items, 2))
    if not pairs:
        return 0.0
    return sum(normalized_edit_distance(a, b) for a, b in pairs) / len(pairs)
