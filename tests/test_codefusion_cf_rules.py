"""The CodeFusion CF rule interpreter: parser, Excel semantics, execution match, gold agreement."""

from __future__ import annotations

import pytest

from slmkit.errors import SlmError
from slmkit.eval.cf_rules import (
    LABEL_NOISE, PARTIAL_DATA, SHIFTED, Call, CellRef, CFRuleError, ColumnRef, Number, Text, execution_match,
    flag_rows, gold_agreement, is_visual_only, load_benchmark, normalize_rule, parse_rule, score_item,
)


def table(*values: object) -> list[list[object]]:
    """A benchmark-shaped table: header then [index, value] rows."""
    return [["Index", "Value"]] + [[i, v] for i, v in enumerate(values)]


# ---------------------------------------------------------------- parser


def test_parse_nested_logic_and_numbers() -> None:
    rule = parse_rule("AND(GreaterThan(0),OR(LessThan(-5251.47),NOT(GreaterThan(1.5e3))))")
    assert rule == Call("AND", (
        Call("GreaterThan", (Number(0.0),)),
        Call("OR", (Call("LessThan", (Number(-5251.47),)), Call("NOT", (Call("GreaterThan", (Number(1500.0),)),)))),
    ))


def test_parse_percent_text_columns_cells_units() -> None:
    assert parse_rule("top(10%)") == Call("Top", (Number(10.0, percent=True),))
    assert parse_rule("TextContains(asc.em-direct@dupont.com)").args == (Text("asc.em-direct@dupont.com"),)
    assert parse_rule("TextEquals(In Progress (old))").args == (Text("In Progress (old)"),)
    assert parse_rule('TextEquals("a, b")').args == (Text("a, b"),)
    assert parse_rule("TopPercent(c[1], 20)") == Call("TopPercent", (ColumnRef(1), Number(20.0)))
    assert parse_rule("GreaterThan($E$13)").args == (CellRef("$E$13"),)
    assert parse_rule("GreaterThan(13 Days)").args == (Number(13.0, unit="days"),)
    assert parse_rule("Between(537, 624)").args == (Number(537.0), Number(624.0))
    assert parse_rule(" duplicate ( ) ") == Call("Duplicate")


@pytest.mark.parametrize(("text", "pos"), [
    ("GreaterThan(25", 14), ("AND(LessThan(5),)", 16), ("LessThan(5) x", 12), ("(5)", 0),
    ('LessThan(3",formula2:undefined)', 10), ("", 0),
])
def test_malformed_input_names_position(text: str, pos: int) -> None:
    with pytest.raises(CFRuleError, match=f"position {pos}") as err:
        parse_rule(text)
    assert isinstance(err.value, SlmError) and "\n" not in str(err.value)


def test_normalize_and_visual() -> None:
    assert normalize_rule("and( greaterthanequal(25.0) , LessThan(50) )") == "AND(GreaterThanEqual(25),LessThan(50))"
    assert normalize_rule("top( 10 % )") == normalize_rule("Top(10%)")
    assert normalize_rule("not a rule((") == "notarule(("
    assert is_visual_only("ColorScale()") and is_visual_only("iconset()") and not is_visual_only("top(1)")


# ---------------------------------------------------------------- semantics


def test_top_and_bottom_n_and_percent() -> None:
    data = table(*[str(v) for v in range(1, 21)], "text", "")
    assert flag_rows("top(10%)", data)[:20] == [False] * 18 + [True, True]
    assert flag_rows("top(3)", data) == [False] * 17 + [True] * 3 + [False, False]
    assert flag_rows("bottom(2)", data)[:3] == [True, True, False]
    assert flag_rows("top(10%)", table("5"))[0]  # at least one item
    assert flag_rows("top(2)", table("9", "9", "9", "1")) == [True, True, True, False]  # ties
    # the benchmark labeler's bottom(N): values <= the N-th largest
    assert flag_rows("bottom(2)", table("1", "2", "3", "4"), semantics="labels") == [True, True, True, False]


def test_averages_ignore_text_and_blanks() -> None:
    data = table("10", "20", "30", "", "n/a")
    assert flag_rows("aboveAverage()", data) == [False, False, True, False, False]
    assert flag_rows("belowAverage()", data) == [True, False, False, False, False]


def test_duplicates_case_insensitive_numbers_by_value_blanks_never() -> None:
    data = table("Apple", "apple", "pear", "", "", "1", "1.0", "pear ")
    assert flag_rows("Duplicate()", data) == [True, True, False, False, False, True, True, False]  # spaces count
    # the labeler flags first occurrences, case-sensitively (train item 625: "february" then "February");
    # this test used to expect "apple" unflagged, which the labels contradict
    assert flag_rows("Duplicate()", data, semantics="labels") == [True, True, True, True, False, True, False, True]


def test_blanks_text_and_between() -> None:
    data = table("", "  ", "Error found", "ERROR", "5", 7)
    assert flag_rows("Blanks()", data) == [True, True, False, False, False, False]
    assert flag_rows("NOT(Blanks())", data) == [False, False, True, True, True, True]
    assert flag_rows("TextContains(error)", data) == [False, False, True, True, False, False]
    assert flag_rows("TextEquals(error)", data) == [False, False, False, True, False, False]
    assert flag_rows("Between(7, 5)", data) == [False, False, False, False, True, True]  # reversed bounds
    assert flag_rows("Between(0, 5)", data) == [True, True, False, False, True, False]  # inclusive, blank = 0


def test_text_rules_keep_cell_spaces() -> None:
    data = table("Intestinal", "Intestinal ", "intestinal", " Intestinal", 5)
    for semantics in ("excel", "labels"):
        assert flag_rows("TextEquals(Intestinal)", data, semantics) == [True, False, True, False, False]
        assert flag_rows("TextStartsWith(int)", data, semantics) == [True, True, True, False, False]
        assert flag_rows("TextContains(Intestinal)", data, semantics)[:4] == [True] * 4
    assert flag_rows('Equals("intestinal")', data) == [True, False, True, False, False]


def test_labeler_reads_text_as_zero_in_numeric_rules() -> None:
    data = table("J207", "0", "5", "n/a", "")
    assert flag_rows("Equals(0)", data) == [False, True, False, False, True]  # Excel: blank is 0, text is not
    assert flag_rows("Equals(0)", data, semantics="labels") == [True, True, False, True, True]
    assert flag_rows("bottom(1)", table("x", "3", "1")) == [False, False, True]
    assert flag_rows("bottom(1)", table("x", "3", "1"), semantics="labels") == [True, True, True]
    assert flag_rows("top(1)", table("x", "0", "0")) == [False, True, True]
    assert flag_rows("top(1)", table("x", "0", "0"), semantics="labels") == [True, True, True]
    assert flag_rows("top(1)", table("x", "0", "2"), semantics="labels") == [False, False, True]
    # the mean stays over the numeric cells (20), text then counts as 0 against it
    avg = table("10", "20", "30", "<10")
    assert flag_rows("belowAverage()", avg) == [True, False, False, False]
    assert flag_rows("belowAverage()", avg, semantics="labels") == [True, False, False, True]
    assert flag_rows("aboveAverage()", avg, semantics="labels") == [False, False, True, False]


def test_labeler_percent_counts_cells_left_out_of_data() -> None:
    # Index 0..29 with rows 10..19 left out: Excel counts the 20 numbers (2 items), the labeler the 30 cells (3)
    data = [["Index", "Value"]] + [[i, str(i)] for i in (*range(10), *range(20, 30))]
    assert sum(flag_rows("top(10%)", data)) == 2
    assert sum(flag_rows("top(10%)", data, semantics="labels")) == 3
    assert flag_rows("bottom(10%)", data)[:3] == [True, True, False]
    assert sum(flag_rows("bottom(10%)", data, semantics="labels")) == 18  # <= the 3rd largest
    assert flag_rows("top(1%)", data, semantics="labels")[-1]  # at least one item


def test_labeler_inverts_blanks() -> None:
    data = table("a", "", "  ", "0")
    assert flag_rows("Blanks()", data) == [False, True, True, False]
    assert flag_rows("Blanks()", data, semantics="labels") == [True, False, False, True]
    assert flag_rows("NoBlanks()", data, semantics="labels") == flag_rows("NoBlanks()", data)


def test_references_and_excelscript_recordings() -> None:
    data = table("Male", "Female", "5", "2")
    recorded = ('LessThan(3",formula2:undefined,operator:ExcelScript.ConditionalCellValueOperator.lessThan,}); '
                'x.setRule({formula1:"=3)')
    assert parse_rule(recorded) == Call("LessThan", (Number(3.0),))
    assert flag_rows(recorded, data) == [False, False, False, True]
    named = recorded.replace("LessThan(3", "TextEquals(Male").replace("lessThan", "equalTo")
    assert parse_rule(named) == Call("TextEquals", (CellRef("Male"),))  # formula "=Male" names a sheet name
    for rule in (named, "TextEquals($B$3)", "GreaterThan($E$13)", "AND(GreaterThan(1),LessThan($A$1))"):
        with pytest.raises(CFRuleError):
            flag_rows(rule, data)  # the sheet cell is unknown: score_item falls back to exact match
        assert flag_rows(rule, data, semantics="labels") == [False] * 4  # the labeler resolved none


def test_comparisons_numbers_as_strings_and_column_refs() -> None:
    data = [["Index", "Value", "Score"], [0, "25", 90], [1, "49.9", 10], [2, "50", 55], [3, "x", 1]]
    assert flag_rows("AND(GreaterThanEqual(25),LessThan(50))", data) == [True, True, False, False]
    assert flag_rows("GreaterThan(c[2], 50)", data) == [True, False, True, False]
    assert flag_rows("Equals(50)", data) == [False, False, True, False]
    with pytest.raises(CFRuleError):
        flag_rows("ColorScale()", data)


# ---------------------------------------------------------------- scoring


def test_execution_match() -> None:
    data = table(*[str(v) for v in (10, 25, 30, 49, 50, 70, "", "abc")])
    gold = "AND(GreaterThanEqual(25),LessThan(50))"
    assert execution_match("AND(LessThan(50),GreaterThanEqual(25))", gold, data)
    assert execution_match("Between(25, 49)", gold, data)  # different text, same rows
    assert not execution_match("AND(GreaterThan(25),LessThan(50))", gold, data)
    for garbage in ("", "AND(((", "Frobnicate(3)", "ColorScale()", None, "x" * 10_000, "NOT(" * 5000):
        assert execution_match(garbage, gold, data) is False  # type: ignore[arg-type]


def test_score_item_methods() -> None:
    item = {"Code": "top(10%)", "Data": table("1", "2", "3")}
    assert score_item("Top(10 %)", item) == {"match": True, "method": "execution"}
    header_only = {"Code": "GreaterThan(13 Days)", "Data": [["Index", "Value"]]}
    assert score_item("greaterthan(13 days)", header_only) == {"match": True, "method": "exact"}
    visual = {"Code": "ColorScale()", "Data": table("1", "2")}
    assert score_item("DataBar()", visual) == {"match": False, "method": "exact"}


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def bench() -> dict:
    try:
        return load_benchmark()
    except SlmError as err:
        pytest.skip(str(err))


def test_gold_rules_reproduce_train_labels(bench: dict) -> None:
    result = gold_agreement(bench["train"], semantics="labels")
    assert result["eligible"] == 496
    # Measured 441/496 = 88.9%. The 95% goal is out of reach from Data alone; the other 55 are:
    # - 41 PARTIAL_DATA: top/bottom/average rules over tables the file cuts at 100 rows (40) or whose range
    #   has cells Data leaves out (1); each one's labels are "values beyond a cut-off" in the rule's
    #   direction, the cut-off set by rows we cannot see (e.g. top(1) flags no visible row: 181, 292, 311);
    # - 5 SHIFTED: the labels fit the rule one row up (116-119, 379), while other tables like them
    #   (397, 454, 494) fit the usual alignment, so no rule of the language can shift them;
    # - 9 LABEL_NOISE: the labels contradict the values (GreaterThan(40000) leaves 74203.8 unflagged and
    #   flags 34156.2: 580, 591, 603; flattened multi-column ranges: 428, 566, 567; 234, 235, 394).
    assert result["matched"] == 441, result["by_category"]
    assert result["rate"] >= 0.889
    assert result["by_category"] == {PARTIAL_DATA: 41, LABEL_NOISE: 9, SHIFTED: 5}
    assert result["matched"] + len(result["disagreements"]) == result["eligible"]


def test_agreement_categories() -> None:
    items = [
        {"ID": "ok", "Code": "GreaterThan(2)", "Data": table("1", "3"), "Labels": [0, 0, 1]},
        {"ID": "cut", "Code": "top(1)", "Data": table(*map(str, range(100))), "Labels": [0] * 101},
        {"ID": "up", "Code": "GreaterThan(2)", "Data": table("1", "3", "1"), "Labels": [0, 1, 0, 0]},
        {"ID": "noise", "Code": "GreaterThan(2)", "Data": table("5", "1", "1"), "Labels": [0, 0, 1, 0]},
        # a cut-off fits, but the table is whole: no unseen row can have moved it
        {"ID": "short", "Code": "top(1)", "Data": table("1", "3", "2"), "Labels": [0, 0, 1, 1]},
    ]
    result = gold_agreement(items)
    assert (result["eligible"], result["matched"]) == (5, 1)
    assert [(d["ID"], d["category"]) for d in result["disagreements"]] == [
        ("cut", PARTIAL_DATA), ("up", SHIFTED), ("noise", LABEL_NOISE), ("short", LABEL_NOISE)]


def test_every_test_item_scores(bench: dict) -> None:
    methods = [score_item(item["Code"], item) for item in bench["test"]]
    assert all(m["match"] for m in methods)


def test_model_output_never_crashes_the_parser() -> None:
    """Candidates are untrusted text: every prefix of real rules and random garbage either parses or
    raises CFRuleError (execution match then counts it as no match)."""
    import random

    rules = ['AND(GreaterThanEqual(25),LessThan(50))', "TextContains('Error')", 'top(10%)', 'Between(537, 624)',
             'TopPercent(c[1], 20)', 'NOT(Blanks())', 'Equal("a b")', 'LessThan(3",formula2:x)']
    texts = [r[:i] for r in rules for i in range(len(r) + 1)]
    rng = random.Random(0)
    alphabet = "()',\"%$[]c1234567890.ABGTLNOeqaltrhn _-"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    data = [["Value"], [1], ["Error"], [30]]
    for text in texts:
        try:
            flag_rows(text, data)
        except CFRuleError:
            pass
        assert isinstance(execution_match(text, rules[0], data), bool)
