"""`slm data prepare`: dedup, val split, mixture weights/epochs, deterministic verified shards, bad input."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from slmkit.cli import main
from slmkit.config import recipe_from_dict
from slmkit.data.mixture import build_mixture, doc_hash, is_val, plan_mixture
from slmkit.data.prepare import prepare_data
from slmkit.data.sources import load_source
from slmkit.fileio import sha256_file
from slmkit.pipeline.rundir import RunDir
from slmkit.tokenizer import load_tokenizer

REAL = {
    "tokenizer": {"vocab_size": 500, "max_train_bytes": 500_000},
    "data": {
        "seq_len": 64,
        "val_fraction": 0.05,
        "shard_tokens": 40_000,
        "seed": 7,
        "sources": [
            {"name": "cf-bash", "type": "codefusion", "language": "Bash", "max_docs": 600},
            {"name": "nl2bash", "type": "nl2bash", "max_docs": 1500, "weight": 1.0},
            {"name": "conala", "type": "conala", "weight": 2.0},
        ],
    },
}


def prepare_fresh(recipe, run) -> dict:
    """The tokenizer and data stages through the stage runner (as `slm data prepare` runs them)."""
    from slmkit.pipeline.stages import run_stages

    run_stages(recipe, run, ["tokenizer", "data"], log=lambda _: None, progress=False, record=False)
    return RunDir(run).read_manifest()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    recipe = recipe_from_dict(json.loads(json.dumps(REAL)))
    run = tmp_path_factory.mktemp("real")
    return recipe, run, prepare_fresh(recipe, run)


def shard_hashes(manifest: dict) -> list[str]:
    return [s["sha256"] for split in ("train", "val") for s in manifest["splits"][split]["shards"]]


def test_manifest_matches_the_files(real):
    _, run, m = real
    data = run / "data"
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == 500 and m["tokenizer"]["eos_id"] == 0
    assert m["tokenizer"]["sha256"] == sha256_file(run / "tokenizer.json")
    for split in ("train", "val"):
        info = m["splits"][split]
        assert sum(s["tokens"] for s in info["shards"]) == info["tokens"] > 0
        for shard in info["shards"]:
            assert (data / shard["path"]).stat().st_size == 2 * shard["tokens"]
            assert sha256_file(data / shard["path"]) == shard["sha256"]
    assert len(m["splits"]["train"]["shards"]) > 1  # shard_tokens is small: several shards
    assert m["splits"]["train"]["tokens"] == sum(s["mixture_tokens"] for s in m["sources"].values())
    assert m["splits"]["val"]["tokens"] == sum(s["tokens"]["val"] for s in m["sources"].values())
    assert not list(data.glob(".*tmp"))


def test_documents_end_with_eot_and_decode_to_source_text(real):
    recipe, run, m = real
    data = run / "data"
    tokens = np.concatenate([np.fromfile(data / s["path"], dtype=np.uint16) for s in m["splits"]["train"]["shards"]])
    index = np.load(data / "train.docs.npy")
    assert len(index) == m["splits"]["train"]["docs"]
    ends = np.append(index[1:, 0], len(tokens)) - 1
    assert (tokens[ends] == 0).all() and (tokens == 0).sum() == len(index)  # EOT only between documents
    tok = load_tokenizer(run / "tokenizer.json")
    names = list(m["sources"])
    texts = {name: {d.text for d in load_source(cfg).docs} for name, cfg in zip(names, recipe.data.sources)}
    for (start, sid), end in list(zip(index, ends))[:50]:
        assert tok.decode(tokens[start:end].tolist(), skip_special_tokens=False) in texts[names[sid]]


def test_dedup_and_val_split_by_hash(real):
    recipe, _, m = real
    bash, nl2bash, conala = (load_source(c).docs for c in recipe.data.sources)
    seen: set[bytes] = set()
    expected_dups = []
    for docs in (bash, nl2bash, conala):
        before = len(seen)
        hashes = [doc_hash(d.text) for d in docs]
        seen.update(hashes)
        expected_dups.append(len(hashes) - (len(seen) - before))
    # CodeFusion's Bash items are NL2Bash's first lines: the 600 pairs reappear in nl2bash and are dropped there
    assert expected_dups[1] >= 600
    assert [s["duplicates_removed"] for s in m["sources"].values()] == expected_dups
    for docs, entry in zip((bash, nl2bash, conala), m["sources"].values()):
        assert entry["docs"]["train"] + entry["docs"]["val"] + entry["duplicates_removed"] == len(docs)
    val = sum(s["docs"]["val"] for s in m["sources"].values())
    assert 0.03 < val / len(seen) < 0.07  # val_fraction 0.05 by hash
    assert not any(is_val(doc_hash(str(i)), 0.0) for i in range(1000))


def test_effective_epochs_follow_llama_table1_semantics(real):
    _, _, m = real
    total = sum(s["tokens"]["train"] for s in m["sources"].values())  # M = all unique train tokens
    weights = {"cf-bash": 0.25, "nl2bash": 0.25, "conala": 0.5}
    for name, s in m["sources"].items():
        assert s["weight"] == pytest.approx(weights[name])
        assert s["epochs"] == pytest.approx(weights[name] * total / s["tokens"]["train"], rel=1e-5)
        assert s["mixture_tokens"] / s["tokens"]["train"] == pytest.approx(s["epochs"], rel=0.02)
    epochs = [s["epochs"] for s in m["sources"].values()]
    assert max(epochs) > 1 > min(epochs)  # one source repeated, another subsampled


def test_same_recipe_gives_identical_shards(real, tmp_path):
    recipe, _, m = real
    again = prepare_fresh(recipe, tmp_path)
    assert shard_hashes(again) == shard_hashes(m)
    assert again == m


def test_rerun_reuses_and_rebuilds_corrupt_or_truncated_shards(real, tmp_path, capsys):
    recipe, run, m = real
    work = tmp_path / "run"
    shutil.copytree(run, work)
    data = work / "data"
    mtimes = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    prepare_data(recipe, work, progress=False)
    assert "reusing" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == mtimes

    shard = data / m["splits"]["train"]["shards"][1]["path"]
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert shard_hashes(prepare_data(recipe, work, progress=False)) == shard_hashes(m)
    assert "corrupt (sha256 mismatch)" in capsys.readouterr().err
    assert sha256_file(shard) == m["splits"]["train"]["shards"][1]["sha256"]

    with shard.open("r+b") as f:
        f.truncate(100)
    (data / m["splits"]["val"]["shards"][0]["path"]).unlink()
    assert prepare_data(recipe, work, progress=False) == m
    err = capsys.readouterr().err
    assert "truncated" in err and "missing" in err


def synthetic_source(folder, name: str, docs: int, words: int, seed: int) -> dict:
    rng = random.Random(seed)
    vocab = [f"{name}{i}" for i in range(50)]
    path = folder / f"{name}.jsonl"
    lines = [json.dumps({"text": f"{i} " + " ".join(rng.choices(vocab, k=rng.randint(1, words)))}) for i in range(docs)]
    path.write_text("\n".join(lines) + "\n")
    return {"name": name, "type": "jsonl", "path": str(path)}


def test_mixture_proportions_within_one_percent(tmp_path):
    sources = [
        {**synthetic_source(tmp_path, "big", 3000, 60, 1), "weight": 0.7},
        {**synthetic_source(tmp_path, "mid", 800, 40, 2), "weight": 0.2},
        {**synthetic_source(tmp_path, "small", 150, 30, 3), "weight": 0.1},
    ]
    recipe = recipe_from_dict(
        {
            "tokenizer": {"vocab_size": 400},
            "data": {"sources": sources, "mixture_tokens": 200_000, "val_fraction": 0.01, "seq_len": 32},
        }
    )
    m = prepare_fresh(recipe, tmp_path / "run")
    index = np.load(tmp_path / "run" / "data" / "train.docs.npy")
    lengths = np.diff(np.append(index[:, 0], m["splits"]["train"]["tokens"]))
    share = np.bincount(index[:, 1], weights=lengths, minlength=3) / lengths.sum()
    assert lengths.sum() == pytest.approx(200_000, rel=0.01)
    assert np.abs(share - [0.7, 0.2, 0.1]).max() < 0.01, share
    assert m["sources"]["small"]["epochs"] > 2  # repeated whole epochs plus a fraction
    assert m["sources"]["big"]["epochs"] < 1  # a subset


def test_mixture_sampling_units():
    plans = plan_mixture([1000, 100], [3, 1], mixture_tokens=800)
    assert [p.weight for p in plans] == [0.75, 0.25] and [p.epochs for p in plans] == [0.6, 2.0]
    lengths = [np.full(100, 10), np.full(10, 10)]
    mix = build_mixture(lengths, [0.6, 2.0], seed=0)
    assert (mix[:, 0] == 0).sum() == 60 and (mix[:, 0] == 1).sum() == 20
    assert np.bincount(mix[mix[:, 0] == 1, 1]).tolist() == [2] * 10  # two whole epochs
    assert len(set(mix[mix[:, 0] == 0, 1].tolist())) == 60  # the fraction: distinct documents
    assert np.array_equal(mix, build_mixture(lengths, [0.6, 2.0], seed=0))
    assert not np.array_equal(mix, build_mixture(lengths, [0.6, 2.0], seed=1))


# --------------------------------------------------------------------------- bad input through the CLI


def write_recipe(tmp_path, source: str, extra: str = "") -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"tokenizer: {{vocab_size: 300}}\n{extra}data:\n  sources:\n    - {source}\n")
    return str(path)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_clean_failure(code: int, err: str, run, pattern: str) -> None:
    import re

    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err
    leftovers = [p.name for p in run.rglob("*")] if run.exists() else []
    assert set(leftovers) <= {"recipe.yaml"}, leftovers  # no tokenizer, no shards, no temp files


def test_bad_input_missing_file(tmp_path, capsys):
    recipe = write_recipe(tmp_path, f"{{name: qa, type: jsonl, path: {tmp_path}/nope.jsonl}}")
    code, err = run_cli(capsys, "data", "prepare", recipe, "--out", str(tmp_path / "run"))
    assert_clean_failure(code, err, tmp_path / "run", r"file not found: .*nope\.jsonl")


def test_bad_input_malformed_jsonl_line(tmp_path, capsys):
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops\n')
    recipe = write_recipe(tmp_path, f"{{name: qa, type: jsonl, path: {bad}}}")
    code, err = run_cli(capsys, "data", "prepare", recipe, "--out", str(tmp_path / "run"))
    assert_clean_failure(code, err, tmp_path / "run", rf"{bad}:3: malformed JSON line")


def test_bad_input_empty_source(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    recipe = write_recipe(tmp_path, f"{{name: notes, type: text, path: {tmp_path}/empty.txt}}")
    code, err = run_cli(capsys, "data", "prepare", recipe, "--out", str(tmp_path / "run"))
    assert_clean_failure(code, err, tmp_path / "run", r"source 'notes' \(text\) has no documents")


def test_bad_input_weight_not_positive(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "{name: c, type: conala}")
    code, err = run_cli(capsys, "data", "prepare", recipe, "data.sources.0.weight=0", "--out", str(tmp_path / "run"))
    assert_clean_failure(code, err, tmp_path / "run", r"weight must be > 0")


def test_bad_input_vocab_too_small(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "{name: c, type: conala}")
    code, err = run_cli(capsys, "data", "prepare", recipe, "tokenizer.vocab_size=200", "--out", str(tmp_path / "run"))
    assert_clean_failure(code, err, tmp_path / "run", r"tokenizer.vocab_size.*too small.*special tokens")


def test_bad_input_misspelled_key(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "{name: c, type: conala}")
    code, err = run_cli(capsys, "data", "prepare", recipe, "data.vocab_sise=8000", "--out", str(tmp_path / "run"))
    assert_clean_failure(code, err, tmp_path / "run", r"did you mean 'tokenizer.vocab_size'")


def test_bad_input_unknown_type_and_all_duplicates(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "{name: c, type: conalla}")
    code, err = run_cli(capsys, "data", "prepare", recipe, "--out", str(tmp_path / "run"))
    assert_clean_failure(code, err, tmp_path / "run", r"unknown source type 'conalla' \(did you mean 'conala'\?\)")
    twice = write_recipe(tmp_path, "{name: a, type: conala, max_docs: 300}\n    - {name: b, type: conala, max_docs: 300}")
    code, err = run_cli(capsys, "data", "prepare", twice, "--out", str(tmp_path / "run2"))
    assert code == 2 and "source 'b' has no train documents after dedup" in err
    assert not (tmp_path / "run2" / "data" / "manifest.json").exists()


@pytest.mark.slow
def test_quickstart_acceptance(tmp_path, capsys):
    """The issue's acceptance commands on the real quickstart recipe (~15 s on 2 cores)."""
    out = str(tmp_path / "q")
    assert main(["tokenizer", "train", "recipes/quickstart.yaml", "--out", out]) == 0
    assert main(["data", "prepare", "recipes/quickstart.yaml", "--out", out, "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "stdlib" in table and "docs" in table and "epochs" in table
    m = json.loads((tmp_path / "q" / "data" / "manifest.json").read_text())
    assert m["splits"]["train"]["tokens"] > 1_000_000 and m["splits"]["val"]["tokens"] > 10_000
    assert set(m["sources"]) == {"stdlib", "docs"} and m["sources"]["stdlib"]["weight"] == pytest.approx(0.75)
