"""`slm model info`: exact counts as JSON, a readable table, and clear errors."""

from __future__ import annotations

import json

import pytest

from slmkit.cli import main


def info_json(capsys, *args: str) -> dict:
    assert main(["model", "info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name, params", [("phi-1_5", 1_418_270_720), ("llama-7b", 6_738_415_616)])
def test_info_json_has_exact_params(capsys, name, params):
    out = info_json(capsys, name)
    assert out["params"] == params
    for key in ("params_non_embedding", "flops_per_token_forward", "flops_per_token_training", "memory", "config"):
        assert key in out
    assert out["flops_per_token_training"] == 3 * out["flops_per_token_forward"]
    assert out["memory"]["bf16"]["weights"] == 2 * params


def test_info_overrides_and_seq_len(capsys):
    base = info_json(capsys, "tiny-llama")
    small = info_json(capsys, "tiny-llama", "n_layers=3", "--seq-len", "256")
    assert small["config"]["n_layers"] == 3 and small["params"] < base["params"]
    assert small["seq_len"] == 256


def test_info_table_is_readable(capsys):
    assert main(["model", "info", "llama-13b"]) == 0
    out = capsys.readouterr().out
    assert "13,015,864,320" in out and "FLOPs/token train" in out and "bf16" in out


def test_info_reads_an_hf_folder(capsys, tmp_path):
    from slmkit.interop.hf import save_hf_folder
    from slmkit.models import build_model, get_preset

    save_hf_folder(build_model(get_preset("tiny-phi").replace(n_layers=1)), tmp_path)
    out = info_json(capsys, str(tmp_path))
    assert out["config"]["family"] == "phi" and out["config"]["n_layers"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["lama-7b"], "did you mean 'llama-7b'"),
        (["tiny-llama", "n_head=4"], "did you mean 'n_heads'"),
        (["tiny-llama", "n_heads=5"], "divisible"),
    ],
)
def test_info_bad_input_exits_2(capsys, args, message):
    assert main(["model", "info", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
