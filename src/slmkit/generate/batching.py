"""Continuous batching: one decode loop for many requests, which join and leave between steps.

`ContinuousBatcher` owns one static KV cache of `max_batch` rows (slots). Each `step()`:
1. admits waiting requests into free slots: the prompt is prefilled alone into its slot's cache
   row (a view, so it writes the shared cache), and its first token is sampled;
2. runs one decode step for every active request together: one token per row, each row at its own
   position (`Decoder.forward(cache_positions=...)`), attending only to its own slots;
3. samples each row with its own settings and generator, and retires the finished requests at once,
   freeing their slot for the next step's admissions.

Nobody waits for the slowest member of a batch, and a request's greedy tokens do not depend on what
else is running (tested). The forward runs over the rows up to the highest busy slot (new requests
take the lowest free slot), so a lone request costs one row. Not thread-safe by itself: the server
runs it in its one engine thread and talks to it through `submit`'s queue.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from slmkit.errors import SlmError
from slmkit.generate.cpu_packed import decode_layout
from slmkit.generate.engine import sample_next
from slmkit.generate.sampling import SamplingConfig

STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"  # finish reasons (OpenAI's names for the first two)


@dataclass(eq=False)
class Request:
    """One generation: prompt ids in, `tokens` out; `on_token(request, token)` sees each new token."""

    prompt_ids: Sequence[int]
    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.0))
    seed: int | None = None
    eos_ids: Collection[int] = ()
    on_token: Callable[[Request, int], None] | None = None
    on_finish: Callable[[Request], None] | None = None  # called once, when finish_reason is set
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # set once: "stop" (an eos id), "length", or "cancelled"
    cancelled: bool = False  # set from any thread; the engine retires the request at its next step
    slot: int | None = None
    generator: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class _RowsView:
    """The first `rows` (or one `row`) of a KVCache, as views: what a forward writes lands in the cache."""

    def __init__(self, cache, rows: slice) -> None:
        self.layers = [(k[rows], v[rows]) for k, v in cache.layers]
        self.max_len = cache.max_len


class ContinuousBatcher:
    """Requests share one decode loop over a KV cache of `max_batch` slots (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, max_batch: int = 8, max_len: int | None = None) -> None:
        if max_batch < 1:
            raise SlmError(f"max batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_len = max_len or model.config.max_seq_len
        self.cache = model.new_cache(max_batch, self.max_len)
        self.slots: list[Request | None] = [None] * max_batch
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.device = model.embed.weight.device

    # ------------------------------------------------------------------ queue

    def submit(self, request: Request) -> Request:
        """Queue a request (any thread); SlmError when it cannot fit the context at all."""
        if not request.prompt_ids:
            raise SlmError("every prompt needs at least one token")
        if len(request.prompt_ids) >= self.max_len:
            raise SlmError(f"prompt of {len(request.prompt_ids)} tokens does not fit the context of {self.max_len} "
                           "tokens (leave room for at least one new token)")
        if request.max_new_tokens < 1:
            raise SlmError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
        request.sampling.validate()
        if request.seed is not None:
            request.generator = torch.Generator(device=self.device).manual_seed(request.seed)
        self.waiting.put(request)
        return request

    @property
    def active(self) -> list[Request]:
        return [r for r in self.slots if r is not None]

    @property
    def idle(self) -> bool:
        return not self.active and self.waiting.empty()

    # ------------------------------------------------------------------ the loop

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Admit what fits, run one decode step for everyone active; returns the requests finished now."""
        finished = self._retire_cancelled()
        with decode_layout(self.model):
            finished += self._admit()
            busy = [i for i, r in enumerate(self.slots) if r is not None]
            if busy:
                finished += self._decode(busy)
        return finished

    def run_until_idle(self, max_steps: int | None = None) -> None:
        """Step until no request is active or waiting (offline use and tests)."""
        steps = 0
        while not self.idle and (max_steps is None or steps < max_steps):
            self.step()
            steps += 1

    def _retire_cancelled(self) -> list[Request]:
        out = []
        for i, request in enumerate(self.slots):
            if request is not None and request.cancelled:
                out.append(self._finish(i, CANCELLED))
        return out

    def _admit(self) -> list[Request]:
        finished = []
        while None in self.slots:
            try:
                request = self.waiting.get_nowait()
            except queue.Empty:
                break
            if request.cancelled:
                finished.append(self._finish_request(request, CANCELLED))
                continue
            slot = self.slots.index(None)
            request.slot, self.slots[slot] = slot, request
            ids = torch.tensor([list(request.prompt_ids)], device=self.device)
            logits = self.model(ids, kv_cache=_RowsView(self.cache, slice(slot, slot + 1)), last_only=True)
            done = self._take(request, logits[:, -1])
            if done:
                finished.append(self._finish(slot, done))
        return finished

    def _decode(self, busy: list[int]) -> list[Request]:
        rows = busy[-1] + 1  # rows 0..highest busy slot; idle rows in between decode a dummy token
        tokens = torch.zeros(rows, 1, dtype=torch.long, device=self.device)
        positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        for i in busy:
            request = self.slots[i]
            tokens[i, 0] = request.tokens[-1]
            positions[i] = len(request.prompt_ids) + len(request.tokens) - 1
        logits = self.model(tokens, kv_cache=_RowsView(self.cache, slice(0, rows)), cache_positions=positions)
        finished = []
        for i in busy:
            done = self._take(self.slots[i], logits[i:i + 1, -1])
            if done:
                finished.append(self._finish(i, done))
        return finished

    def _take(self, request: Request, logits: Tensor) -> str | None:
        """Sample the request's next token from [1, V] logits; the finish reason when it is done."""
        token = int(sample_next(logits, request.sampling, request.generator)[0])
        if token in request.eos_ids:
            return STOP
        request.tokens.append(token)
        if request.on_token is not None:
            request.on_token(request, token)
        total = len(request.prompt_ids) + len(request.tokens)
        if len(request.tokens) >= request.max_new_tokens or total >= self.max_len:
            return LENGTH
        return None

    def _finish(self, slot: int, reason: str) -> Request:
        request = self.slots[slot]
        request.slot, self.slots[slot] = None, None
        return self._finish_request(request, reason)

    @staticmethod
    def _finish_request(request: Request, reason: str) -> Request:
        request.finish_reason = reason
        if request.on_finish is not None:
            request.on_finish(request)
        return request

    def fail_all(self, reason: str = "error") -> list[Request]:
        """End every active and waiting request with `reason` (the engine cannot go on)."""
        failed = [self._finish(i, reason) for i, r in enumerate(self.slots) if r is not None]
        while True:
            try:
                failed.append(self._finish_request(self.waiting.get_nowait(), reason))
            except queue.Empty:
                return failed
