"""Packed token shards: raw numpy arrays (uint16 when the vocab fits, else uint32) read with np.memmap.

A split is the concatenation of its shards `SPLIT-00000.bin`, ... Each shard is written to a temp file,
hashed while written and renamed into place, so a kill never leaves a half shard under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from slmkit.errors import SlmError
from slmkit.fileio import atomic_write_text, sha256_file, temp_file


def dtype_for(vocab_size: int) -> str:
    """uint16 when every id fits, else uint32."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


class ShardWriter:
    """Stream token arrays into fixed-size shard files; `close()` returns their manifest entries."""

    def __init__(self, folder: str | Path, split: str, shard_tokens: int, dtype: str):
        if shard_tokens <= 0:
            raise SlmError(f"recipe key 'data.shard_tokens' must be > 0, got {shard_tokens}")
        self.folder, self.split, self.shard_tokens = Path(folder), split, shard_tokens
        self.dtype = np.dtype(dtype)
        self.shards: list[dict] = []
        self._file = None
        self._tmp: str | None = None
        self._hash = None
        self._count = 0

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = shard_name(self.split, len(self.shards))
        fd, self._tmp = temp_file(self.folder, name)
        self._file = os.fdopen(fd, "wb")
        self._hash, self._count = hashlib.sha256(), 0

    def _finish(self) -> None:
        assert self._file is not None and self._tmp is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = shard_name(self.split, len(self.shards))
        os.replace(self._tmp, self.folder / name)
        self.shards.append({"path": name, "tokens": self._count, "sha256": self._hash.hexdigest()})
        self._file = self._tmp = None

    def write(self, tokens: np.ndarray) -> None:
        """Append tokens, starting a new shard whenever the current one is full."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        while len(tokens):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._count
            head, tokens = tokens[:room], tokens[room:]
            data = head.tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._count += len(head)
            if self._count == self.shard_tokens:
                self._finish()

    def close(self) -> list[dict]:
        """Finish the last shard; returns [{"path", "tokens", "sha256"}, ...]."""
        if self._file is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its temp file)."""
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._file = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


VERIFIED_CACHE = ".verified.json"  # shard name -> [size, mtime_ns, sha256] of its last full hash


def _read_verified(folder: Path) -> dict:
    try:
        cache = json.loads((folder / VERIFIED_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_verified(folder: Path, cache: dict) -> None:
    with contextlib.suppress(OSError):  # a read-only data folder only costs hashing again next time
        atomic_write_text(folder / VERIFIED_CACHE, json.dumps(cache))


def record_verified(folder: str | Path, shards: list[dict]) -> None:
    """Remember the hashes of shards just written (so the first reuse need not hash them again)."""
    folder = Path(folder)
    cache = _read_verified(folder)
    for shard in shards:
        stat = (folder / shard["path"]).stat()
        cache[shard["path"]] = [stat.st_size, stat.st_mtime_ns, shard["sha256"]]
    _write_verified(folder, cache)


def shard_problems(folder: str | Path, shards: list[dict], dtype: str) -> list[str]:
    """Why the listed shards cannot be trusted (missing, wrong size, sha256 mismatch); [] when all are good.

    Each problem starts with the shard's file name. A shard whose size and modification time match
    the last full hash recorded in `folder/.verified.json` is not hashed again.
    """
    folder = Path(folder)
    itemsize = np.dtype(dtype).itemsize
    cache = _read_verified(folder)
    fresh = dict(cache)
    problems = []
    for shard in shards:
        path = folder / shard["path"]
        try:
            stat = path.stat()
        except OSError:
            problems.append(f"{path.name} missing")
            fresh.pop(path.name, None)
            continue
        expected = shard["tokens"] * itemsize
        if stat.st_size != expected:
            problems.append(f"{path.name} truncated ({stat.st_size} bytes, expected {expected})")
            fresh.pop(path.name, None)
            continue
        key = [stat.st_size, stat.st_mtime_ns]
        known = cache.get(path.name)
        digest = known[2] if isinstance(known, list) and known[:2] == key else sha256_file(path)
        if digest != shard["sha256"]:
            problems.append(f"{path.name} corrupt (sha256 mismatch)")
            fresh.pop(path.name, None)
            continue
        fresh[path.name] = [*key, digest]
    if fresh != cache:
        _write_verified(folder, fresh)
    return problems


class TokenStream:
    """The tokens of one split: its shards concatenated, read lazily through np.memmap."""

    def __init__(self, folder: str | Path, shards: list[dict], dtype: str):
        self.maps = [np.memmap(Path(folder) / s["path"], dtype=dtype, mode="r") for s in shards if s["tokens"]]
        sizes = [len(m) for m in self.maps]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) as int64, crossing shard boundaries when needed."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"tokens [{start}, {start + length}) out of range (stream has {len(self)})")
        out = np.empty(length, dtype=np.int64)
        pos = 0
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while pos < length:
            offset = start + pos - int(self.starts[shard])
            take = min(length - pos, len(self.maps[shard]) - offset)
            out[pos : pos + take] = self.maps[shard][offset : offset + take]
            pos += take
            shard += 1
        return out


def gather(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate tokens[starts[i] : starts[i] + lengths[i]] for every i, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return tokens[:0]
    out_starts = np.cumsum(lengths) - lengths
    index = np.arange(total, dtype=np.int64) - np.repeat(out_starts - starts, lengths)
    return tokens[index]
