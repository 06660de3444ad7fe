"""Named data sources. Each loader turns one `SourceConfig` into `Document`s.

A loader is `loader(cfg, stats) -> Iterator[Document]`; it raises `SlmError` naming the file (and line)
on bad input and counts skipped items in `stats`. `load_source(cfg)` applies `max_docs` and refuses an
empty source; a document longer than `MAX_DOC_CHARS` comes in pieces (`split_text`). Builtin types:
python-stdlib, python-docs, text, jsonl, codefusion, codefusion-pretrain, nl2bash, conala. Shared datasets
are read in place from `slmkit.data.paths.datasets_dir()` unless `path` is set.
"""

from __future__ import annotations

import ast
import glob
import json
import logging
import sysconfig
import tokenize
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from slmkit.config import SourceConfig
from slmkit.data.jsonl import iter_json_objects, iter_lines, iter_text_chunks, read_text
from slmkit.data.paths import datasets_dir
from slmkit.errors import SlmError, did_you_mean

log = logging.getLogger(__name__)

MAX_DOC_CHARS = 1 << 20
"""The longest document, in characters, that a source yields; longer ones become pieces (`split_text`).

HF `tokenizers` needs memory far beyond a text's size to pre-tokenize, train on or encode one huge
string: a single 50 MB line took 4-6 GB to train the BPE tokenizer on and 8-10 GB to encode (up to 200x
its size), the same text in 1 Mi-character pieces 0.3 GB and 0.6 GB. So no loader hands it more than
this in one piece, and text files are read in pieces of this size. It is far above any ordinary
document (the largest standard-library file is 0.75 MB), which stays one document, byte for byte.
"""


@dataclass(frozen=True)
class Document:
    """One document: its text and where it came from ("file:line" or "file#item"), for error messages."""

    text: str
    origin: str


@dataclass
class SourceStats:
    """What a loader skipped, by reason (e.g. {'null utterance': 72})."""

    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n


@dataclass
class LoadedSource:
    """The documents of one configured source plus its loader statistics."""

    config: SourceConfig
    docs: list[Document]
    stats: SourceStats


Loader = Callable[[SourceConfig, SourceStats], Iterator[Document]]
SOURCES: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator adding a loader to `SOURCES` under `name`."""

    def wrap(fn: Loader) -> Loader:
        SOURCES[name] = fn
        return fn

    return wrap


# --------------------------------------------------------------------------- helpers


def _cut(text: str, start: int, cap: int) -> int:
    """End of the piece of `text` that begins at `start` (more than `cap` characters are left):
    after the last newline within `cap` characters, else before the last (ASCII) whitespace, else at `cap`."""
    end = text.rfind("\n", start, start + cap) + 1
    if end > start:
        return end
    end = max(text.rfind(ws, start + 1, start + cap) for ws in " \t\r\f\v")  # the space starts the next piece
    return end if end > start else start + cap


def split_text(text: str, cap: int = MAX_DOC_CHARS) -> list[str]:
    """`text` as consecutive pieces of at most `cap` characters that join back to it exactly.

    A text of at most `cap` characters is returned whole. Longer ones are cut after a newline where
    possible, else before a space or tab, else (one huge word) at a character boundary.
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    pieces, start = [], 0
    while len(text) - start > cap:
        end = _cut(text, start, cap)
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:] if start else text)
    return pieces


def split_document(doc: Document, stats: SourceStats, cap: int = MAX_DOC_CHARS) -> list[Document]:
    """`doc` itself when it has at most `cap` characters, else its non-blank pieces ("ORIGIN part K")."""
    if len(doc.text) <= cap:
        return [doc]
    pieces = []
    for k, piece in enumerate(split_text(doc.text, cap), 1):
        if piece.strip():
            pieces.append(Document(piece, f"{doc.origin} part {k}"))
        else:
            stats.skip("blank piece of a long document")
    return pieces


def _text_pieces(path: Path, cap: int = MAX_DOC_CHARS) -> Iterator[tuple[int, str]]:
    """(line number where it starts, piece) of a text file, read in bounded chunks and cut as `split_text` does."""
    buf, line = "", 1
    for chunk in iter_text_chunks(path, cap):
        buf += chunk
        start = 0
        while len(buf) - start > cap:  # more than cap characters left: the cut is the one split_text makes
            end = _cut(buf, start, cap)
            yield line, buf[start:end]
            line += buf.count("\n", start, end)
            start = end
        buf = buf[start:]
    if buf:
        yield line, buf


def _read_python(path: Path) -> str:
    """Read a Python file: UTF-8 (the default), else the encoding its coding cookie names (PEP 263)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        pass
    except OSError as exc:
        raise SlmError(f"cannot read {path}: {exc.strerror}") from None
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise SlmError(f"{path}: cannot decode Python source ({exc})") from None


def _read_json(path: Path) -> object:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlmError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); fix or remove that line") from None


def _default_path(cfg: SourceConfig, *parts: str) -> Path:
    return Path(cfg.path).expanduser() if cfg.path else datasets_dir().joinpath(*parts)


def _require(path: Path, cfg: SourceConfig, what: str = "file") -> Path:
    if not path.exists():
        hint = "set its 'path'" if not cfg.path else "fix its 'path'"
        raise SlmError(f"source {cfg.name!r} ({cfg.type}): {what} not found: {path}; {hint}")
    return path


def _pick(options: dict[str, str], key: str | None, cfg: SourceConfig, what: str) -> list[str] | None:
    """Resolve `language` to file names; None = every option."""
    if key is None:
        return None
    for name, value in options.items():
        if name.lower() == key.lower():
            return [value]
    raise SlmError(
        f"source {cfg.name!r} ({cfg.type}): unknown {what} {key!r}{did_you_mean(key, options)}; "
        f"choose one of {', '.join(options)}"
    )


# --------------------------------------------------------------------------- Python standard library

_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The standard library's .py files (no tests, no site-packages), sorted."""
    root = Path(root) if root else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise SlmError(f"python standard library folder not found: {root}")
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS & set(rel.parts[:-1]) or path.name.startswith("test_"):
            continue
        files.append(path)
    return sorted(files)


@register("python-stdlib")
def python_stdlib(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """One document per .py file of the running Python's standard library (or `path`)."""
    for path in stdlib_files(cfg.path):
        text = _read_python(path)
        if text.strip():
            yield Document(text, str(path))
        else:
            stats.skip("empty file")


def _docstrings(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(qualified header, docstring) for the module and every documented class/function in it."""
    doc = ast.get_docstring(tree)
    if doc:
        yield "", doc

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + node.name
                doc = ast.get_docstring(node)
                if doc:
                    if isinstance(node, ast.ClassDef):
                        header = f"class {name}"
                    else:
                        header = f"{name}({ast.unparse(node.args)})"
                    yield header, doc
                yield from walk(node.body, name + ".")

    yield from walk(tree.body, "")


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a stdlib file (`json/decoder.py` -> `json.decoder`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or path.stem


@register("python-docs")
def python_docs(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """pydoc topics (one document each), then one document per stdlib module with its docstrings.

    Modules are parsed with `ast`, never imported.
    """
    import pydoc_data.topics

    for key in sorted(pydoc_data.topics.topics):
        yield Document(pydoc_data.topics.topics[key], f"pydoc_data.topics#{key}")
    root = Path(cfg.path) if cfg.path else Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files(root):
        try:
            tree = ast.parse(_read_python(path), filename=str(path))
        except SyntaxError:
            stats.skip("syntax error")
            continue
        name = module_name(path, root)
        pieces = [f"{name}.{header}\n{doc}" if header else f"{name}\n{doc}" for header, doc in _docstrings(tree)]
        if pieces:
            yield Document("\n\n".join(pieces) + "\n", str(path))
        else:
            stats.skip("module without docstrings")


# --------------------------------------------------------------------------- generic files


def expand_paths(spec: str | None, cfg: SourceConfig) -> list[Path]:
    """Files named by a path, folder or glob (several may be comma separated), sorted and unique."""
    if not spec:
        raise SlmError(f"source {cfg.name!r} ({cfg.type}) needs a 'path' (file, folder or glob)")
    found: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        part = str(Path(part).expanduser())
        if any(ch in part for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(part, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise SlmError(f"source {cfg.name!r} ({cfg.type}): no files match {part!r}")
            found.extend(matches)
        elif Path(part).is_dir():
            found.extend(sorted(p for p in Path(part).rglob("*") if p.is_file()))
        else:
            found.append(_require(Path(part), cfg))
    return list(dict.fromkeys(found))


@register("text")
def text_files(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """One document per text file (path: file, folder, glob; comma separated).

    A file of more than MAX_DOC_CHARS characters is read and yielded in pieces ("file:line" of each
    piece's first line), so a huge file or line never sits in memory twice.
    """
    for path in expand_paths(cfg.path, cfg):
        pieces = _text_pieces(path, MAX_DOC_CHARS)
        first, second = next(pieces, (1, "")), next(pieces, None)
        if second is None:
            if first[1].strip():
                yield Document(first[1], str(path))
            else:
                stats.skip("empty file")
            continue
        for line, piece in chain([first, second], pieces):
            if piece.strip():
                yield Document(piece, f"{path}:{line}")
            else:
                stats.skip("blank piece of a long document")


def _render(record: dict, cfg: SourceConfig, origin: str) -> str:
    if cfg.template is not None:
        try:
            return cfg.template.format_map(record)
        except KeyError as exc:
            field_name = exc.args[0]
            raise SlmError(f"{origin}: missing field {field_name!r} used by the template of source {cfg.name!r}") from None
        except (ValueError, IndexError) as exc:
            raise SlmError(f"source {cfg.name!r}: bad template {cfg.template!r} ({exc})") from None
    name = cfg.field or "text"
    if name not in record:
        raise SlmError(f"{origin}: missing field {name!r} (source {cfg.name!r}; set 'field' or 'template')")
    value = record[name]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@register("jsonl")
def jsonl_files(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """One document per JSON line: `field` (default "text") or `template` ("{question}\\n{answer}")."""
    for path in expand_paths(cfg.path, cfg):
        for origin, record in iter_json_objects(path):
            text = _render(record, cfg, origin)
            if text.strip():
                yield Document(text, origin)
            else:
                stats.skip("empty text")


# --------------------------------------------------------------------------- CodeFusion, NL2Bash, CoNaLa

CODEFUSION_FILES = {"Bash": "BashBenchmarks.json", "Python": "PythonBenchmarks.json", "CF": "CFRuleBenchmarks.json"}
CODEFUSION_SNIPPETS = {
    "Bash": "BashSnippets.txt",
    "Python": "PythonSnippets.txt",
    "CF": "ConditionalFormattingSnippets.txt",
}


def pair_text(utterance: str, code: str) -> str:
    """The document text of an (utterance, code) pair: utterance line, newline, code."""
    return f"{utterance.strip()}\n{code.rstrip()}"


def codefusion_items(path: Path, split: str) -> list[dict]:
    """The items of one split of a CodeFusion benchmark file ({"train": [...], "test": [...]})."""
    data = _read_json(path)
    if not isinstance(data, dict) or split not in data:
        keys = ", ".join(data) if isinstance(data, dict) else type(data).__name__
        raise SlmError(f"{path}: no split {split!r} (found: {keys}); set the source's 'split' to train or test")
    items = data[split]
    if not isinstance(items, list):
        raise SlmError(f"{path}: split {split!r} must be a list of items")
    return items


@register("codefusion")
def codefusion(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """CodeFusion benchmark items (utterance + code); `language` Bash/Python/CF, `split` train/test."""
    base = _require(_default_path(cfg, "codefusion", "benchmarks"), cfg, "folder")
    if base.is_file():
        files = [base]
    else:
        names = _pick(CODEFUSION_FILES, cfg.language, cfg, "language") or list(CODEFUSION_FILES.values())
        files = [base / n for n in names if cfg.language or (base / n).exists()]
        for f in files:
            _require(f, cfg)
    for path in files:
        for i, item in enumerate(codefusion_items(path, cfg.split)):
            origin = f"{path}#{cfg.split}[{i}]"
            if not isinstance(item, dict) or "Code" not in item or "NL Utterance" not in item:
                raise SlmError(f"{origin}: expected an object with 'NL Utterance' and 'Code'")
            if item["NL Utterance"] is None or item["Code"] is None:
                stats.skip("null utterance or code")
                continue
            yield Document(pair_text(item["NL Utterance"], item["Code"]), origin)
    if stats.skipped:
        log.warning("source %r: skipped %s", cfg.name, dict(stats.skipped))


@register("codefusion-pretrain")
def codefusion_pretrain(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """One document per non-empty line of the CodeFusion pre-training snippet files."""
    base = _require(_default_path(cfg, "codefusion", "pretraining_data"), cfg, "folder")
    if base.is_file():
        files = [base]
    else:
        names = _pick(CODEFUSION_SNIPPETS, cfg.language, cfg, "language")
        files = [base / n for n in names] if names else sorted(base.glob("*.txt"))
        for f in files:
            _require(f, cfg)
    if not files:
        raise SlmError(f"source {cfg.name!r} (codefusion-pretrain): no .txt snippet files in {base}")
    for path in files:
        for lineno, line in enumerate(iter_lines(path), 1):
            if line.strip():
                yield Document(line, f"{path}:{lineno}")


@register("nl2bash")
def nl2bash(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """Aligned lines of all.nl / all.cm -> "description\\ncommand"."""
    base = _require(_default_path(cfg, "nl2bash"), cfg, "folder")
    nl_lines = read_text(_require(base / "all.nl", cfg)).splitlines()
    cm_lines = read_text(_require(base / "all.cm", cfg)).splitlines()
    if len(nl_lines) != len(cm_lines):
        raise SlmError(f"{base}: all.nl has {len(nl_lines)} lines but all.cm has {len(cm_lines)}; they must align")
    for lineno, (nl, cm) in enumerate(zip(nl_lines, cm_lines), 1):
        if nl.strip() and cm.strip():
            yield Document(pair_text(nl, cm), f"{base / 'all.nl'}:{lineno}")
        else:
            stats.skip("empty line")


@register("conala")
def conala(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """CoNaLa curated items -> (rewritten_intent or intent) + "\\n" + snippet."""
    path = _require(_default_path(cfg, "conala"), cfg)
    if path.is_dir():
        path = _require(path / "conala-train.json", cfg)
    items = _read_json(path)
    if not isinstance(items, list):
        raise SlmError(f"{path}: expected a JSON list of CoNaLa items")
    for i, item in enumerate(items):
        origin = f"{path}#{i}"
        if not isinstance(item, dict) or "snippet" not in item:
            raise SlmError(f"{origin}: expected an object with 'intent' and 'snippet'")
        intent = item.get("rewritten_intent") or item.get("intent")
        if not intent or not item["snippet"]:
            stats.skip("no intent or snippet")
            continue
        yield Document(pair_text(intent, item["snippet"]), origin)


# --------------------------------------------------------------------------- entry points


def get_loader(type_name: str, where: str = "") -> Loader:
    """The loader for a source type, or an SlmError with a suggestion."""
    if type_name not in SOURCES:
        prefix = f"{where}: " if where else ""
        raise SlmError(f"{prefix}unknown source type {type_name!r}{did_you_mean(type_name, SOURCES)}")
    return SOURCES[type_name]


def check_source(cfg: SourceConfig, where: str) -> None:
    """Load-time checks of one source's options (no file access): its type and enumerated options."""
    get_loader(cfg.type, where)
    if cfg.max_docs is not None and cfg.max_docs <= 0:
        raise SlmError(f"{where}: max_docs must be > 0, got {cfg.max_docs}")
    if cfg.type in ("codefusion",) and cfg.split not in ("train", "test"):
        raise SlmError(f"{where}: split must be train or test, got {cfg.split!r}{did_you_mean(cfg.split, ('train', 'test'))}")
    options = {"codefusion": CODEFUSION_FILES, "codefusion-pretrain": CODEFUSION_SNIPPETS}.get(cfg.type)
    if options is not None and cfg.language is not None:
        _pick(options, cfg.language, cfg, "language")


def iter_source(cfg: SourceConfig, stats: SourceStats | None = None) -> Iterator[Document]:
    """Documents of one source, honouring `max_docs`; longer than MAX_DOC_CHARS, they come in pieces."""
    check_source(cfg, f"source {cfg.name!r}")
    loader = SOURCES[cfg.type]
    stats = stats if stats is not None else SourceStats()
    docs = (piece for doc in loader(cfg, stats) for piece in split_document(doc, stats, MAX_DOC_CHARS))
    for n, doc in enumerate(docs):
        if cfg.max_docs is not None and n >= cfg.max_docs:
            break
        yield doc


def load_source(cfg: SourceConfig) -> LoadedSource:
    """All documents of one source; an empty source is an error naming it."""
    stats = SourceStats()
    docs = list(iter_source(cfg, stats))
    if not docs:
        skipped = f" (skipped: {dict(stats.skipped)})" if stats.skipped else ""
        raise SlmError(f"source {cfg.name!r} ({cfg.type}) has no documents{skipped}; check its path and options")
    return LoadedSource(cfg, docs, stats)


def load_sources(configs: list[SourceConfig]) -> list[LoadedSource]:
    """Load every configured source (in recipe order); at least one is required."""
    if not configs:
        raise SlmError("recipe key 'data.sources' is empty; add at least one source")
    for i, cfg in enumerate(configs):  # every source's options, before any is read
        check_source(cfg, f"recipe key 'data.sources[{i}]' (source {cfg.name!r})")
    return [load_source(cfg) for cfg in configs]
