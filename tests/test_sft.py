"""SFT data: phi-1.5 templates (python == jinja via transformers), response-only labels, packing,
resumable loader, and clear errors for bad jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slmkit.config import recipe_from_dict
from slmkit.data import sft
from slmkit.errors import SlmError
from slmkit.tokenizer import PAD

FIXTURES = Path(__file__).parent / "fixtures"
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Add one to x.\n"},  # ends with a newline: code adds none
    {"role": "assistant", "content": "x + 1"},
    {"role": "user", "content": 'def f(x):\n    """Add one, \'quoted\' \\ backslash."""'},
    {"role": "assistant", "content": "    return x + 1\n"},
]


@pytest.fixture(scope="module")
def tokenizer(datasets):
    """A small byte-level BPE (HF tokenizers) trained on GSM8K text, with the EOT/pad specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=[sft.EOT, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    with open(datasets / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for _, line in zip(range(500), f)]
    tok.train_from_iterator([r["question"] + "\n" + r["answer"] for r in records], trainer)
    return tok


def gsm8k_recipe(datasets, **sft_keys) -> object:
    keys = {"path": str(datasets / "gsm8k" / "test.jsonl"), "prompt_field": "question", "response_field": "answer"}
    keys.update(sft_keys)
    return recipe_from_dict({"task": "sft", "data": {"seq_len": 256, "val_fraction": 0.05}, "sft": keys})


# --------------------------------------------------------------------------- templates


@pytest.mark.parametrize("name", list(sft.TEMPLATES))
@pytest.mark.parametrize("upto", [2, 3, 5])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_jinja_template_matches_python_rendering(tokenizer, name, upto, generation_prompt):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=sft.chat_template(name), eos_token=sft.EOT)
    messages = CONVERSATION[:upto]
    ours = sft.render(name, messages, add_generation_prompt=generation_prompt)
    theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert theirs == ours


def test_phi_formats():
    assert sft.format_prompt("qa", "What is 2+2?") == "Question: What is 2+2?\nAnswer:"
    assert sft.format_prompt("chat", "Hi") == "Alice: Hi\nBob:"
    assert sft.format_prompt("code", 'def f():\n    """Doc."""') == 'def f():\n    """Doc."""\n'
    pair = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert sft.render("qa", pair) == "Question: Q\nAnswer: A<|endoftext|>"
    assert sft.render("chat", pair + pair) == "Alice: Q\nBob: A<|endoftext|>\nAlice: Q\nBob: A<|endoftext|>"
    code = [{"role": "user", "content": "def f():\n"}, {"role": "assistant", "content": "    pass\n"}]
    assert sft.render("code", code) == "def f():\n    pass\n<|endoftext|>"


def test_unknown_template_names_the_key():
    with pytest.raises(SlmError, match=r"sft.template.*'chat'"):
        sft.chat_template("chta")


# --------------------------------------------------------------------------- masking


def trained_text(tokenizer, ex: sft.SFTExample) -> str:
    return tokenizer.decode(ex.ids[ex.trained].tolist(), skip_special_tokens=False)


def test_labels_cover_exactly_the_response_tokens_gsm8k(tokenizer, datasets):
    conversations = sft.read_sft_jsonl(datasets / "gsm8k" / "test.jsonl", "question", "answer")[:20]
    for messages in conversations:
        ex = sft.tokenize_conversation(tokenizer, "qa", messages)
        assert trained_text(tokenizer, ex) == " " + messages[1]["content"] + sft.EOT
        prompt = tokenizer.decode(ex.ids[~ex.trained].tolist(), skip_special_tokens=False)
        assert prompt == sft.format_prompt("qa", messages[0]["content"])
        assert ex.ids[-1] == tokenizer.token_to_id(sft.EOT) and ex.trained[-1]


def test_multi_turn_messages_train_only_bob(tokenizer):
    conversations = sft.read_sft_jsonl(FIXTURES / "sft_chat.jsonl")
    assert len(conversations) == 6  # the blank line is skipped
    ex = sft.tokenize_conversation(tokenizer, "chat", conversations[1])
    expected = " Use open(path) inside a with block.<|endoftext|> Call f.read().<|endoftext|>"
    assert trained_text(tokenizer, ex) == expected
    full = tokenizer.decode(ex.ids.tolist(), skip_special_tokens=False)
    assert full == sft.render("chat", conversations[1])


def test_code_template_trains_the_body(tokenizer):
    conversations = sft.read_sft_jsonl(FIXTURES / "sft_code.jsonl")
    ex = sft.tokenize_conversation(tokenizer, "code", conversations[0])
    assert trained_text(tokenizer, ex) == "    return a + b\n" + sft.EOT


def test_packed_batches_shift_labels_and_keep_every_response_token(tokenizer, datasets):
    recipe = gsm8k_recipe(datasets)
    batches = list(sft.iter_sft_eval_batches(recipe, tokenizer, batch_size=4, max_batches=None))
    examples, _ = sft._prepare(recipe, tokenizer, "val")
    expected = np.concatenate([ex.ids[1:][ex.trained[1:]] for ex in examples])
    got = []
    for batch in batches:
        ids, labels = batch["input_ids"], batch["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.shape[1] == 256
        # labels[t] is the token at t+1 (inside the row)
        inner = labels[:, :-1] != sft.IGNORE_INDEX
        assert torch.equal(labels[:, :-1][inner], ids[:, 1:][inner])
        got.append(labels[labels != sft.IGNORE_INDEX].numpy())
    assert np.array_equal(np.concatenate(got), expected)
    assert 0 < len(examples) < 1319  # a held-out share of the 1319 GSM8K test problems


def test_truncation_and_dropping(tokenizer, datasets):
    recipe = gsm8k_recipe(
        datasets, path=str(FIXTURES / "sft_code.jsonl"), prompt_field="prompt", response_field="response"
    )
    conversations = sft.read_sft_jsonl(FIXTURES / "sft_code.jsonl")
    examples, dropped = sft.tokenize_examples(tokenizer, "code", conversations, max_len=8)
    assert dropped == 3 and not examples  # prompts alone are longer than 8 tokens
    examples, dropped = sft.tokenize_examples(tokenizer, "code", conversations, max_len=30)
    assert all(len(ex.ids) <= 30 for ex in examples)
    recipe.data.seq_len = 7
    recipe.data.val_fraction = 0.0
    with pytest.raises(SlmError, match="data.seq_len"):
        sft.build_sft_loader(recipe, tokenizer, "train", 2, 0)


# --------------------------------------------------------------------------- loader


def take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def same(a, b) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("input_ids", "labels"))


def test_loader_is_deterministic_resumable_and_rank_sliced(tokenizer, datasets):
    recipe = gsm8k_recipe(datasets)
    loader = sft.build_sft_loader(recipe, tokenizer, "train", batch_size=4, seed=7)
    assert loader.tokens_per_batch == 4 * 256
    first = take(loader, 3)
    state = loader.state_dict()
    rest = take(loader, 2)
    again = sft.build_sft_loader(recipe, tokenizer, "train", batch_size=4, seed=7)
    assert same(first, take(again, 3))
    resumed = sft.build_sft_loader(recipe, tokenizer, "train", batch_size=4, seed=7)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert same(rest, take(resumed, 2))
    other_seed = sft.build_sft_loader(recipe, tokenizer, "train", batch_size=4, seed=8)
    assert not same(first, take(other_seed, 3))
    # two ranks of batch 2 together equal one rank of batch 4
    ranks = [sft.build_sft_loader(recipe, tokenizer, "train", 2, 7, rank=r, world_size=2) for r in (0, 1)]
    for whole in first:
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p["input_ids"] for p in parts]), whole["input_ids"])
        assert torch.equal(torch.cat([p["labels"] for p in parts]), whole["labels"])


def test_loader_wraps_epochs(tokenizer):
    recipe = recipe_from_dict(
        {"task": "sft", "data": {"seq_len": 64}, "sft": {"path": str(FIXTURES / "sft_chat.jsonl"), "template": "chat",
                                                       "val_path": str(FIXTURES / "sft_chat.jsonl")}}
    )
    loader = sft.build_sft_loader(recipe, tokenizer, "train", batch_size=4, seed=0)
    for _ in range(5):
        batch = loader.next_batch()
        assert batch["input_ids"].shape == (4, 64)
    assert loader.state_dict()["epoch"] >= 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": '], r"bad.jsonl:2: malformed JSON line"),
        (['{"prompt": "a", "answer": "b"}'], r"bad.jsonl:1: missing field 'response' .*sft.response_field"),
        (['{"prompt": "a", "response": 3}'], r"bad.jsonl:1: field 'response' must be a string"),
        (['["a", "b"]'], r"bad.jsonl:1: expected a JSON object"),
        (['{"messages": [{"role": "usr", "content": "a"}]}'], r"bad.jsonl:1: .*role 'usr'.*'user'"),
        (['{"messages": [{"role": "user", "content": "a"}]}'], r"bad.jsonl:1: .*no 'assistant'"),
        (['{"messages": [{"role": "user"}]}'], r"bad.jsonl:1: .*'role' and 'content'"),
        (["", "  "], r"bad.jsonl: no examples"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SlmError, match=message):
        sft.read_sft_jsonl(path)


def test_missing_sft_path_is_a_recipe_error(tokenizer):
    recipe = recipe_from_dict({"task": "sft", "sft": {"path": "no/such/file.jsonl"}})
    with pytest.raises(SlmError, match="'sft.path'.*not found"):
        sft.build_sft_loader(recipe, tokenizer, "train", 2, 0)
    with pytest.raises(SlmError, match="'sft.path' is required"):  # refused when the recipe loads
        recipe_from_dict({"task": "sft"})


def test_relative_path_resolves_in_shared_datasets(datasets):
    assert sft.resolve_sft_path("gsm8k/test.jsonl") == datasets / "gsm8k" / "test.jsonl"


def test_literal_eot_in_data_is_text_and_empty_response_still_ends(tokenizer):
    eot = tokenizer.token_to_id(sft.EOT)
    ex = sft.tokenize_conversation(
        tokenizer, "code", [{"role": "user", "content": "s = '<|endoftext|>'\n"}, {"role": "assistant", "content": ""}]
    )
    assert ex.ids.tolist().count(eot) == 1 and ex.ids[-1] == eot
    assert ex.trained.tolist() == [False] * (len(ex.ids) - 1) + [True]
