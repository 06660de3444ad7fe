"""Text generation: stop strings, streaming, seeds, eos, batching, errors, `slm generate`, HF tokenizer."""

from __future__ import annotations

import itertools

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from slmkit.cli import main
from slmkit.errors import SlmError
from slmkit.generate import generate
from slmkit.interop.hf import save_hf_folder
from slmkit.models import build_model, get_preset

SPECIALS = ["<|endoftext|>", "<|pad|>"]
PROMPTS = ["find . -name", "ls -la | grep", "tar -xzf archive.tar.gz -C /tmp && cd"]


@pytest.fixture(scope="module")
def tokenizer(datasets, tmp_path_factory):
    """A 400-token byte-level BPE trained on the first 3000 NL2Bash commands (real data, ~1 s)."""
    path = datasets / "nl2bash" / "all.cm"
    lines = list(itertools.islice(path.open(encoding="utf-8"), 3000))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer)
    file = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(file))
    return tok, file


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = get_preset("tiny-llama").replace(n_layers=2, d_model=128, n_heads=4, vocab_size=400, max_seq_len=128)
    return build_model(cfg).eval()


def test_greedy_is_deterministic_and_batch_independent(model, tokenizer):
    tok, _ = tokenizer
    batched = generate(model, tok, PROMPTS, 20, temperature=0)
    alone = [generate(model, tok, [p], 20, temperature=0)[0] for p in PROMPTS]
    assert batched == alone
    assert all(len(c) > 0 for c in batched)


def test_stop_string_truncates_and_stream_matches(model, tokenizer):
    tok, _ = tokenizer
    full = generate(model, tok, PROMPTS[:1], 30, temperature=0)[0]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    pieces: list[str] = []
    out = generate(model, tok, PROMPTS[:1], 30, temperature=0, stop=[stop], stream=lambda row, d: pieces.append(d))
    assert out[0] == full[: full.find(stop)]
    assert "".join(pieces) == out[0]


def test_streaming_without_stop_covers_whole_completion(model, tokenizer):
    tok, _ = tokenizer
    rows: dict[int, str] = {}
    out = generate(model, tok, PROMPTS, 16, temperature=0.9, seed=3,
                   stream=lambda row, d: rows.__setitem__(row, rows.get(row, "") + d))
    assert [rows.get(i, "") for i in range(len(PROMPTS))] == out


def test_seeded_sampling_is_reproducible(model, tokenizer):
    tok, _ = tokenizer
    a = generate(model, tok, PROMPTS, 16, temperature=1.0, top_k=50, top_p=0.95, seed=1)
    b = generate(model, tok, PROMPTS, 16, temperature=1.0, top_k=50, top_p=0.95, seed=1)
    c = generate(model, tok, PROMPTS, 16, temperature=1.0, top_k=50, top_p=0.95, seed=2)
    assert a == b and a != c
    greedy = generate(model, tok, PROMPTS, 16, temperature=0)
    assert generate(model, tok, PROMPTS, 16, temperature=1.0, top_k=1, seed=5) == greedy


def test_eos_ends_generation(tokenizer):
    tok, _ = tokenizer
    torch.manual_seed(0)
    phi = build_model(get_preset("tiny-phi").replace(n_layers=1, d_model=128, n_heads=2, vocab_size=400)).eval()
    with torch.no_grad():
        phi.lm_head.bias[tok.token_to_id("<|endoftext|>")] = 100.0
    assert generate(phi, tok, PROMPTS[:2], 10, temperature=0) == ["", ""]


def test_prompt_longer_than_context_is_refused(model, tokenizer):
    tok, _ = tokenizer
    with pytest.raises(SlmError, match="does not fit the model context of 128"):
        generate(model, tok, ["ls -la " * 200], 4, temperature=0)
    with pytest.raises(SlmError, match="top-p"):
        generate(model, tok, PROMPTS[:1], 4, top_p=1.5)


def test_cli_generate_streams_completion(model, tokenizer, tmp_path, capsys):
    tok, file = tokenizer
    ckpt = tmp_path / "run" / "ckpt" / "step-000010"
    save_hf_folder(model, ckpt, tokenizer_file=file)
    (tmp_path / "run" / "ckpt" / "latest").write_text("step-000010\n")
    expected = generate(model, tok, PROMPTS[:1], 12, temperature=0)[0]
    code = main(["generate", str(tmp_path / "run"), "--prompt", PROMPTS[0], "--temperature", "0",
                 "--max-new-tokens", "12"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == PROMPTS[0] + expected + "\n"
    assert "tok/s" in captured.err
    long = main(["generate", str(ckpt), "--prompt", "ls -la " * 200])
    assert long == 2 and "does not fit" in capsys.readouterr().err


def test_hf_folder_tokenizer_and_generate_match_transformers(model, tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok, file = tokenizer
    save_hf_folder(model, tmp_path, tokenizer_file=file)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.pad_token == "<|pad|>"
    assert hf_tok(PROMPTS[0])["input_ids"] == tok.encode(PROMPTS[0]).ids
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    enc = hf_tok(PROMPTS[0], return_tensors="pt")
    ref = hf.generate(**enc, max_new_tokens=20, do_sample=False)
    expected = hf_tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert generate(model, tok, PROMPTS[:1], 20, temperature=0)[0] == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_decode_layout_gives_the_same_greedy_tokens_and_restores_layers(dtype):
    """The oneDNN packed-weight decode path must not change greedy output, and must undo itself."""
    import slmkit.generate.engine as gen

    cfg = get_preset("tiny-llama").replace(vocab_size=300, d_model=64, n_layers=2, n_heads=4, max_seq_len=128)
    torch.manual_seed(0)
    net = build_model(cfg).to(dtype).eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    packed = gen.generate_tokens(net, prompts, 24, gen.SamplingConfig(temperature=0.0), pad_id=1)
    original = gen.decode_layout
    try:
        gen.decode_layout = lambda model: __import__("contextlib").nullcontext()
        plain = gen.generate_tokens(net, prompts, 24, gen.SamplingConfig(temperature=0.0), pad_id=1)
    finally:
        gen.decode_layout = original
    assert packed == plain
    assert all("forward" not in vars(m) for m in net.modules() if isinstance(m, torch.nn.Linear))
