"""Tokenizer: train on every builtin source, exact round trip, loads in transformers, reuse, errors."""

from __future__ import annotations

import json

import pytest

from slmkit.cli import main
from slmkit.config import DEFAULT_SPECIAL_TOKENS, recipe_from_dict
from slmkit.data.sources import iter_source
from slmkit.errors import SlmError
from slmkit.tokenizer import (
    eos_id,
    hf_tokenizer,
    load_tokenizer,
    mask_id,
    pad_id,
    special_tokens,
    tokenizer_fingerprint,
    train_tokenizer,
)

SAMPLE = 200  # documents per source


def builtin_sources(datasets) -> list[dict]:
    """One config per builtin source type, on real data, 200 documents each."""
    return [
        {"name": "stdlib", "type": "python-stdlib"},
        {"name": "docs", "type": "python-docs"},
        {"name": "book", "type": "text", "path": str(datasets / "openbookqa" / "openbook.txt")},
        {"name": "gsm8k", "type": "jsonl", "path": str(datasets / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"},
        {"name": "cf-bash", "type": "codefusion", "language": "Bash"},
        {"name": "cf-python", "type": "codefusion", "language": "Python"},
        {"name": "cf-rules", "type": "codefusion", "language": "CF"},
        {"name": "cf-pretrain", "type": "codefusion-pretrain"},
        {"name": "nl2bash", "type": "nl2bash"},
        {"name": "conala", "type": "conala"},
    ]


def make_recipe(datasets, **tokenizer):
    sources = [{**s, "max_docs": SAMPLE} for s in builtin_sources(datasets)]
    return recipe_from_dict(
        {"tokenizer": {"vocab_size": 1000, "max_train_bytes": 2_000_000, **tokenizer}, "data": {"sources": sources}}
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets):
    recipe = make_recipe(datasets)
    run = tmp_path_factory.mktemp("tok")
    return recipe, run, train_tokenizer(recipe, run, progress=False)


def test_special_tokens_take_the_first_ids_in_recipe_order(trained):
    _, _, path = trained
    tok = load_tokenizer(path)
    assert tok.get_vocab_size() == 1000
    assert [tok.token_to_id(t) for t in DEFAULT_SPECIAL_TOKENS] == list(range(len(DEFAULT_SPECIAL_TOKENS)))
    assert special_tokens(tok) == DEFAULT_SPECIAL_TOKENS
    assert (eos_id(tok), pad_id(tok), mask_id(tok)) == (0, 1, 5)


def test_round_trip_on_every_builtin_source(trained):
    recipe, _, path = trained
    tok = load_tokenizer(path)
    for cfg in recipe.data.sources:
        texts = [d.text for d in iter_source(cfg)]
        assert len(texts) == SAMPLE or cfg.type == "text", cfg.name
        for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False)):
            assert tok.decode(enc.ids, skip_special_tokens=False) == text, (cfg.name, text[:80])


def test_round_trip_unicode_whitespace_and_special_text(trained):
    tok = load_tokenizer(trained[2])
    for text in [" leading space", "tabs\t\tand\r\nCRLF  ", "日本語 emoji 🙂 é", "a <|endoftext|> b", "", "\x00\x7f"]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    tok.encode_special_tokens = True  # data prepare mode: special-token text stays text
    assert eos_id(tok) not in tok.encode("x <|endoftext|> y").ids


def test_loads_in_transformers(trained):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    _, run, path = trained
    text = "def add(a, b):\n    return a + b\n"
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert fast.decode(fast(text)["input_ids"]) == text
    hf = hf_tokenizer(path)
    assert (hf.eos_token, hf.pad_token, hf.mask_token) == ("<|endoftext|>", "<|pad|>", "<|mask|>")
    assert (hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (0, 1, 5)
    auto = AutoTokenizer.from_pretrained(str(run))  # tokenizer_config.json written beside tokenizer.json
    assert auto.eos_token_id == 0 and auto.pad_token_id == 1
    assert auto(text)["input_ids"] == load_tokenizer(path).encode(text).ids


def test_reuses_same_config_and_retrains_on_change(trained, capsys, datasets):
    recipe, run, path = trained
    mtime = path.stat().st_mtime_ns
    assert train_tokenizer(recipe, run, progress=False) == path
    assert path.stat().st_mtime_ns == mtime and "reusing" in capsys.readouterr().err
    assert tokenizer_fingerprint(make_recipe(datasets, vocab_size=1001)) != tokenizer_fingerprint(recipe)


def test_deterministic_training(tmp_path, datasets):
    recipe = recipe_from_dict(
        {
            "tokenizer": {"vocab_size": 400, "max_train_bytes": 300_000},
            "data": {"sources": [{"name": "c", "type": "conala"}, {"name": "n", "type": "nl2bash", "weight": 3}]},
        }
    )
    a = train_tokenizer(recipe, tmp_path / "a", progress=False)
    b = train_tokenizer(recipe, tmp_path / "b", progress=False)
    assert a.read_bytes() == b.read_bytes()


def test_tokenizer_path_is_copied_and_checked(trained, tmp_path, datasets):
    _, _, path = trained
    recipe = make_recipe(datasets, path=str(path))
    out = train_tokenizer(recipe, tmp_path, progress=False)
    assert out.read_bytes() == path.read_bytes()
    bad = make_recipe(datasets, path=str(path), special_tokens=["<|endoftext|>", "<|nope|>"])
    with pytest.raises(SlmError, match="lacks the recipe's special tokens"):
        train_tokenizer(bad, tmp_path / "x", progress=False)
    with pytest.raises(SlmError, match="tokenizer.path.*not found"):
        train_tokenizer(make_recipe(datasets, path=str(tmp_path / "none.json")), tmp_path / "y", progress=False)


def test_cli_trains_and_rejects_tiny_vocab(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "tokenizer: {vocab_size: 300, max_train_bytes: 100000}\n"
        "data: {sources: [{name: c, type: conala, max_docs: 300}]}\n"
    )
    assert main(["tokenizer", "train", str(recipe), "--out", str(tmp_path / "run")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["vocab_size"] == 300 and result["eos_id"] == 0
    code = main(["tokenizer", "train", str(recipe), "tokenizer.vocab_size=100", "--out", str(tmp_path / "small")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "too small" in err and err.count("\n") == 1
    assert not (tmp_path / "small").exists()


def test_load_errors(tmp_path):
    with pytest.raises(SlmError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(SlmError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)


def test_unknown_source_type_is_reported(tmp_path):
    with pytest.raises(SlmError, match="did you mean 'jsonl'"):  # refused when the recipe loads
        recipe_from_dict({"data": {"sources": [{"name": "x", "type": "jsonl-lines"}]}})
