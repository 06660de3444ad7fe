"""Huge inputs: one giant line must not take memory far beyond its size (sources cut it into pieces).

HF `tokenizers` needs 80-200x a string's size to train on or encode it in one piece (a 50 MB line took
~10 GB in `slm data prepare`), so sources hand it documents of at most MAX_DOC_CHARS characters.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from slmkit.config import SourceConfig
from slmkit.data import sources
from slmkit.data.jsonl import iter_lines, iter_text_chunks, read_text
from slmkit.data.sources import Document, SourceStats, load_source, split_document, split_text
from slmkit.errors import SlmError

ALPHABET = ["a", "b", "é", "🙂", " ", "\t", "\n", "\r\n", "\r", "word ", "x" * 7]


def src(type_: str, **kw) -> SourceConfig:
    return SourceConfig(name=kw.pop("name", type_), type=type_, **kw)


def random_text(rng: random.Random, n: int) -> str:
    weights = [rng.random() for _ in ALPHABET]
    return "".join(rng.choices(ALPHABET, weights=weights, k=n))


# --------------------------------------------------------------------------- split_text


def test_ordinary_documents_are_untouched():
    for text in ["", "x", "def f():\n    return 1\n", "é🙂" * 1000, "y" * sources.MAX_DOC_CHARS]:
        assert split_text(text) == [text] and split_text(text)[0] is text
        doc = Document(text, "f.txt")
        assert split_document(doc, SourceStats()) == [doc]
    assert sources.MAX_DOC_CHARS >= 1 << 20  # far above any stdlib file (the largest is ~0.75 MB)


def test_pieces_join_back_and_never_exceed_the_cap():
    rng = random.Random(0)
    for _ in range(500):
        text, cap = random_text(rng, rng.randint(0, 300)), rng.randint(1, 40)
        pieces = split_text(text, cap)
        assert "".join(pieces) == text
        assert all(len(p) <= cap for p in pieces), (text, cap)
        assert all(pieces) or pieces == [""]


def test_cuts_after_newlines_else_before_whitespace_else_anywhere():
    assert split_text("aaaa\nbbbb cc", 6) == ["aaaa\n", "bbbb", " cc"]
    assert split_text("one two\tthree", 5) == ["one", " two", "\tthre", "e"]
    assert split_text("x" * 10, 4) == ["xxxx", "xxxx", "xx"]
    emoji = split_text("é🙂" * 5, 3)  # a hard cut falls between characters, so every piece is valid text
    assert "".join(emoji) == "é🙂" * 5 and all(p.encode("utf-8").decode("utf-8") == p for p in emoji)
    with pytest.raises(ValueError):
        split_text("abc", 0)


def test_split_document_names_pieces_and_drops_blank_ones():
    stats = SourceStats()
    docs = split_document(Document("abc\n" + " " * 8 + "\ndef", "f.jsonl:3"), stats, cap=5)
    assert [(d.text, d.origin) for d in docs] == [("abc\n", "f.jsonl:3 part 1"), ("def", "f.jsonl:3 part 4")]
    assert stats.skipped == {"blank piece of a long document": 2}


# --------------------------------------------------------------------------- reading in bounded pieces


def test_chunked_reading_equals_read_text(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "f.txt"
    for _ in range(100):
        path.write_bytes(random_text(rng, rng.randint(0, 200)).encode("utf-8"))  # CRLF, lone CR, multibyte
        for size in (1, 2, 3, 5, 64):
            chunks = list(iter_text_chunks(path, size))
            assert "".join(chunks) == read_text(path)
        assert list(iter_lines(path)) == read_text(path).splitlines()


def test_hostile_chunked_reading_names_file_and_byte_of_bad_utf8(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("é".encode() * 7 + b"q\nz\xff")
    for size in (1, 2, 3, 100):
        with pytest.raises(SlmError, match=rf"{bad}: not UTF-8 text \(byte 17\)"):
            list(iter_text_chunks(bad, size))
    with pytest.raises(SlmError, match=rf"{bad}: not UTF-8 text \(byte 17\)"):
        list(iter_lines(bad))
    with pytest.raises(SlmError, match="file not found"):
        list(iter_text_chunks(tmp_path / "missing.txt"))


def test_text_and_jsonl_sources_yield_pieces_of_huge_items(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_DOC_CHARS", 64)
    small = tmp_path / "small.txt"
    small.write_bytes(b"short\r\nfile\n")
    assert [(d.text, d.origin) for d in load_source(src("text", path=str(small))).docs] == [("short\nfile\n", str(small))]

    rng = random.Random(2)
    big = tmp_path / "big.txt"
    big.write_bytes(("line one\n" + "".join(random_text(rng, 40) + "\n" for _ in range(20)) + "z" * 300).encode())
    whole = read_text(big)
    docs = load_source(src("text", path=str(big))).docs
    assert len(docs) > 5 and all(len(d.text) <= 64 for d in docs)
    expected, line = [], 1  # origin = file:line where the piece starts
    for piece in split_text(whole, 64):
        if piece.strip():
            expected.append((f"{big}:{line}", piece))
        line += piece.count("\n")
    assert [(d.origin, d.text) for d in docs] == expected

    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text(json.dumps({"text": "small"}) + "\n" + json.dumps({"text": "w " * 100}) + "\n")
    docs = load_source(src("jsonl", path=str(jsonl))).docs
    assert docs[0].text == "small" and docs[0].origin == f"{jsonl}:1"
    assert "".join(d.text for d in docs[1:]) == "w " * 100 and all(len(d.text) <= 64 for d in docs)
    assert [d.origin for d in docs[1:]] == [f"{jsonl}:2 part {k}" for k in range(1, len(docs))]
    assert len(list(sources.iter_source(src("jsonl", path=str(jsonl), max_docs=2)))) == 2  # max_docs counts pieces


# --------------------------------------------------------------------------- end to end: peak memory of the data stage

MB = 1_000_000
INPUT_BYTES = 8 * MB
# For an 8 MB line the old code peaked at 1.4 GB (words) and 1.7 GB (no whitespace), now at ~0.55 GB, most
# of it the fixed cost of encoding one 4 MiB batch. The bound sits between the two.
PEAK_RSS_BOUND = 1_000 * MB


def _huge_line(kind: str) -> str:
    rng = random.Random(3)
    if kind == "words":
        vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)]
        return " ".join(rng.choices(vocab, k=INPUT_BYTES // 6))[:INPUT_BYTES]
    block = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=100_000))  # no whitespace at all
    return (block * (INPUT_BYTES // len(block) + 1))[:INPUT_BYTES]


@pytest.mark.parametrize("kind", ["words", "no-whitespace"])
def test_hostile_data_prepare_of_one_huge_line_stays_within_a_bounded_multiple_of_its_size(tmp_path, kind):
    data = tmp_path / "big.txt"
    data.write_text(_huge_line(kind), encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: huge\ntokenizer: {vocab_size: 512}\n"
        f"data:\n  workers: 1\n  sources:\n    - {{name: big, type: text, path: {data}}}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    # The child reports its own VmHWM (the peak RSS of the memory map exec gave it). The rusage of a
    # child would not do: Linux folds the forking parent's RSS at fork time into the child's
    # ru_maxrss, and this pytest process may be gigabytes large after the real-model tests.
    report = tmp_path / "vmhwm.txt"
    script = ("import sys\nfrom slmkit.cli import main\nrc = main(sys.argv[2:])\n"
              "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
              "open(sys.argv[1], 'w').write(hwm)\nsys.exit(rc)\n")
    cmd = [sys.executable, "-c", script, str(report), "data", "prepare", str(recipe), "--out", str(tmp_path / "run")]
    with open(tmp_path / "log.txt", "wb") as log:
        child = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    assert child.returncode == 0, (tmp_path / "log.txt").read_text()[-2000:]
    peak = int(report.read_text()) * 1024  # kB
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / MB:.0f} MB for a {INPUT_BYTES / MB:.0f} MB line"
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    docs = manifest["sources"]["big"]["docs"]
    assert docs["train"] + docs["val"] == -(-INPUT_BYTES // sources.MAX_DOC_CHARS)  # cut into MAX_DOC_CHARS pieces
    assert manifest["sources"]["big"]["bytes"]["train"] + manifest["sources"]["big"]["bytes"]["val"] == INPUT_BYTES
