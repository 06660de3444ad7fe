"""BlockLoader: block layout across shards, seeded epochs, rank split, exact resume, eval batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slmkit.data.loader import BlockLoader, iter_eval_batches, read_manifest
from slmkit.data.shards import ShardWriter, TokenStream, shard_problems
from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_json

T = 8


def make_data(folder, n_tokens: int = 1000, shard_tokens: int = 300, val_tokens: int = 100) -> None:
    """A data folder whose token at stream position p is p (so every block is checkable)."""
    splits = {}
    for split, n in (("train", n_tokens), ("val", val_tokens)):
        with ShardWriter(folder, split, shard_tokens, "uint16") as writer:
            for start in range(0, n, 77):  # odd write sizes cross shard boundaries
                writer.write(np.arange(start, min(n, start + 77)))
            splits[split] = {"tokens": n, "shards": writer.close()}
    atomic_write_json(folder / "manifest.json", {"version": 1, "dtype": "uint16", "splits": splits})


@pytest.fixture
def data(tmp_path):
    make_data(tmp_path)
    return tmp_path


def test_shards_split_and_verify(data):
    manifest = read_manifest(data)
    shards = manifest["splits"]["train"]["shards"]
    assert [s["tokens"] for s in shards] == [300, 300, 300, 100]
    assert shard_problems(data, shards, "uint16") == []
    stream = TokenStream(data, shards, "uint16")
    assert len(stream) == 1000 and stream.read(295, 10).tolist() == list(range(295, 305))
    with (data / shards[1]["path"]).open("r+b") as f:
        f.truncate(10)
    assert shard_problems(data, shards, "uint16") == ["train-00001.bin truncated (10 bytes, expected 600)"]


def test_blocks_are_shifted_windows(data):
    loader = BlockLoader(data, "train", seq_len=T, batch_size=4, seed=0)
    assert loader.n_blocks == (1000 - 1) // T and loader.tokens_per_batch == 4 * T
    batch = loader.next_batch()
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.long
    for row_x, row_y in zip(x, y):
        start = int(row_x[0])
        assert start % T == 0
        assert row_x.tolist() == list(range(start, start + T))
        assert row_y.tolist() == list(range(start + 1, start + T + 1))


def test_each_epoch_visits_every_block_once_in_a_seeded_order(data):
    def first_tokens(seed, batches):
        loader = BlockLoader(data, "train", T, 3, seed)
        return [int(v) // T for _ in range(batches) for v in loader.next_batch()["input_ids"][:, 0]]

    n = (1000 - 1) // T  # 124 blocks; 3 * 83 = 249 entries = 2 epochs + 1
    order = first_tokens(5, 83)
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n : 2 * n]) == list(range(n))
    assert order[:n] != order[n : 2 * n]  # a new permutation per epoch
    assert order == first_tokens(5, 83) and order != first_tokens(6, 83)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_concatenate_to_the_single_process_batch(data, world_size):
    per_rank = 3
    ranks = [BlockLoader(data, "train", T, per_rank, 11, rank=r, world_size=world_size) for r in range(world_size)]
    single = BlockLoader(data, "train", T, per_rank * world_size, 11)
    for _ in range(60):  # crosses epoch boundaries
        combined = torch.cat([r.next_batch()["input_ids"] for r in ranks])
        assert torch.equal(combined, single.next_batch()["input_ids"])


def test_resume_restores_the_exact_position(data):
    loader = BlockLoader(data, "train", T, 5, 3)
    for _ in range(30):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [loader.next_batch()["input_ids"] for _ in range(40)]
    resumed = BlockLoader(data, "train", T, 5, 3)
    resumed.load_state_dict(state)
    assert state["epoch"] == 1 and resumed.state_dict() == state
    assert all(torch.equal(a, resumed.next_batch()["input_ids"]) for a in expected)
    with pytest.raises(SlmError, match="seq_len"):
        BlockLoader(data, "train", T * 2, 5, 3).load_state_dict(state)


def test_eval_batches_are_sequential_and_limited(data):
    batches = list(iter_eval_batches(data, "val", T, 4, None))
    n = (100 - 1) // T  # 12 blocks -> 3 batches of 4
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 4]
    firsts = torch.cat([b["input_ids"][:, 0] for b in batches]).tolist()
    assert firsts == [i * T for i in range(n)]
    assert len(list(iter_eval_batches(data, "val", T, 5, None))[-1]["labels"]) == 2  # partial last batch
    assert len(list(iter_eval_batches(data, "val", T, 2, max_batches=2))) == 2
    again = list(iter_eval_batches(data, "val", T, 4, None))
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(batches, again))


def test_clear_errors(tmp_path, data):
    with pytest.raises(SlmError, match="no data manifest"):
        BlockLoader(tmp_path / "none", "train", T, 2, 0)
    with pytest.raises(SlmError, match="fewer than seq_len"):
        BlockLoader(data, "val", 200, 2, 0)
    with pytest.raises(SlmError, match="unknown split 'test'"):
        list(iter_eval_batches(data, "test", T, 2, None))
