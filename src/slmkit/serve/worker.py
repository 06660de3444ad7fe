"""The engine thread: one ContinuousBatcher stepping while there is work, fed from the HTTP handlers.

Handlers live on the asyncio loop; the engine lives on its own thread (a decode step blocks for
milliseconds). A handler submits a `Request` whose `on_token` and finish are forwarded to an
`asyncio.Queue` with `loop.call_soon_threadsafe`; cancelling (a client that left, a stop string, a
timeout) sets `request.cancelled`, and the engine frees the slot at its next step.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from slmkit.errors import SlmError
from slmkit.generate.batching import ContinuousBatcher, Request


class QueueFull(SlmError):
    """More requests wait than --max-queue allows."""


@dataclass
class TokenEvent:
    """What a handler receives: a token, or (token None) the end with its finish reason."""

    token: int | None
    finish_reason: str | None = None


class EngineWorker:
    """Runs `batcher.step()` on a daemon thread whenever requests are active or waiting."""

    def __init__(self, batcher: ContinuousBatcher | None, max_queue: int) -> None:
        """`batcher` None: a model without token-by-token decoding (diffusion); the app counts its queue
        in `waiting_turns` and the thread is never started."""
        self.batcher = batcher
        self.waiting_turns = 0
        self.max_queue = max_queue
        self._wake = threading.Condition()
        self._stopping = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="slm-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the requests in flight, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout=60)

    @property
    def waiting(self) -> int:
        return self.waiting_turns if self.batcher is None else self.batcher.waiting.qsize()

    @property
    def active(self) -> int:
        return 0 if self.batcher is None else len(self.batcher.active)

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Request:
        """Queue `request`; its tokens and end arrive in `events` (on `loop`). QueueFull beyond max_queue."""
        if self._error is not None:
            raise SlmError(f"the engine stopped: {self._error}")
        if self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are already waiting (--max-queue {self.max_queue})")

        def on_token(req: Request, token: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, TokenEvent(token))

        def on_finish(req: Request) -> None:
            loop.call_soon_threadsafe(events.put_nowait, TokenEvent(None, req.finish_reason))

        request.on_token, request.on_finish = on_token, on_finish
        self.batcher.submit(request)
        with self._wake:
            self._wake.notify_all()
        return request

    def _run(self) -> None:
        while True:
            with self._wake:
                while self.batcher.idle and not self._stopping:
                    self._wake.wait()
                if self._stopping and self.batcher.idle:
                    return
            try:
                self.batcher.step()
            except Exception as exc:  # a broken model must not hang every client: fail them all
                self._error = exc
                self.batcher.fail_all()
                return
