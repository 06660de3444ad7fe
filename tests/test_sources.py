"""Data sources on the real shared datasets and the running Python's standard library."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from slmkit.config import SourceConfig
from slmkit.data.sources import SOURCES, iter_source, load_source, load_sources, stdlib_files
from slmkit.errors import SlmError


def src(type_: str, **kw) -> SourceConfig:
    return SourceConfig(name=kw.pop("name", type_), type=type_, **kw)


def test_registry_has_every_builtin_type():
    expected = {"python-stdlib", "python-docs", "text", "jsonl", "codefusion", "codefusion-pretrain", "nl2bash", "conala"}
    assert expected <= set(SOURCES)


def test_python_stdlib_excludes_tests_and_site_packages():
    files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = [f.relative_to(root) for f in files]
    assert files == sorted(files) and len(files) > 300
    assert Path("os.py") in rel and Path("json/decoder.py") in rel
    for r in rel:
        assert not {"site-packages", "dist-packages", "test", "tests", "idle_test"} & set(r.parts[:-1]), r
        assert not r.name.startswith("test_"), r
    docs = load_source(src("python-stdlib", max_docs=50)).docs
    assert len(docs) == 50 and all(d.origin.endswith(".py") for d in docs)
    assert docs[0].text == Path(docs[0].origin).read_text(encoding="utf-8")


def test_python_docs_uses_pydoc_topics_and_docstrings_without_importing():
    code = (
        "import sys; from slmkit.config import SourceConfig; from slmkit.data.sources import iter_source\n"
        "before = set(sys.modules)\n"
        "docs = list(iter_source(SourceConfig(name='d', type='python-docs')))\n"
        "import json; print(json.dumps({'n': len(docs), 'new': sorted(set(sys.modules) - before),"
        " 'json': [d.text for d in docs if d.origin.endswith('json/__init__.py')]}))"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    import pydoc_data.topics

    assert out["n"] > len(pydoc_data.topics.topics) + 300
    assert "antigravity" not in out["new"] and "this" not in out["new"] and "tkinter" not in out["new"]
    (json_doc,) = out["json"]
    assert json_doc.startswith("json\nJSON (JavaScript Object Notation)")
    assert "json.dumps(obj, *, skipkeys=False" in json_doc  # header: qualified name + signature
    first = next(iter_source(src("python-docs")))
    assert first.origin.startswith("pydoc_data.topics#")


def test_codefusion_languages_splits_and_skipped_nulls(datasets):
    bash = load_source(src("codefusion", language="Bash"))
    assert len(bash.docs) == 9077
    assert bash.docs[0].text == (
        "(BSD specific) Display process information twice, waiting one second between each, filtering out the header line.\n"
        "top -b -d2 -s1 | sed -e '1,/USERNAME/d' | sed -e '1,/^$/d'"
    )
    python = load_source(src("codefusion", language="python"))  # case-insensitive
    assert len(python.docs) == 2141 - 72 and sum(python.stats.skipped.values()) == 72
    cf_test = load_source(src("codefusion", language="CF", split="test"))
    assert len(cf_test.docs) == 71 and "#test[0]" in cf_test.docs[0].origin
    assert len(load_source(src("codefusion")).docs) == 9077 + 2069 + 641  # all languages
    with pytest.raises(SlmError, match="unknown language 'Bsh'.*did you mean 'Bash'"):
        load_source(src("codefusion", language="Bsh"))
    with pytest.raises(SlmError, match="split must be train or test"):
        load_source(src("codefusion", split="dev"))


def test_codefusion_pretrain_one_doc_per_line(datasets):
    path = datasets / "codefusion" / "pretraining_data" / "BashSnippets.txt"
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    docs = load_source(src("codefusion-pretrain", language="Bash")).docs
    assert [d.text for d in docs] == lines
    assert docs[0].origin == f"{path}:1"
    with pytest.raises(SlmError, match="PythonSnippets.txt"):  # not in this copy: named clearly
        load_source(src("codefusion-pretrain", language="Python"))


def test_nl2bash_and_conala(datasets):
    nl2bash = load_source(src("nl2bash")).docs
    assert len(nl2bash) == 10085
    assert nl2bash[1].text.startswith("(GNU specific) Calculte") and nl2bash[1].text.endswith("END { print sum; }'")
    conala = load_source(src("conala")).docs
    assert len(conala) == 2379
    assert conala[0].text == (
        "Concatenate elements of a list 'x' of multiple integers to a single integer\n"
        "sum(d * 10 ** i for i, d in enumerate(x[::-1]))"
    )
    # rewritten_intent is null for 79 items: they fall back to the original intent
    raw = json.loads((datasets / "conala" / "conala-train.json").read_text())
    i = next(i for i, item in enumerate(raw) if item["rewritten_intent"] is None)
    assert conala[i].text.startswith(raw[i]["intent"])


def test_jsonl_field_and_template_on_real_data(datasets):
    path = datasets / "gsm8k" / "test.jsonl"
    docs = load_source(src("jsonl", path=str(path), template="Question: {question}\nAnswer: {answer}")).docs
    first = json.loads(path.read_text().splitlines()[0])
    assert len(docs) == 1319 and docs[0].text == f"Question: {first['question']}\nAnswer: {first['answer']}"
    assert docs[0].origin == f"{path}:1"
    only = load_source(src("jsonl", path=str(path), field="question", max_docs=3)).docs
    assert [d.text for d in only] == [json.loads(x)["question"] for x in path.read_text().splitlines()[:3]]


def test_text_globs_and_comma_lists(tmp_path, datasets):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.txt").write_text("beta\n")
    (tmp_path / "c.md").write_text("gamma\n")
    docs = load_source(src("text", path=f"{tmp_path}/*.txt,{tmp_path / 'c.md'}")).docs
    assert [d.text for d in docs] == ["alpha\n", "beta\n", "gamma\n"]
    book = load_source(src("text", path=str(datasets / "openbookqa" / "openbook.txt"))).docs
    assert len(book) == 1 and book[0].text.count("\n") >= 1300


def test_jsonl_bad_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": broken}\n')
    with pytest.raises(SlmError, match=rf"{bad}:3: malformed JSON line"):
        load_source(src("jsonl", path=str(bad)))
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text('{"question": "q1", "answer": "a1"}\n{"question": "q2"}\n')
    with pytest.raises(SlmError, match=rf"{missing}:2: missing field 'answer'"):
        load_source(src("jsonl", path=str(missing), template="{question} {answer}"))
    with pytest.raises(SlmError, match=rf"{missing}:1: missing field 'body'"):
        load_source(src("jsonl", path=str(missing), field="body"))


def test_missing_files_empty_sources_and_unknown_types(tmp_path):
    with pytest.raises(SlmError, match="file not found: .*nope.jsonl"):
        load_source(src("jsonl", path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(SlmError, match="no files match"):
        load_source(src("text", path=str(tmp_path / "*.txt")))
    with pytest.raises(SlmError, match="needs a 'path'"):
        load_source(src("text"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SlmError, match="source 'empty' \\(jsonl\\) has no documents"):
        load_source(src("jsonl", name="empty", path=str(tmp_path / "empty.jsonl")))
    with pytest.raises(SlmError, match="unknown source type 'python-stdlb'.*did you mean 'python-stdlib'"):
        load_sources([src("python-stdlb")])
    with pytest.raises(SlmError, match="folder not found"):
        load_source(src("nl2bash", path=str(tmp_path / "missing")))
    broken = tmp_path / "Bench.json"
    broken.write_text('{"train": [\n  {"ID": 1,\n  oops}\n]}')
    with pytest.raises(SlmError, match=rf"{broken}:3: malformed JSON"):
        load_source(src("codefusion", path=str(broken)))


def test_max_docs_is_lazy_and_exact():
    docs = list(iter_source(src("python-docs", max_docs=5)))
    assert len(docs) == 5
