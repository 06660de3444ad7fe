"""Interpreter for the CodeFusion conditional-formatting (CF) rule language, for execution-match scoring.

The CodeFusion CF benchmark (``CFRuleBenchmarks.json``) writes Excel conditional-formatting rules in a
small functional notation: ``AND(GreaterThanEqual(25),LessThan(50))``, ``TextContains(Error)``,
``top(10%)``, ``Between(537, 624)``, ``Duplicate()``, ``NOT(Blanks())``, ``ColorScale()`` ...
No library parses this language, so :func:`parse_rule` is a small hand-written recursive-descent parser.

Semantics follow Excel:

* the rule applies to one column: ``c[k]`` (0-based index into the row) when given, else the ``Value``
  column (index 1 of the benchmark's ``Index, Value[, extra]`` tables, or 0 for one-column tables);
* cell-value comparisons (``GreaterThan``, ``LessThan``, ``Between`` inclusive and order-agnostic,
  ``Equals`` ...) read numbers stored as strings as numbers, treat blank cells as 0 and never flag text
  cells against a numeric bound;
* text rules (``TextContains``, ``TextEquals``, ``TextStartsWith``, ``TextEndsWith``) are
  case-insensitive, read numbers as their text and keep the cell's surrounding spaces;
* ``top``/``bottom`` (N items or N%), ``aboveAverage``/``belowAverage`` are computed over the numeric
  cells of the column (ties included, N% is ``max(1, int(count * N / 100))`` items);
* ``Duplicate``/``Unique`` compare non-blank values case-insensitively; ``Blanks`` flags empty cells;
* a cell reference (``$B$6``) points into the sheet, which Data is not: such rules are not evaluable.

``flag_rows(..., semantics="labels")`` instead reproduces the program that made the benchmark's ``Labels``
(it is not Excel): ``bottom(N)`` flags values <= the N-th largest, N% counts every cell of the range,
text cells count as 0 in numeric rules, ``Duplicate()`` flags first occurrences (case-sensitively),
``Blanks()`` flags non-blank cells, references format nothing, visual rules flag every row.
:func:`gold_agreement` measures how well that reproduces the labels and names why the rest differ.

Visual rules (``ColorScale``, ``DataBar``, ``IconSet``) flag no particular rows: score them by
normalized exact match (:func:`normalize_rule`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from slmkit.errors import SlmError

__all__ = [
    "CFRuleError", "Call", "CellRef", "ColumnRef", "Number", "Rule", "Text",
    "parse_rule", "flag_rows", "is_visual_only", "normalize_rule",
    "execution_match", "score_item", "gold_agreement", "load_benchmark",
    "PARTIAL_DATA", "SHIFTED", "LABEL_NOISE", "NOT_EXECUTABLE",
]


class CFRuleError(SlmError):
    """A CF rule that cannot be parsed or evaluated."""


# ---------------------------------------------------------------- AST


@dataclass(frozen=True)
class Number:
    """A numeric argument: ``25``, ``10%`` (percent=True), ``13 Days`` (unit='days')."""

    value: float
    percent: bool = False
    unit: str = ""


@dataclass(frozen=True)
class Text:
    """A text argument (raw or quoted)."""

    value: str


@dataclass(frozen=True)
class ColumnRef:
    """``c[k]``: column k of the table (0-based)."""

    index: int


@dataclass(frozen=True)
class CellRef:
    """A reference to the sheet: a cell such as ``$E$13``, or a name such as ``Male`` in an ExcelScript
    ``formula1:"=Male"``. Data is not the sheet, so Excel semantics cannot resolve it."""

    ref: str


@dataclass(frozen=True)
class Call:
    """A function application; ``name`` is the canonical spelling."""

    name: str
    args: tuple[Arg, ...] = ()


Arg = Number | Text | ColumnRef | CellRef | Call
Rule = Call

# canonical spelling, keyed by lower case
_NAMES = {n.lower(): n for n in (
    "AND", "OR", "NOT",
    "GreaterThan", "GreaterThanEqual", "LessThan", "LessThanEqual", "Equals", "NotEquals",
    "Between", "NotBetween",
    "TextContains", "TextNotContains", "TextEquals", "TextStartsWith", "TextEndsWith",
    "Top", "Bottom", "TopPercent", "BottomPercent", "AboveAverage", "BelowAverage",
    "Duplicate", "Unique", "Blanks", "NoBlanks",
    "ColorScale", "DataBar", "IconSet",
)}
_TEXT_FUNCS = {"TextContains", "TextNotContains", "TextEquals", "TextStartsWith", "TextEndsWith"}
_VISUAL = {"ColorScale", "DataBar", "IconSet"}
_ALIASES = {"greaterthanorequal": "GreaterThanEqual", "lessthanorequal": "LessThanEqual",
            "equal": "Equals", "equalto": "Equals", "duplicates": "Duplicate", "blank": "Blanks",
            "notblanks": "NoBlanks", "textbeginswith": "TextStartsWith"}


def _canonical(name: str) -> str:
    low = name.lower()
    return _ALIASES.get(low) or _NAMES.get(low) or name


# ---------------------------------------------------------------- parser

_NUM_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COL_RE = re.compile(r"c\[\s*(\d+)\s*\]", re.IGNORECASE)
_CELL_RE = re.compile(r"\$?[A-Za-z]{1,3}\$?\d+")
_UNIT_RE = re.compile(r"\s*([A-Za-z]+)")


class _Parser:
    """Recursive descent over the rule text; ``pos`` is a character offset."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> CFRuleError:
        return CFRuleError(f"CF rule: {what} at position {self.pos} in {self.text[:80]!r}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "end of input"
            raise self.fail(f"expected {ch!r}, found {found}")
        self.pos += 1

    def parse(self) -> Call:
        call = self.call()
        if self.peek() == ";":  # trailing statement separator
            self.pos += 1
        if self.peek():
            raise self.fail(f"unexpected {self.text[self.pos]!r} after the rule")
        return call

    def call(self) -> Call:
        self.skip_ws()
        m = _IDENT_RE.match(self.text, self.pos)
        if not m:
            raise self.fail("expected a function name")
        self.pos = m.end()
        name = _canonical(m.group())
        self.expect("(")
        if name in _TEXT_FUNCS:
            args: tuple[Arg, ...] = (self.raw_text(),)
        else:
            args = self.args()
        self.expect(")")
        return Call(name, args)

    def args(self) -> tuple[Arg, ...]:
        if self.peek() == ")":
            return ()
        out = [self.arg()]
        while self.peek() == ",":
            self.pos += 1
            out.append(self.arg())
        return tuple(out)

    def arg(self) -> Arg:
        ch = self.peek()
        rest = self.text[self.pos:]
        if ch and ch in "\"'":  # ("" in any string is True: the end of input is not a quote)
            return Text(self.quoted())
        if m := _COL_RE.match(rest):
            self.pos += m.end()
            return ColumnRef(int(m.group(1)))
        if m := _NUM_RE.match(rest):
            return self.number(m)
        if ch == "$" or ((m := _CELL_RE.match(rest)) and not rest[m.end():].lstrip().startswith("(")):
            m = _CELL_RE.match(rest)
            if not m:
                raise self.fail("malformed cell reference")
            self.pos += m.end()
            return CellRef(m.group().upper())
        if _IDENT_RE.match(rest):
            return self.call()
        raise self.fail(f"unexpected {ch!r}" if ch else "unexpected end of input")

    def number(self, m: re.Match[str]) -> Number:
        self.pos += m.end()
        value = float(m.group())
        if self.peek() == "%":
            self.pos += 1
            return Number(value, percent=True)
        u = _UNIT_RE.match(self.text, self.pos)
        if u and self.text[u.end():].lstrip()[:1] in (",", ")", ""):
            self.pos = u.end()
            return Number(value, unit=u.group(1).lower())
        return Number(value)

    def quoted(self) -> str:
        quote = self.text[self.pos]
        end = self.text.find(quote, self.pos + 1)
        if end < 0:
            raise self.fail("unterminated string")
        value = self.text[self.pos + 1:end]
        self.pos = end + 1
        return value

    def raw_text(self) -> Text:
        """Text up to the ``)`` that closes the call (balanced parentheses inside are kept)."""
        self.skip_ws()
        if self.peek() in "\"'" and self.peek():
            return Text(self.quoted())
        start, depth = self.pos, 0
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in "\"'":
                raise self.fail("quote inside unquoted text")
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    break
                depth -= 1
            self.pos += 1
        else:
            raise self.fail("expected ')', found end of input")
        value = self.text[start:self.pos].strip()
        if _CELL_RE.fullmatch(value) and "$" in value:
            return CellRef(value.upper())  # type: ignore[return-value]
        return Text(value)


# An ExcelScript recording cut into a rule: ``LessThan(3",formula2:undefined,operator:ExcelScript.
# ConditionalCellValueOperator.lessThan,}); ...``; the operand is the recording's ``formula1:"=3"``.
_SCRIPT_RE = re.compile(
    r'\s*([A-Za-z]+)\(([^"()]*)",\s*formula2:.*ExcelScript\.ConditionalCellValueOperator\..*\)\s*$', re.DOTALL)


def _script_rule(m: re.Match[str]) -> Call:
    """``Name(operand)``: formula ``=operand`` is a number, or a name that Excel looks up on the sheet."""
    operand = m.group(2).strip()
    num = _to_number(operand)
    return Call(_canonical(m.group(1)), (Number(num) if num is not None else CellRef(operand),))


def parse_rule(text: str) -> Rule:
    """Parse a CF rule; CFRuleError (naming the position) on malformed input."""
    if not isinstance(text, str) or not text.strip():
        raise CFRuleError("CF rule: empty rule at position 0")
    if m := _SCRIPT_RE.match(text):
        return _script_rule(m)
    parser = _Parser(text)
    try:
        return parser.parse()
    except RecursionError:
        raise parser.fail("rule nested too deeply") from None


def _as_rule(rule: str | Rule) -> Rule:
    return rule if isinstance(rule, Call) else parse_rule(rule)


# ---------------------------------------------------------------- canonical text


def _fmt_number(x: float) -> str:
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else repr(x)


def _render(node: Arg) -> str:
    if isinstance(node, Number):
        return _fmt_number(node.value) + ("%" if node.percent else "") + (f" {node.unit}" if node.unit else "")
    if isinstance(node, Text):
        return node.value.strip()
    if isinstance(node, ColumnRef):
        return f"c[{node.index}]"
    if isinstance(node, CellRef):
        return node.ref
    return f"{node.name}({','.join(_render(a) for a in node.args)})"


def normalize_rule(text: str | Rule) -> str:
    """Canonical text: canonical function names, no spaces, ``25.0`` -> ``25``; raw fallback if unparsable."""
    try:
        return _render(_as_rule(text))
    except CFRuleError:
        return re.sub(r"\s+", "", str(text)).lower()


def is_visual_only(rule: str | Rule) -> bool:
    """True for rules that colour every cell (ColorScale, DataBar, IconSet) instead of flagging rows."""
    try:
        node = _as_rule(rule)
    except CFRuleError:
        return bool(re.match(r"\s*(colorscale|databar|iconset)\b", str(rule), re.IGNORECASE))
    return node.name in _VISUAL


# ---------------------------------------------------------------- cell values


def _is_blank(v: object) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _to_number(v: object) -> float | None:
    """The cell as a number (numbers stored as text included), else None."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def _to_text(v: object) -> str:
    """The cell's text as stored: Excel's text and equality tests keep surrounding spaces ("Intestinal " is
    not "Intestinal"); only ``Blanks`` trims (LEN(TRIM(cell))=0)."""
    if v is None:
        return ""
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    return str(v)


# ---------------------------------------------------------------- evaluation

Column = list[object]
Flags = list[bool]
SEMANTICS = ("excel", "labels")


@dataclass(frozen=True)
class _Mode:
    """How :func:`flag_rows` evaluates: ``labels`` = the benchmark labeler's quirks; ``cells`` = range size."""

    labels: bool = False
    cells: int = 0


_MODE: ContextVar[_Mode] = ContextVar("cf_mode", default=_Mode())


def _labels() -> bool:
    return _MODE.get().labels


def _column(rows: Sequence[Sequence[object]], index: int) -> Column:
    return [row[index] if index < len(row) else None for row in rows]


def _range_size(rows: Sequence[Sequence[object]]) -> int:
    """Cells in the rule's range: column 0 (``Index``) numbers each row's position in the range, and Data
    leaves some cells out (gaps in ``Index``, e.g. 0, 1, 4), so the range spans max - min + 1 positions."""
    index = [row[0] for row in rows if row]
    if not index or not all(isinstance(i, int) and not isinstance(i, bool) for i in index):
        return len(rows)
    return max(len(rows), max(index) - min(index) + 1)  # type: ignore[type-var, operator]


def _default_column(rows: Sequence[Sequence[object]]) -> int:
    width = max((len(r) for r in rows), default=1)
    return 1 if width >= 2 else 0


def _split_args(call: Call) -> tuple[int | None, tuple[Arg, ...]]:
    """(column index from a leading/any c[k] argument, the other arguments)."""
    col = next((a.index for a in call.args if isinstance(a, ColumnRef)), None)
    return col, tuple(a for a in call.args if not isinstance(a, ColumnRef))


def _num_arg(call: Call, args: tuple[Arg, ...], i: int) -> Number:
    if i >= len(args):
        raise CFRuleError(f"CF rule: {call.name} needs at least {i + 1} argument(s)")
    a = args[i]
    if isinstance(a, Text) and _to_number(a.value) is not None:
        return Number(float(_to_number(a.value) or 0.0))
    if not isinstance(a, Number):
        raise CFRuleError(f"CF rule: {call.name} argument {i + 1} is not a number ({_render(a)})")
    if a.unit:
        raise CFRuleError(f"CF rule: {call.name}: unit {a.unit!r} (dates) is not supported")
    return a


def _cell_number(v: object) -> float | None:
    """A non-blank cell in a numeric rule. Excel leaves text cells out (None); the benchmark labeler read
    them as 0, so ``Equals(0)``, ``bottom``, ``belowAverage`` flag its text cells."""
    x = _to_number(v)
    return 0.0 if x is None and _labels() else x


def _compare(col: Column, pred: Callable[[float], bool]) -> Flags:
    """Excel cellIs: blank counts as 0, text cells never match a numeric bound (labeler: text is 0)."""
    out = []
    for v in col:
        x = 0.0 if _is_blank(v) else _cell_number(v)
        out.append(x is not None and pred(x))
    return out


_CMP: dict[str, Callable[[float, float], bool]] = {
    "GreaterThan": lambda x, a: x > a,
    "GreaterThanEqual": lambda x, a: x >= a,
    "LessThan": lambda x, a: x < a,
    "LessThanEqual": lambda x, a: x <= a,
}


def _eval_compare(call: Call, col: Column, args: tuple[Arg, ...]) -> Flags:
    a = _num_arg(call, args, 0).value
    op = _CMP[call.name]
    return _compare(col, lambda x: op(x, a))


def _eval_between(call: Call, col: Column, args: tuple[Arg, ...]) -> Flags:
    lo, hi = sorted((_num_arg(call, args, 0).value, _num_arg(call, args, 1).value))
    flags = _compare(col, lambda x: lo <= x <= hi)
    return flags if call.name == "Between" else [not f for f in flags]


def _eval_equals(call: Call, col: Column, args: tuple[Arg, ...]) -> Flags:
    if not args or isinstance(args[0], Call | CellRef):
        raise CFRuleError(f"CF rule: {call.name} needs a literal argument")
    target = args[0]
    num = target.value if isinstance(target, Number) else _to_number(target.value)  # type: ignore[union-attr]
    if num is not None:
        flags = _compare(col, lambda x: x == num)
    else:
        want = _render(target).lower()
        flags = [_to_text(v).lower() == want for v in col]
    return flags if call.name == "Equals" else [not f for f in flags]


_TEXT_OPS: dict[str, Callable[[str, str], bool]] = {
    "TextContains": lambda s, t: t in s,
    "TextNotContains": lambda s, t: t not in s,
    "TextEquals": lambda s, t: s == t,
    "TextStartsWith": lambda s, t: s.startswith(t),
    "TextEndsWith": lambda s, t: s.endswith(t),
}


def _eval_text(call: Call, col: Column, args: tuple[Arg, ...]) -> Flags:
    if not args or not isinstance(args[0], Text | Number):
        raise CFRuleError(f"CF rule: {call.name} with a cell reference is not supported")
    want = _render(args[0]).lower()
    op = _TEXT_OPS[call.name]
    return [op(_to_text(v).lower(), want) for v in col]


def _numeric(col: Column) -> list[float | None]:
    return [None if _is_blank(v) else _to_number(v) for v in col]


def _ranked(col: Column) -> list[float | None]:
    """Values that top/bottom/average rules compare with their cut-off: blanks skipped, text per
    :func:`_cell_number` (the labeler's ``top(1)`` over zeros flags the text cells too)."""
    return [None if _is_blank(v) else _cell_number(v) for v in col]


def _rank_count(call: Call, n_arg: Number, n_values: int) -> int:
    """How many items ``top``/``bottom`` keep: N, or N% of the count rounded down, at least 1 (Excel).

    Excel's N% counts the numeric cells; the labeler counted every cell of the rule's range, the cells Data
    leaves out included (see :func:`_range_size`).
    """
    if not (n_arg.percent or call.name.endswith("Percent")):
        return max(int(n_arg.value), 1)
    count = max(_MODE.get().cells, n_values) if _labels() else n_values
    return max(int(count * n_arg.value / 100), 1)


def _eval_rank(call: Call, col: Column, args: tuple[Arg, ...]) -> Flags:
    """Excel ``top``/``bottom``: values at or beyond the k-th best, ties included.

    The benchmark labeler's ``bottom(N)`` flags the values <= the N-th *largest* instead.
    """
    n_arg = _num_arg(call, args, 0) if args else Number(10.0)
    values = _ranked(col)
    top = call.name.startswith("Top")
    nums = sorted((x for x in values if x is not None), reverse=top or _labels())
    if not nums:
        return [False] * len(col)
    cut = nums[min(_rank_count(call, n_arg, len(nums)), len(nums)) - 1]
    return [x is not None and (x >= cut if top else x <= cut) for x in values]


def _eval_average(call: Call, col: Column, args: tuple[Arg, ...]) -> Flags:
    """Excel above/below average: the mean of the numeric cells (text and blanks skipped)."""
    nums = [x for x in _numeric(col) if x is not None]
    if not nums:
        return [False] * len(col)
    mean = sum(nums) / len(nums)
    above = call.name == "AboveAverage"
    return [x is not None and (x > mean if above else x < mean) for x in _ranked(col)]


def _dup_key(v: object) -> object:
    """Excel's duplicate test ignores case; the benchmark labeler's does not ("february" and "February" differ)."""
    x = _to_number(v)
    if x is not None:
        return x
    return _to_text(v) if _labels() else _to_text(v).lower()


def _eval_duplicate(call: Call, col: Column, args: tuple[Arg, ...]) -> Flags:
    if _labels() and call.name == "Duplicate":  # benchmark labeler: first occurrence of each value
        seen: set[object] = set()
        out = []
        for v in col:
            out.append(_dup_key(v) not in seen)
            seen.add(_dup_key(v))
        return out
    counts = Counter(_dup_key(v) for v in col if not _is_blank(v))
    want_dup = call.name == "Duplicate"
    return [not _is_blank(v) and ((counts[_dup_key(v)] > 1) == want_dup) for v in col]


def _eval_blanks(call: Call, col: Column, args: tuple[Arg, ...]) -> Flags:
    """Excel: LEN(TRIM(cell))=0. The benchmark labeler inverted ``Blanks()`` (both train items flag every
    non-blank cell), as it inverted ``Duplicate()``; there is no evidence on ``NoBlanks()``."""
    want_blank = call.name == "Blanks" and not _labels()
    return [_is_blank(v) == want_blank for v in col]


_LEAVES: dict[str, Callable[[Call, Column, tuple[Arg, ...]], Flags]] = {
    **{n: _eval_compare for n in _CMP},
    "Between": _eval_between, "NotBetween": _eval_between,
    "Equals": _eval_equals, "NotEquals": _eval_equals,
    **{n: _eval_text for n in _TEXT_OPS},
    "Top": _eval_rank, "Bottom": _eval_rank, "TopPercent": _eval_rank, "BottomPercent": _eval_rank,
    "AboveAverage": _eval_average, "BelowAverage": _eval_average,
    "Duplicate": _eval_duplicate, "Unique": _eval_duplicate,
    "Blanks": _eval_blanks, "NoBlanks": _eval_blanks,
}


def _evaluate(node: Call, rows: Sequence[Sequence[object]], default_col: int) -> Flags:
    if node.name in ("AND", "OR", "NOT"):
        parts = [_evaluate(_sub_call(node, a), rows, default_col) for a in node.args]
        if not parts or (node.name == "NOT" and len(parts) != 1):
            raise CFRuleError(f"CF rule: {node.name} needs {'one argument' if node.name == 'NOT' else 'arguments'}")
        if node.name == "NOT":
            return [not f for f in parts[0]]
        combine = all if node.name == "AND" else any
        return [combine(fs) for fs in zip(*parts, strict=True)]
    if node.name in _VISUAL and _labels():  # benchmark labels: every cell gets a colour
        return [True] * len(rows)
    if node.name in _VISUAL:
        raise CFRuleError(f"CF rule: {node.name} is a visual rule; it flags no rows")
    leaf = _LEAVES.get(node.name)
    if leaf is None:
        raise CFRuleError(f"CF rule: unknown function {node.name!r}")
    if _labels() and any(isinstance(a, CellRef) for a in node.args):
        # the labeler never resolved references: all 9 train rules with one have all-zero labels
        return [False] * len(rows)
    col_index, args = _split_args(node)
    return leaf(node, _column(rows, default_col if col_index is None else col_index), args)


def _sub_call(node: Call, arg: Arg) -> Call:
    if not isinstance(arg, Call):
        raise CFRuleError(f"CF rule: {node.name} takes rules, not {_render(arg)!r}")
    return arg


def flag_rows(rule: str | Rule, data_rows: Sequence[Sequence[object]], semantics: str = "excel") -> list[bool]:
    """Which rows of ``data_rows`` (header excluded) the rule flags.

    ``semantics="excel"`` (default) follows Excel. ``"labels"`` reproduces how the benchmark's
    ``Labels`` were made (see the module docstring for its quirks).
    """
    node = _as_rule(rule)
    with _evaluating(semantics, data_rows[1:]):
        return _evaluate(node, list(data_rows[1:]), _default_column(data_rows))


@contextmanager
def _evaluating(semantics: str, rows: Sequence[Sequence[object]]) -> Iterator[None]:
    """Evaluate under ``semantics`` for the data rows ``rows`` (sets :data:`_MODE`)."""
    if semantics not in SEMANTICS:
        raise CFRuleError(f"CF rule: semantics {semantics!r} is not one of {', '.join(SEMANTICS)}")
    token = _MODE.set(_Mode(labels=semantics == "labels", cells=_range_size(rows)))
    try:
        yield
    finally:
        _MODE.reset(token)


# ---------------------------------------------------------------- scoring


def execution_match(candidate: str | Rule, gold: str | Rule, data_rows: Sequence[Sequence[object]]) -> bool:
    """True when both rules flag the same rows; an unparsable/unevaluable candidate is no match."""
    try:
        want = flag_rows(gold, data_rows)
    except CFRuleError:
        return normalize_rule(candidate) == normalize_rule(gold)
    try:
        return flag_rows(candidate, data_rows) == want
    except (CFRuleError, RecursionError):
        return False


def _exact_only(item: dict) -> bool:
    data = item.get("Data") or []
    return len(data) <= 1 or is_visual_only(item["Code"])


def score_item(candidate: str, item: dict) -> dict:
    """``{"match": bool, "method": "execution"|"exact"}`` for one benchmark item."""
    gold = item["Code"]
    if not _exact_only(item):
        try:
            flag_rows(gold, item["Data"])
        except CFRuleError:
            pass  # gold not executable here (cell reference, malformed): fall back
        else:
            return {"match": execution_match(candidate, gold, item["Data"]), "method": "execution"}
    return {"match": normalize_rule(candidate) == normalize_rule(gold), "method": "exact"}


def has_row_labels(item: dict) -> bool:
    """True when ``Labels`` has one entry per ``Data`` row (entry 0 belongs to the header)."""
    data, labels = item.get("Data") or [], item.get("Labels") or []
    return len(data) > 1 and len(labels) == len(data)


# Why a gold rule can miss its labels although the interpreter is right (see gold_agreement).
PARTIAL_DATA = "partial data"  # a whole-column rule whose labels were computed over cells Data does not show
SHIFTED = "labels shifted"  # the labels fit the rule one row up: Labels[k] belongs to data row k
LABEL_NOISE = "label noise"  # labels contradict the Data values (stale values, other cells, other order)
NOT_EXECUTABLE = "not executable"
_MAX_ROWS = 100  # the benchmark file keeps at most 100 rows of a table (164 of its 712 tables stop there)
_DIRECTION = {"Top": 1, "TopPercent": 1, "AboveAverage": 1, "Bottom": -1, "BottomPercent": -1, "BelowAverage": -1}


def gold_agreement(items: Iterable[dict], semantics: str = "labels") -> dict:
    """Compare ``flag_rows(gold Code, Data, semantics)`` with ``Labels[1:]`` (one label per Data row).

    Returns ``{"eligible", "matched", "rate", "by_category": {category: count},
    "disagreements": [{"ID", "code", "category", "reason"}]}``.
    """
    eligible = matched = 0
    disagreements: list[dict] = []
    for item in items:
        if not has_row_labels(item):
            continue
        eligible += 1
        miss = _disagreement(item, semantics)
        if miss is None:
            matched += 1
        else:
            disagreements.append({"ID": item.get("ID"), "code": item["Code"][:80], "category": miss[0],
                                  "reason": miss[1]})
    rate = matched / eligible if eligible else 0.0
    by_category = dict(Counter(d["category"] for d in disagreements).most_common())
    return {"eligible": eligible, "matched": matched, "rate": rate, "by_category": by_category,
            "disagreements": disagreements}


def _disagreement(item: dict, semantics: str) -> tuple[str, str] | None:
    """None when the gold rule reproduces the labels, else (category, short reason)."""
    code, data = item["Code"], item["Data"]
    if semantics == "excel" and is_visual_only(code):
        return NOT_EXECUTABLE, "visual rule (flags no rows in Excel semantics)"
    try:
        got = flag_rows(code, data, semantics)
    except CFRuleError as err:
        return NOT_EXECUTABLE, str(err)
    labels = [bool(x) for x in item["Labels"]]
    want = labels[1:]
    if got == want:
        return None
    bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    reason = f"{len(bad)} of {len(want)} rows differ (first data row {bad[0]})"
    if _partial_data(data[1:]) and _fits_some_cutoff(_as_rule(code), data, want, semantics):
        return PARTIAL_DATA, reason
    if got[:-1] == labels[:len(got) - 1]:
        return SHIFTED, reason
    return LABEL_NOISE, reason


def _partial_data(rows: Sequence[Sequence[object]]) -> bool:
    """Data shows part of the rule's range: cut at the file's 100 rows, or cells left out (gaps in Index)."""
    return len(rows) >= _MAX_ROWS or _range_size(rows) > len(rows)


def _fits_some_cutoff(rule: Rule, data: Sequence[Sequence[object]], want: Flags, semantics: str) -> bool:
    """True for a top/bottom/average rule whose labels are "value beyond some cut-off" in the rule's
    direction: the rule itself, with the cut-off set by rows that Data does not show."""
    sign = _DIRECTION.get(rule.name)
    if sign is None:
        return False
    col_index, _ = _split_args(rule)
    with _evaluating(semantics, data[1:]):
        values = _ranked(_column(data[1:], _default_column(data) if col_index is None else col_index))
    if any(w and x is None for x, w in zip(values, want, strict=True)):
        return False
    flagged = [sign * x for x, w in zip(values, want, strict=True) if w and x is not None]
    others = [sign * x for x, w in zip(values, want, strict=True) if not w and x is not None]
    return not flagged or not others or min(flagged) > max(others)


def load_benchmark() -> dict[str, list[dict]]:
    """The CodeFusion CF benchmark, read in place from the shared datasets folder."""
    import json

    from slmkit.data.paths import datasets_dir

    path = datasets_dir() / "codefusion/benchmarks/CFRuleBenchmarks.json"
    if not path.is_file():
        raise SlmError(f"CF benchmark not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))
