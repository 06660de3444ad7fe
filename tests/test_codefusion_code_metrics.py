"""Tests for slmkit.eval.code_metrics (CodeFusion Bash / Python metrics)."""

from __future__ import annotations

import json

import pytest

from slmkit.data.paths import datasets_dir
from slmkit.eval.code_metrics import (
    bash_match,
    bash_template,
    bash_template_tokens,
    chrf,
    distinct_fraction,
    mean_pairwise_edit_distance,
    normalize_python,
    normalized_edit_distance,
    python_exact_match,
    seen_in_train,
    top_k,
)

BASH_JSON = datasets_dir() / "codefusion/benchmarks/BashBenchmarks.json"


@pytest.mark.parametrize(
    "command, template",
    [
        ('find . -name "*.txt" -mtime -1\n', "find Arg -name Arg -mtime Number"),
        ("ls -l | grep foo > out.txt 2>&1", "ls -l | grep Arg > Arg 2>&1"),
        ("cd /tmp && rm -rf $(ls *.bak); echo done", "cd Arg && rm -rf $( ls Arg ) ; echo Arg"),
        ("find . -type f -exec rm {} \\;", "find Arg -type Arg -exec rm {} ;"),
        ("find . -print0 | xargs -0 -I {} grep -l 'a b' {}", "find Arg -print0 | xargs -0 -I Arg grep -l Arg Arg"),
        ("head -n 10 file", "head -n Number Arg"),
        ("  tail   -f\tlog.txt  \n", "tail -f Arg"),
    ],
)
def test_bash_template(command, template):
    assert bash_template(command) == template


def test_bash_match_quotes_and_values():
    assert bash_match('grep "foo bar" a.txt', "grep baz b.txt")
    assert bash_match("head -n 5 x", "head -n 20 y")
    assert not bash_match("head -n 5 x", "head -c 5 x")
    assert not bash_match("ls | wc -l", "ls ; wc -l")


def test_bash_fallback_no_exception():
    toks, parsed = bash_template_tokens('echo "unterminated | wc -l')
    assert not parsed
    assert toks[0] == "echo" and "|" in toks and "wc" in toks
    assert bash_template("") == ""


def test_python_normalization():
    assert python_exact_match("x = 'a'", 'x="a"\n')
    assert python_exact_match("f( a,b )", "f(a, b)")
    assert not python_exact_match("x = 'a'", "x = 'b'")
    assert normalize_python("def f(:\n  '''") == "def f(: '''"  # tokenize error -> whitespace collapse
    assert chrf("print(1)", "print(1)") == pytest.approx(100.0)
    assert chrf("abc", "xyz") < 100.0


def test_top_k():
    assert top_k([False, True, False], 1) is False
    assert top_k([False, True, False], 2) is True
    assert top_k([0.1, 0.9, 0.5], 1) == pytest.approx(0.1)
    assert top_k([0.1, 0.9, 0.5], 5) == pytest.approx(0.9)


def test_diversity():
    five = ["ls -l\n"] * 4 + ["ls -l"]
    assert distinct_fraction(five) == pytest.approx(0.2)
    assert mean_pairwise_edit_distance(five) == 0.0
    assert normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert normalized_edit_distance("", "") == 0.0
    assert normalized_edit_distance("abc", "") == 1.0
    # pairs: (ab, ab)=0, (ab, cd)=1, (ab, cd)=1 -> 2/3
    assert mean_pairwise_edit_distance(["ab", "ab", "cd"]) == pytest.approx(2 / 3)
    assert distinct_fraction(["a", "b", "c"]) == 1.0


@pytest.mark.skipif(not BASH_JSON.exists(), reason="CodeFusion Bash benchmark not available")
def test_bash_benchmark_real_data():
    data = json.loads(BASH_JSON.read_text())
    train, test = data["train"], data["test"]
    parsed = fell_back = 0
    for item in train + test:
        _, ok = bash_template_tokens(item["Code"])
        parsed += ok
        fell_back += not ok
    for item in test:
        assert bash_match(item["Code"], item["Code"])
    seen = seen_in_train(test, train)
    n_seen = sum(seen)
    print(f"\nbashlex parsed {parsed}, fell back {fell_back} (of {parsed + fell_back})")
    print(f"test commands seen verbatim in train: {n_seen}/{len(test)} ({n_seen / len(test):.1%})")
    assert len(seen) == len(test)
    assert parsed > fell_back


def test_runaway_bashlex_parse_falls_back_instead_of_exhausting_memory(monkeypatch) -> None:
    """Model output like this made bashlex allocate 24 GB; under the cap it falls back to tokens."""
    import resource

    from slmkit.eval import code_metrics

    monkeypatch.setattr(code_metrics, "BASHLEX_EXTRA_BYTES", 64 << 20)
    before = resource.getrlimit(resource.RLIMIT_AS)
    text = ("ls | printf '\\n' | sed -e 's/(bashrc[0-9]* directory( +NAME\")[0-${S zshDisk - | sed -e 's/[ \\t]+\\),"
            "$A-\")$}\" | xargs -0 sed -e '/:0-9]*<3}[0-9]*' \"*.file\" | sed -E 's/0-9]*//'")
    tokens, parsed = code_metrics.bash_template_tokens(text)
    assert not parsed and tokens[0] == "ls"
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # the cap is lifted again
    assert code_metrics.bash_template("find . -name '*.txt' -mtime -1") == "find Arg -name Arg -mtime Number"
