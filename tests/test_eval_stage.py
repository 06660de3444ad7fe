"""Eval stage: val loss and bits per byte of the latest checkpoint vs an add-one unigram baseline,
checked against independent recomputation from the raw shards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slmkit.config import load_recipe
from slmkit.errors import SlmError
from slmkit.eval.perplexity import (
    TargetCounter,
    eval_is_current,
    evaluate_run,
    format_table,
    unigram_log_probs,
)
from slmkit.pipeline.rundir import open_run_dir
from slmkit.pipeline.stages import run_stages

TINY = Path(__file__).parent / "fixtures" / "tiny-pretrain.yaml"


def test_unigram_add_one_smoothing():
    counts = np.array([3, 0, 1, 0])
    log_p = unigram_log_probs(counts)
    assert np.allclose(np.exp(log_p), [4 / 8, 1 / 8, 2 / 8, 1 / 8])
    assert math.isclose(float(np.exp(log_p).sum()), 1.0)


def test_target_counter_skips_masked_labels():
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.tensor([[1, -100, 2], [2, 2, -100]])}
    counter = TargetCounter([batch], vocab_size=4)
    assert list(counter) == [batch]
    assert counter.counts.tolist() == [0, 1, 3, 0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained for 12 steps (tokenizer, data, train stages only)."""
    recipe = load_recipe(TINY, ["stages=[tokenizer,data,train]"])
    run_dir = open_run_dir(tmp_path_factory.mktemp("eval") / "tiny", recipe)
    run_stages(recipe, run_dir, log=lambda _: None)
    return recipe, run_dir


def test_eval_matches_independent_recomputation(trained):
    from slmkit.interop.hf import load_hf_folder

    recipe, run_dir = trained
    assert not eval_is_current(recipe, run_dir)
    report = evaluate_run(recipe, run_dir, progress=False)
    assert json.loads((run_dir / "eval" / "val.json").read_text()) == report
    assert eval_is_current(recipe, run_dir)
    assert report["checkpoint"] == "ckpt/step-000012" and report["step"] == 12

    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    dtype, T = manifest["dtype"], recipe.data.seq_len
    read = lambda split: np.concatenate(  # noqa: E731
        [np.fromfile(run_dir / "data" / s["path"], dtype=dtype) for s in manifest["splits"][split]["shards"]]
    ).astype(np.int64)
    n_blocks = recipe.train.eval_batches * recipe.train.batch_size
    val = read("val")[: n_blocks * T + 1]
    blocks = np.stack([val[i * T : i * T + T + 1] for i in range(n_blocks)])
    inputs, targets = torch.from_numpy(blocks[:, :-1]), torch.from_numpy(blocks[:, 1:])

    model = load_hf_folder(run_dir / "ckpt" / "step-000012")
    with torch.no_grad():
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).item()
    assert report["model"]["tokens"] == targets.numel()
    assert math.isclose(report["model"]["loss"], loss, rel_tol=1e-5)
    assert report["model"]["loss"] < math.log(manifest["tokenizer"]["vocab_size"])  # better than uniform

    vocab = model.config.vocab_size
    counts = np.bincount(read("train"), minlength=vocab)
    unigram = -np.mean(np.log((counts[targets.numpy().ravel()] + 1) / (counts.sum() + vocab)))
    assert math.isclose(report["unigram"]["loss"], unigram, rel_tol=1e-9)

    bytes_per_token = manifest["splits"]["val"]["bytes"] / manifest["splits"]["val"]["tokens"]
    for name in ("model", "unigram"):
        expected = report[name]["loss"] / math.log(2) / bytes_per_token
        assert math.isclose(report[name]["bpb"], expected, rel_tol=1e-9)

    # the trainer's own val loss at the last step used the same batches
    last_val = [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val_loss" in e][-1]
    assert last_val["step"] == 12 and math.isclose(last_val["val_loss"], report["model"]["loss"], rel_tol=1e-5)

    table = format_table(report)
    assert "model" in table and "unigram" in table and f"{report['unigram']['loss']:.4f}" in table


def test_eval_goes_stale_when_settings_change(trained):
    recipe, run_dir = trained
    evaluate_run(recipe, run_dir, progress=False)
    recipe.train.eval_batches += 1
    try:
        assert not eval_is_current(recipe, run_dir)
    finally:
        recipe.train.eval_batches -= 1


def test_eval_without_checkpoint_is_a_clear_error(tmp_path):
    recipe = load_recipe(TINY)
    with pytest.raises(SlmError, match="no checkpoint yet"):
        evaluate_run(recipe, tmp_path, progress=False)
