"""`slm quantize`: int8 / int4 weight-only layers (numerics, storage), the CLI on a trained tiny run and on
SmolLM2-135M-Instruct, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slmkit.cli import main as slm_main
from slmkit.config import load_recipe
from slmkit.interop.hf import load_hf_folder
from slmkit.models.quantized import QuantizedLinear, pack_int4, quantize_weight, unpack_int4
from slmkit.pipeline.rundir import open_run_dir
from slmkit.pipeline.stages import run_stages

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Path(__file__).parent / "fixtures" / "tiny-pretrain.yaml"
CASES = [(8, None, True), (8, None, False), (8, 64, False), (4, 32, True), (4, 64, False), (4, 128, False),
         (4, 64, True)]


def slm(*argv) -> int:
    return slm_main([str(a) for a in argv])


@pytest.mark.parametrize("bits,group,symmetric", CASES)
def test_quantize_weight_error_is_within_half_a_step(bits, group, symmetric):
    torch.manual_seed(0)
    w = torch.randn(40, 256)
    q, scales, zeros = quantize_weight(w, bits, group, symmetric)
    assert q.dtype == torch.int8 and q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    layer = QuantizedLinear.from_linear(torch.nn.Linear(256, 40), bits, group, symmetric)
    layer.qweight.copy_(q if bits == 8 else pack_int4(q))
    layer.scales.copy_(scales)
    if zeros is not None:
        layer.zeros.copy_(zeros)
    assert scales.dtype == torch.bfloat16  # the kernels' dtype: q is rounded against these very values
    step = scales.float().repeat_interleave(group or 256, dim=1)
    slack = 1e-6 if zeros is None else zeros.float().abs().repeat_interleave(group or 256, dim=1) * 2**-8
    assert ((layer.dequantized() - w).abs() <= step / 2 + slack).all()


def test_int4_packing_round_trips():
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 32)
    assert torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("bits,group,symmetric", CASES)
@pytest.mark.parametrize("out_features", [96, 100])
def test_kernels_match_the_dequantized_weight(bits, group, symmetric, out_features):
    torch.manual_seed(1)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(256, out_features), bits, group, symmetric)
    x = torch.randn(3, 5, 256)
    expected_kernel = {8: "int8-cpu" if group is None else "dequantize", 4: "int4-cpu"}[bits]
    assert layer.kernel_name(x.device) == expected_kernel
    with torch.inference_mode():  # the kernel layout is built from inference tensors too
        y = layer(x)
    # The CPU kernels take bf16 activations: the reference sees the same rounded input.
    ref = F.linear(x.bfloat16().float() if expected_kernel != "dequantize" else x, layer.dequantized(), layer.bias)
    assert y.shape == (3, 5, out_features) and y.dtype == torch.float32
    assert (y - ref).abs().max() <= 2e-2 * ref.abs().max()


def test_dequantize_fallback_equals_the_kernel_path(monkeypatch):
    torch.manual_seed(2)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(128, 64), 4, 64, False)
    x = torch.randn(2, 128)
    kernel = layer(x)
    monkeypatch.setattr(QuantizedLinear, "kernel_name", lambda self, device: "dequantize")
    fallback = layer(x)  # the path CUDA takes
    assert (kernel - fallback).abs().max() <= 2e-2 * fallback.abs().max()


# ---------------------------------------------------------------------------- the CLI on a trained tiny run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    recipe = load_recipe(TINY, ["stages=[tokenizer,data,train]", "train.max_steps=30", "train.save_every=30",
                                "train.eval_every=30", "model.n_heads=4", "model.n_kv_heads=2"])
    run_dir = open_run_dir(tmp_path_factory.mktemp("quant") / "tiny", recipe)
    run_stages(recipe, run_dir, log=lambda _: None)
    return run_dir


@pytest.mark.parametrize("flags", [["--bits", "8"], ["--bits", "4", "--group-size", "64"],
                                   ["--bits", "4", "--group-size", "32", "--symmetric"]])
def test_cli_quantizes_a_run_checkpoint_and_measures_it(flags, run, tmp_path, capsys):
    out = tmp_path / "q"
    assert slm("quantize", run.root, *flags, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "size" in printed and "ppl" in printed and "val split" in printed
    report = json.loads((out / "quantization.json").read_text())
    assert report["bytes_after"] < 0.5 * report["bytes_before"]
    assert abs(report["ppl_delta_pct"]) < 5
    assert json.loads((out / "config.json").read_text())["slmkit"]["quantization"]["bits"] == int(flags[1])
    assert not (run.root / "eval" / "val.json").exists()  # the run's own eval results are left alone

    model = load_hf_folder(out)
    modules = json.loads((out / "config.json").read_text())["slmkit"]["quantization"]["modules"]
    assert "lm_head" in modules and all(isinstance(model.get_submodule(name), QuantizedLinear) for name in modules)
    ids = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = model(ids)
        cache = model.new_cache(2, 32)
        steps = [model(ids[:, :12], kv_cache=cache)[:, -1]]
        for t in range(12, 20):
            steps.append(model(ids[:, t:t + 1], kv_cache=cache, start_pos=t)[:, -1])
    cached = torch.stack(steps[:-1], 1).float()
    assert (cached - full[:, 11:19].float()).abs().max() <= 0.02 * full.float().abs().max()
    assert (cached.argmax(-1) == full[:, 11:19].argmax(-1)).float().mean() >= 0.9

    assert slm("generate", out, "--prompt", "def add(a, b):", "--temperature", "0", "--max-new-tokens", "8") == 0
    assert capsys.readouterr().out.startswith("def add(a, b):")


def test_refusals_write_nothing(run, tmp_path, capsys):
    def refused(*argv) -> str:
        assert slm(*argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("error: ")
        return lines[-1]

    ckpt = run.latest_checkpoint()
    assert "is not one of 8, 4" in refused("quantize", ckpt, "--bits", "3", "--out", tmp_path / "a")
    assert "did you mean '64'" in refused("quantize", ckpt, "--bits", "4", "--group-size", "63", "--out", tmp_path / "a")
    (tmp_path / "empty").mkdir()
    assert "not a checkpoint folder" in refused("quantize", tmp_path / "empty", "--bits", "8", "--out", tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert "--force" in refused("quantize", ckpt, "--bits", "8", "--out", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]
    assert slm("quantize", ckpt, "--bits", "8", "--no-eval", "--out", tmp_path / "q8") == 0
    assert "already quantized" in refused("quantize", tmp_path / "q8", "--bits", "4", "--out", tmp_path / "b")
    assert "quantized checkpoint" in refused("export", tmp_path / "q8", "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert "quantized checkpoint" in refused("run", TINY, "--out", tmp_path / "ft", f"train.init_from={tmp_path / 'q8'}")


def test_nan_weights_are_refused(run, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(run.latest_checkpoint(), folder)
    state = load_file(folder / "model.safetensors")
    state["model.layers.0.self_attn.o_proj.weight"][1, 2] = float("inf")
    save_file(state, folder / "model.safetensors")
    assert slm("quantize", folder, "--bits", "8", "--no-eval", "--out", tmp_path / "q") == 2
    assert "layers.0.attn.o_proj holds NaN or infinite" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_quantized_folder_counts_its_parameters_and_transformers_refuses_it(run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "q4"
    assert slm("quantize", run.root, "--bits", "4", "--no-eval", "--out", out) == 0
    assert load_hf_folder(out).num_params() == load_hf_folder(run.latest_checkpoint()).num_params()
    with pytest.raises((ValueError, KeyError, OSError)):
        AutoModelForCausalLM.from_pretrained(out)


# ---------------------------------------------------------------------------- SmolLM2-135M-Instruct


@pytest.mark.slow
def test_smollm2_int8_keeps_its_predictions(tmp_path, capsys):
    from slmkit.interop.gguf import smollm2_gguf_path

    folder, out = tmp_path / "smollm2", tmp_path / "smol8"
    assert slm("import", smollm2_gguf_path(), "--out", folder) == 0
    assert slm("quantize", folder, "--bits", "8", "--out", out, "--limit", "4") == 0
    report = json.loads((out / "quantization.json").read_text())
    assert report["scored_on"].startswith("ppl:python-docs") and abs(report["ppl_delta_pct"]) < 1.0
    assert report["bytes_after"] < 0.5 * report["bytes_before"]
    ours, quantized = load_hf_folder(folder), load_hf_folder(out)
    from slmkit.tokenizer import load_tokenizer

    ids = torch.tensor([load_tokenizer(folder / "tokenizer.json").encode(
        "The capital of France is Paris. def fibonacci(n):\n    if n < 2:\n        return n\n").ids])
    with torch.inference_mode():
        agree = (ours(ids).argmax(-1) == quantized(ids).argmax(-1)).float().mean().item()
    assert agree >= 0.9
