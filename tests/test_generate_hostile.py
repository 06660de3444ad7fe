"""`slm generate` against hostile input: every bad option or damaged checkpoint is one `error:` line, exit 2.

Options are checked before anything loads or is printed; damaged files are named in the message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import slmkit.interop.hf
from slmkit.cli import main
from slmkit.commands.generate import parse_device
from slmkit.errors import SlmError
from slmkit.interop.hf import save_hf_folder
from slmkit.models import build_model, get_preset

PROMPT = "find . -name"
LINES = ["find . -name '*.py' | xargs grep -n import", "ls -la /tmp | grep log", "tar -xzf a.tar.gz -C /tmp",
         "cd /var/log && tail -n 20 syslog", "echo hello world > out.txt"] * 20
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny llama checkpoint folder with a 300-token byte-level BPE (built once, < 1 s)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(LINES, trainer)
    tok_file = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(tok_file))
    torch.manual_seed(0)
    cfg = get_preset("tiny-llama").replace(n_layers=1, d_model=64, n_heads=2, vocab_size=300, max_seq_len=64)
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    save_hf_folder(build_model(cfg).eval(), folder, tokenizer_file=tok_file)
    return folder


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if the model is loaded at all."""
    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(slmkit.interop.hf, "load_hf_folder", boom)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *names: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------- options

OPTION_CASES = {
    "temperature-nan": (["--temperature", "nan"], ["--temperature", "finite"]),
    "temperature-inf": (["--temperature", "inf"], ["--temperature", "finite"]),
    "temperature-minus-inf": (["--temperature=-inf"], ["--temperature", "finite"]),
    "temperature-negative": (["--temperature", "-1"], ["--temperature", ">= 0"]),
    "temperature-subnormal": (["--temperature", "1e-300"], ["--temperature", "greedy"]),
    "top-p-2": (["--top-p", "2"], ["--top-p", "(0, 1]"]),
    "top-p-0": (["--top-p", "0"], ["--top-p", "(0, 1]"]),
    "top-p-nan": (["--top-p", "nan"], ["--top-p", "nan"]),
    "top-p-inf": (["--top-p", "inf"], ["--top-p"]),
    "top-k-0": (["--top-k", "0"], ["--top-k", ">= 1"]),
    "top-k-negative": (["--top-k", "-3"], ["--top-k", ">= 1"]),
    "max-new-tokens-0": (["--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"]),
    "max-new-tokens-negative": (["--max-new-tokens", "-5"], ["--max-new-tokens", ">= 1"]),
    "seed-negative": (["--seed", "-1"], ["--seed", "2**64"]),
    "seed-huge": (["--seed", str(2**64)], ["--seed", "2**64"]),
    "device-tpu": (["--device", "tpu"], ["--device", "'tpu'", "auto, cpu, cuda, cuda:N"]),
    "device-cuda-x": (["--device", "cuda:x"], ["--device", "'cuda:x'", "did you mean"]),
    "device-uppercase": (["--device", "CPU"], ["--device", "did you mean 'cpu'"]),
    "device-empty": (["--device", ""], ["--device", "auto, cpu, cuda, cuda:N"]),
    "device-cuda-index-too-big": (["--device", "cuda:99"], ["--device cuda:99"]),
    "prompt-not-utf8": (["--prompt", "ls \udcff"], ["--prompt", "UTF-8"]),
    "stop-not-utf8": (["--stop", "\udcfe"], ["--stop", "UTF-8"]),
}
if not HAS_CUDA:
    OPTION_CASES["device-cuda-without-gpu"] = (["--device", "cuda"], ["--device cuda", "no CUDA device"])


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_option_is_refused_before_loading_or_echoing(case, ckpt, capsys, no_load):
    args, names = OPTION_CASES[case]
    code, out, err = run_cli(capsys, str(ckpt), "--prompt", PROMPT, *args)
    assert_one_line_error(code, err, *names)
    assert out == ""  # the prompt was not echoed


def test_options_are_checked_before_the_checkpoint_path(tmp_path, capsys, no_load):
    code, out, err = run_cli(capsys, str(tmp_path / "missing"), "--prompt", PROMPT, "--top-p", "2")
    assert_one_line_error(code, err, "--top-p")
    assert out == ""


def test_parse_device(monkeypatch):
    assert parse_device("cpu") == "cpu"
    assert parse_device("auto") == ("cuda" if HAS_CUDA else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("auto") == "cuda"
    assert parse_device("cuda") == "cuda"
    assert parse_device("cuda:1") == "cuda:1"
    assert parse_device("cuda:01") == "cuda:1"
    with pytest.raises(SlmError, match=r"--device cuda:2: only 2 CUDA device\(s\)"):
        parse_device("cuda:2")
    for bad in ("mps", "cuda:", "cuda:-1", "gpu", " cpu"):
        with pytest.raises(SlmError, match="--device"):
            parse_device(bad)


def test_empty_prompt_samples_from_end_of_text(ckpt, capsys):
    """An empty prompt is valid (unconditional sampling starts from <|endoftext|>); it must not crash."""
    code, out, err = run_cli(capsys, str(ckpt), "--prompt", "", "--temperature", "0", "--max-new-tokens", "4")
    assert code == 0 and "Traceback" not in err and "tok/s" in err
    assert out.endswith("\n")


def test_prompt_longer_than_context_is_refused_before_echo(ckpt, capsys):
    code, out, err = run_cli(capsys, str(ckpt), "--prompt", "ls -la " * 100)
    assert_one_line_error(code, err, "--prompt", "does not fit the model context of 64")
    assert out == ""


# ---------------------------------------------------------------------------- damaged checkpoints


def _config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def _weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _sharded(folder: Path, index: str, shard: bool = True) -> None:
    if shard:
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    else:
        (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(index)


def _big_tokenizer(folder: Path) -> None:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens([f"<extra{i}>" for i in range(100)])
    tok.save(str(folder / "tokenizer.json"))


DAMAGE_CASES = {
    "safetensors-truncated": (_truncate, ["model.safetensors", "damaged"]),
    "safetensors-garbage": (lambda f: (f / "model.safetensors").write_bytes(b"not a tensor file " * 50),
                            ["model.safetensors"]),
    "safetensors-empty": (lambda f: (f / "model.safetensors").write_bytes(b""), ["model.safetensors"]),
    "safetensors-missing": (lambda f: (f / "model.safetensors").unlink(), ["no model.safetensors"]),
    "index-not-json": (lambda f: _sharded(f, "{", shard=False), ["model.safetensors.index.json"]),
    "index-no-weight-map": (lambda f: _sharded(f, "{}"), ["model.safetensors.index.json", "weight_map"]),
    "index-bad-names": (lambda f: _sharded(f, '{"weight_map": {"a": 1}}'), ["model.safetensors.index.json"]),
    "index-missing-shard": (lambda f: _sharded(f, json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})),
                            ["model-00002-of-00002.safetensors"]),
    "config-not-object": (lambda f: (f / "config.json").write_text("[1, 2]"), ["config.json", "JSON object"]),
    "config-not-json": (lambda f: (f / "config.json").write_text("{oops"), ["config.json", "malformed JSON"]),
    "config-binary": (lambda f: (f / "config.json").write_bytes(b"\xff\xfe\x00garbage"), ["config.json"]),
    "config-hidden-size-string": (lambda f: _config(f, hidden_size="64"), ["config.json", "'hidden_size'"]),
    "config-hidden-size-null": (lambda f: _config(f, hidden_size=None), ["config.json", "'hidden_size'"]),
    "config-heads-zero": (lambda f: _config(f, num_attention_heads=0), ["config.json", "'num_attention_heads'"]),
    "config-layers-float": (lambda f: _config(f, num_hidden_layers=1.5), ["config.json", "'num_hidden_layers'"]),
    "config-missing-layers": (lambda f: _config(f, num_hidden_layers=...), ["config.json", "num_hidden_layers"]),
    "config-missing-vocab": (lambda f: _config(f, vocab_size=...), ["config.json", "vocab_size"]),
    "config-rope-not-object": (lambda f: _config(f, rope_parameters="x"), ["config.json", "'rope_parameters'"]),
    "config-rope-theta-nan": (lambda f: _config(f, rope_theta=float("nan"), rope_parameters=None),
                              ["config.json", "'rope_theta'"]),
    "config-eps-string": (lambda f: _config(f, rms_norm_eps="small"), ["config.json", "'rms_norm_eps'"]),
    "config-architectures-string": (lambda f: _config(f, architectures="LlamaForCausalLM"),
                                    ["config.json", "'architectures'"]),
    "config-bias-string": (lambda f: _config(f, attention_bias="no"), ["config.json", "'attention_bias'"]),
    "config-kv-heads-not-dividing": (lambda f: _config(f, num_key_value_heads=3), ["config.json", "n_kv_heads"]),
    "config-more-layers-than-weights": (lambda f: _config(f, num_hidden_layers=3), ["says 3 layer(s)"]),
    "config-vocab-mismatch": (lambda f: _config(f, vocab_size=500), ["tensor shapes do not match", "(500, 64)"]),
    "config-ffn-mismatch": (lambda f: _config(f, intermediate_size=100), ["tensor shapes do not match"]),
    "weights-missing-tensor": (lambda f: _weights(f, lambda s: s.pop("model.norm.weight")),
                               ["'model.norm.weight' is missing"]),
    "weights-extra-layer": (lambda f: _weights(f, lambda s: s.update({"model.layers.7.mlp.up_proj.weight":
                                                                      torch.zeros(2, 2)})),
                            ["says 1 layer(s)", "layers 0..7"]),
    "weights-misshaped-q": (lambda f: _weights(f, lambda s: s.update({"model.layers.0.self_attn.q_proj.weight":
                                                                      torch.zeros(64, 7)})),
                            ["mismatched shapes", "q_proj"]),
    "weights-misshaped-norm": (lambda f: _weights(f, lambda s: s.update({"model.norm.weight": torch.zeros(3)})),
                               ["tensor shapes do not match", "norm.weight (3,)"]),
    "weights-scalar-norm": (lambda f: _weights(f, lambda s: s.update({"model.norm.weight": torch.tensor(1.0)})),
                            ["tensor shapes do not match"]),
    "tokenizer-missing": (lambda f: (f / "tokenizer.json").unlink(), ["no tokenizer.json"]),
    "tokenizer-garbage": (lambda f: (f / "tokenizer.json").write_text("{not json"), ["tokenizer.json"]),
    "tokenizer-wrong-json": (lambda f: (f / "tokenizer.json").write_text('{"model": 3}'), ["tokenizer.json"]),
    "tokenizer-larger-than-model": (_big_tokenizer, ["tokenizer.json", "does not belong"]),
}


@pytest.mark.parametrize("case", list(DAMAGE_CASES))
def test_damaged_checkpoint_is_one_error_line_naming_the_file(case, ckpt, tmp_path, capsys):
    damage, names = DAMAGE_CASES[case]
    folder = shutil.copytree(ckpt, tmp_path / "ckpt")
    damage(folder)
    code, out, err = run_cli(capsys, str(folder), "--prompt", PROMPT, "--max-new-tokens", "2")
    line = assert_one_line_error(code, err, *names)
    assert str(folder) in line
    assert out == ""  # nothing echoed when loading fails


def test_unknown_extra_tensors_are_ignored(ckpt, tmp_path, capsys):
    """Tensors we do not use (e.g. rotary inv_freq buffers of older HF folders) do not stop loading."""
    folder = shutil.copytree(ckpt, tmp_path / "ckpt")
    _weights(folder, lambda s: s.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(16)}))
    code, out, err = run_cli(capsys, str(folder), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "2")
    assert code == 0 and out.startswith(PROMPT), err


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_checkpoint_path_that_is_not_a_folder(kind, tmp_path, capsys):
    path = tmp_path / "ckpt"
    if kind == "file":
        path.write_text("hello")
    code, out, err = run_cli(capsys, str(path), "--prompt", PROMPT)
    assert_one_line_error(code, err, str(path), "not a checkpoint folder")
    assert out == ""
