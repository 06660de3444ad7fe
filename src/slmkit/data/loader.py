"""Fixed-length training blocks from packed shards, deterministic by seed and resumable.

Block i of a split covers tokens [i*T, i*T + T + 1): input_ids = the first T, labels = the last T.
The block stream is endless: epoch e visits all blocks in the permutation seeded by (seed + e), and
entry k of the stream is perm_{k // n}[k % n]. A global batch is batch_size * world_size consecutive
entries; rank r takes rows [r*B, (r+1)*B). One process with batch_size = B*W therefore yields exactly
the concatenation of the W ranks' batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from slmkit.data.shards import TokenStream, shard_problems
from slmkit.errors import SlmError
from slmkit.pipeline.rundir import RunDir, read_manifest


def open_stream(data_dir: str | Path, split: str, verify: bool = False) -> TokenStream:
    """The concatenated tokens of one split; with `verify`, corrupt or missing shards are refused.

    Verification hashes each shard once and then trusts it while its size and modification time
    stay the same (see `shard_problems`), so it costs nothing on a resume.
    """
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise SlmError(f"unknown split {split!r}; the manifest has {', '.join(manifest['splits'])}")
    shards = manifest["splits"][split]["shards"]
    if verify:
        problems = shard_problems(data_dir, shards, manifest["dtype"])
        if problems:
            run = RunDir(Path(data_dir).parent)
            raise SlmError(
                f"{Path(data_dir) / problems[0]}; the {split} shards cannot be trusted. Rebuild them with "
                f"`slm data prepare {run.recipe} --out {run.root}`"
            )
    return TokenStream(data_dir, shards, manifest["dtype"])


def _num_blocks(stream: TokenStream, seq_len: int, split: str) -> int:
    n = (len(stream) - 1) // seq_len if len(stream) > 0 else 0
    if n <= 0:
        raise SlmError(
            f"split {split!r} has {len(stream)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
            "add data, lower data.seq_len or raise data.val_fraction"
        )
    return n


def _block_batch(stream: TokenStream, blocks: np.ndarray, seq_len: int) -> dict[str, torch.Tensor]:
    rows = np.stack([stream.read(int(b) * seq_len, seq_len + 1) for b in blocks])
    data = torch.from_numpy(rows)
    return {"input_ids": data[:, :-1].contiguous(), "labels": data[:, 1:].contiguous()}


class BlockLoader:
    """Endless, seeded, resumable batches of blocks for one rank of a (possibly distributed) run."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        verify: bool = False,
    ):
        if batch_size <= 0 or seq_len <= 0:
            raise SlmError(f"batch_size and seq_len must be > 0 (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.stream = open_stream(data_dir, split, verify=verify)
        self.n_blocks = _num_blocks(self.stream, seq_len, split)
        self.position = 0  # index of the next global-batch start in the endless block stream
        self._perm_epoch = -1
        self._perm = np.zeros(0, dtype=np.int64)

    @property
    def tokens_per_batch(self) -> int:
        """Tokens in one batch of this rank (batch_size * seq_len)."""
        return self.batch_size * self.seq_len

    @property
    def epoch(self) -> int:
        return self.position // self.n_blocks

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng(self.seed + epoch).permutation(self.n_blocks)
            self._perm_epoch = epoch
        return self._perm

    def _entries(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, offset = divmod(start + i, self.n_blocks)
            out[i] = self._permutation(epoch)[offset]
        return out

    def next_batch(self) -> dict[str, torch.Tensor]:
        """{"input_ids": LongTensor[B, T], "labels": LongTensor[B, T]} for this rank; advances the position."""
        start = self.position + self.rank * self.batch_size
        blocks = self._entries(start, self.batch_size)
        self.position += self.batch_size * self.world_size
        return _block_batch(self.stream, blocks, self.seq_len)

    def state_dict(self) -> dict:
        """JSON-serialisable position; restore with load_state_dict."""
        return {
            "split": self.split,
            "position": self.position,
            "epoch": self.epoch,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "n_blocks": self.n_blocks,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` left off (the same data and seq_len are required)."""
        for key in ("seq_len", "n_blocks"):
            if key in state and state[key] != getattr(self, key):
                raise SlmError(
                    f"data loader state has {key}={state[key]} but the data gives {getattr(self, key)}; "
                    "resume with the same data and data.seq_len"
                )
        self.seed = int(state.get("seed", self.seed))
        self.position = int(state["position"])


def iter_eval_batches(
    data_dir: str | Path, split: str, seq_len: int, batch_size: int, max_batches: int | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Blocks 0, 1, 2, ... of a split in order, batch_size at a time (the last batch may be smaller)."""
    stream = open_stream(data_dir, split)
    n_blocks = _num_blocks(stream, seq_len, split)
    count = 0
    for start in range(0, n_blocks, batch_size):
        if max_batches is not None and count >= max_batches:
            return
        yield _block_batch(stream, np.arange(start, min(start + batch_size, n_blocks)), seq_len)
        count += 1
