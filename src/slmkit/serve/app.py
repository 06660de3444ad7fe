"""The OpenAI-compatible app: /v1/models, /v1/completions, /v1/chat/completions (plain and SSE
streaming), /health and /metrics, over one continuous-batching engine thread.

Every failure a client can cause is a 4xx with OpenAI's error body {"error": {"message", "type",
"param", "code"}} and the server keeps serving: malformed JSON, wrong types, an unknown model, bad
max_tokens, a prompt beyond the context, an oversize body, empty messages (400/404/413); a full
queue (429); a missing or wrong API key (401, compared in constant time). A client that leaves
mid-stream, a stop string or the request timeout cancels the request and frees its slot at the
engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.generate.batching import CANCELLED, LENGTH, STOP, ContinuousBatcher, Request
from slmkit.generate.engine import TextState
from slmkit.generate.sampling import SamplingConfig
from slmkit.serve.schemas import ChatRequest, CompletionRequest
from slmkit.serve.worker import EngineWorker, QueueFull, TokenEvent

DEFAULT_MAX_BODY = 1 << 20  # bytes


class ApiError(Exception):
    """An error answered with `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class ServedModel:
    """What the endpoints need of the checkpoint."""

    name: str
    model: Any
    tokenizer: Any  # tokenizers.Tokenizer
    eos_ids: list[int]
    context: int
    chat: Any = None  # transformers tokenizer with a chat template, or None
    kind: str = "decoder"  # or "codefusion" / "masked-diffusion": then `lm` draws candidates
    lm: Any = None
    created: int = field(default_factory=lambda: int(time.time()))


def load_served_model(folder: Path, name: str | None = None, device: str = "cpu") -> ServedModel:
    """The decoder of a checkpoint folder (plain or quantized) with its tokenizer and chat template."""
    from slmkit.interop.folder import check_model_folder
    from slmkit.interop.hf import load_hf_folder, model_special_ids
    from slmkit.pipeline.rundir import TOKENIZER_FILE
    from slmkit.tokenizer import chat_template_of, load_tokenizer

    kind = check_model_folder(folder)
    if kind != "decoder":
        return _diffusion_model(folder, kind, name, device)
    if not (folder / TOKENIZER_FILE).is_file():
        raise SlmError(f"{folder}: no {TOKENIZER_FILE}; a served model needs its tokenizer")
    tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
    model = load_hf_folder(folder, device=device)
    chat = None
    if chat_template_of(folder):
        from transformers import AutoTokenizer

        chat = AutoTokenizer.from_pretrained(folder)
    return ServedModel(name=name or folder.resolve().name, model=model, tokenizer=tokenizer,
                       eos_ids=model_special_ids(folder, tokenizer)[1], context=model.config.max_seq_len, chat=chat)


def _diffusion_model(folder: Path, kind: str, name: str | None, device: str) -> ServedModel:
    """A CodeFusion or masked-diffusion checkpoint: candidates per utterance through /v1/completions."""
    if kind == "codefusion":
        from slmkit.eval.codefusion_lm import load_codefusion_lm

        lm = load_codefusion_lm(folder, device=device, truncate=False)
        context = lm.model.config.max_utterance_len
    else:
        from slmkit.eval.masked_lm import load_masked_lm

        lm = load_masked_lm(folder, device=device, truncate=False)
        context = lm.model.config.max_seq_len
    return ServedModel(name=name or folder.resolve().name, model=lm.model, tokenizer=lm.tokenizer, eos_ids=[],
                       context=context, kind=kind, lm=lm)


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self, worker: EngineWorker) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("slm_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("slm_prompt_tokens", "prompt tokens of accepted requests", registry=self.registry)
        self.generated_tokens = Counter("slm_generated_tokens", "tokens generated", registry=self.registry)
        self.latency = Histogram("slm_request_latency_seconds", "request latency", ["endpoint"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=self.registry)
        self.ttft = Histogram("slm_time_to_first_token_seconds", "time to the first generated token",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=self.registry)
        queue = Gauge("slm_queue_depth", "requests waiting for a slot", registry=self.registry)
        queue.set_function(lambda: worker.waiting)
        active = Gauge("slm_active_requests", "requests decoding", registry=self.registry)
        active.set_function(lambda: worker.active)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Generation:
    """One choice: submits a Request and turns its tokens into final text, with stop strings."""

    def __init__(self, served: ServedModel, worker: EngineWorker, prompt_ids: list[int], max_tokens: int,
                 sampling: SamplingConfig, seed: int | None, stop: list[str]) -> None:
        self.served, self.worker = served, worker
        self.request = Request(prompt_ids, max_tokens, sampling, seed, served.eos_ids)
        self.state = TextState(stop)
        self.ids: list[int] = []
        self.finish_reason: str | None = None

    async def deltas(self, deadline: float, on_first: Any = None) -> AsyncIterator[str]:
        """Final text as it is produced; sets `finish_reason` ("stop" or "length") at the end."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.worker.submit(self.request, loop, events)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=max(deadline - time.monotonic(), 0.0))
                except asyncio.TimeoutError:
                    raise ApiError(504, "the request timed out (--request-timeout)", "timeout_error") from None
                if event.token is None:
                    if event.finish_reason == "error":
                        raise ApiError(500, "the engine failed while generating", "server_error")
                    self.finish_reason = {STOP: "stop", LENGTH: "length", CANCELLED: "stop"}[event.finish_reason]
                    tail = self.state.finish()
                    if tail:
                        yield tail
                    return
                if not self.ids and on_first is not None:
                    on_first()
                self.ids.append(event.token)
                delta = self.state.update(self.served.tokenizer.decode(self.ids, skip_special_tokens=False))
                if self.state.stopped:
                    self.request.cancelled = True  # the engine frees the slot at its next step
                    self.finish_reason = "stop"
                    if delta:
                        yield delta
                    return
                if delta:
                    yield delta
        finally:
            if self.finish_reason is None:
                self.request.cancelled = True  # client gone, timeout or error: free the slot

    @property
    def text(self) -> str:
        return self.state.text


def create_app(served: ServedModel, *, api_key: str | None = None, max_batch: int = 8, max_queue: int = 64,
               request_timeout: float = 300.0, max_body: int = DEFAULT_MAX_BODY) -> Any:
    """The FastAPI app serving `served`; its engine thread starts and stops with the app."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    diffusion = served.kind != "decoder"
    # A diffusion model has no token-by-token decode to batch: its requests take turns (one lock).
    batcher = None if diffusion else ContinuousBatcher(served.model, max_batch=max_batch)
    worker = EngineWorker(batcher, max_queue=max_queue)
    metrics = Metrics(worker)
    turn = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not diffusion:
            worker.start()
        yield
        if not diffusion:
            worker.stop()

    app = FastAPI(title="slmkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.metrics, app.state.served = worker, metrics, served

    # ------------------------------------------------------------------ errors

    @app.exception_handler(ApiError)
    async def _api_error(request: HttpRequest, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            message, param = f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}", None
        elif tuple(first.get("loc", ())) == ("body",):  # not a JSON object (or not sent as application/json)
            message, param = "the body must be a JSON object, sent with Content-Type: application/json", None
        else:
            loc = [str(p) for p in first.get("loc", []) if p != "body"]
            param = ".".join(loc) or None
            message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid request"))
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: HttpRequest, exc: Exception) -> JSONResponse:
        import traceback

        traceback.print_exception(exc)  # for the operator; the client gets no internals
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    # ------------------------------------------------------------------ middleware

    @app.middleware("http")
    async def _guard(request: HttpRequest, call_next: Any) -> Any:
        start = time.monotonic()
        path = request.url.path
        if api_key is not None and path not in ("/health", "/"):  # the page asks for the key itself
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                response = JSONResponse(error_body("missing or wrong API key (Authorization: Bearer KEY)",
                                                   "authentication_error", code="invalid_api_key"), status_code=401)
                metrics.requests.labels(path, "401").inc()
                return response
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            metrics.requests.labels(path, "413").inc()
            return JSONResponse(error_body(f"request body over {max_body} bytes", "invalid_request_error"),
                                status_code=413)
        response = await call_next(request)
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.monotonic() - start)
        return response

    # ------------------------------------------------------------------ endpoints

    @app.get("/")
    async def chat_page() -> Response:
        from importlib.resources import files

        return Response(files("slmkit.serve").joinpath("chat.html").read_bytes(), media_type="text/html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name, "active": worker.active, "waiting": worker.waiting}

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "slmkit"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        if diffusion:
            return await _candidates(body)
        prompt_ids = served.tokenizer.encode(body.prompt).ids
        return await _respond(body, prompt_ids, "text_completion", body.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        if diffusion:
            raise ApiError(400, f"model {served.name} is a {served.kind} model: send the utterance to "
                           "/v1/completions, which returns n candidate programs", param="messages")
        if served.chat is None:
            raise ApiError(400, f"model {served.name} has no chat template; use /v1/completions", param="messages")
        messages = [m.model_dump() for m in body.messages]
        try:
            text = served.chat.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the template's own raise_exception, e.g. roles out of order
            raise ApiError(400, f"messages do not fit the chat template: {exc}", param="messages") from None
        prompt_ids = served.tokenizer.encode(text).ids
        return await _respond(body, prompt_ids, "chat.completion", body.max_completion_tokens or body.max_tokens)

    async def _respond(body: Any, prompt_ids: list[int], kind: str, max_tokens: int | None) -> Any:
        _check_model(body.model)
        room = served.context - len(prompt_ids)
        if not prompt_ids:
            raise ApiError(400, "the prompt has no tokens", param="prompt")
        if room < 1:
            raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens but the context holds {served.context}; "
                           "shorten it", param="messages" if kind == "chat.completion" else "prompt",
                           code="context_length_exceeded")
        if max_tokens is not None and max_tokens > served.context:
            raise ApiError(400, f"max_tokens {max_tokens} exceeds the model context of {served.context} tokens",
                           param="max_tokens")
        max_new = min(max_tokens or room, room)
        sampling = SamplingConfig(body.temperature, None, body.top_p if body.top_p < 1 else None)
        choices = [Generation(served, worker, prompt_ids, max_new, sampling,
                              None if body.seed is None else body.seed + i, body.stop) for i in range(body.n)]
        metrics.prompt_tokens.inc(len(prompt_ids))
        deadline = time.monotonic() + request_timeout
        rid = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if body.stream:
            events = _merged(choices, deadline)
            first = await _first_or_error(events)
            return StreamingResponse(_sse(rid, kind, choices, first, events, len(prompt_ids)),
                                     media_type="text/event-stream")
        try:
            async for _ in _merged(choices, deadline):
                pass
        except QueueFull as exc:
            raise ApiError(429, str(exc), "rate_limit_error", code="queue_full") from None
        return _full_response(rid, kind, choices, len(prompt_ids))

    async def _candidates(body: CompletionRequest) -> dict[str, Any]:
        """n candidate programs for one utterance (the k draws, best first), from a diffusion model."""
        from slmkit.eval.lm import CandidateRequest
        from slmkit.objectives.ar_code import ar_prompt

        _check_model(body.model)
        if body.stream:
            raise ApiError(400, f"model {served.name} is a {served.kind} model: its candidates come all at once; "
                           "send stream=false", param="stream")
        ids = served.lm.encode_utterance(body.prompt) if served.kind == "codefusion" else \
            served.tokenizer.encode(body.prompt).ids
        request = CandidateRequest(prompt=ar_prompt(body.prompt), source=body.prompt, k=body.n,
                                   max_new_tokens=body.max_tokens or 128, temperature=body.temperature,
                                   seed=body.seed or 0)
        if worker.waiting_turns >= max_queue:
            raise ApiError(429, f"{worker.waiting_turns} requests are already waiting (--max-queue {max_queue})",
                           "rate_limit_error", code="queue_full")
        worker.waiting_turns += 1
        turned = False
        try:
            async with turn:
                worker.waiting_turns, turned = worker.waiting_turns - 1, True
                start = time.monotonic()
                try:
                    result = (await asyncio.wait_for(asyncio.to_thread(served.lm.candidates, [request]),
                                                     timeout=request_timeout))[0]
                except SlmError as exc:
                    raise ApiError(400, str(exc), param="prompt") from None
                except asyncio.TimeoutError:
                    raise ApiError(504, "the request timed out (--request-timeout)", "timeout_error") from None
                metrics.ttft.observe(time.monotonic() - start)
        finally:
            if not turned:  # cancelled while waiting for its turn
                worker.waiting_turns -= 1
        draws = result.draws()
        completion = sum(len(served.tokenizer.encode(t).ids) for t in draws)
        metrics.prompt_tokens.inc(len(ids))
        metrics.generated_tokens.inc(completion)
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": served.name,
                "choices": [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None}
                            for i, t in enumerate(draws)],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion,
                          "total_tokens": len(ids) + completion}}

    def _check_model(name: str) -> None:
        if name != served.name:
            raise ApiError(404, f"model {name!r} does not exist; this server has {served.name!r}", param="model",
                           code="model_not_found")

    async def _merged(choices: list[Generation], deadline: float) -> AsyncIterator[tuple[int, str, str | None]]:
        """(choice index, text delta, finish reason or None) from all choices as they come."""
        queue: asyncio.Queue[tuple[int, str, str | None] | BaseException] = asyncio.Queue()
        started = time.monotonic()
        first_seen = []

        def first() -> None:
            if not first_seen:
                first_seen.append(True)
                metrics.ttft.observe(time.monotonic() - started)

        async def pump(index: int, gen: Generation) -> None:
            try:
                async for delta in gen.deltas(deadline, first):
                    await queue.put((index, delta, None))
                await queue.put((index, "", gen.finish_reason))
            except BaseException as exc:  # noqa: BLE001 (re-raised by the consumer)
                await queue.put(exc)

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(choices)]
        try:
            done = 0
            while done < len(choices):
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item[2] is not None:
                    done += 1
                yield item
        finally:
            for task in tasks:
                task.cancel()
            for gen in choices:
                if gen.finish_reason is None:
                    gen.request.cancelled = True
            metrics.generated_tokens.inc(sum(len(g.ids) for g in choices))

    async def _first_or_error(events: AsyncIterator) -> Any:
        """The first event, so that a refusal (queue full) is still an HTTP error, not a broken stream."""
        try:
            return await events.__anext__()
        except QueueFull as exc:
            raise ApiError(429, str(exc), "rate_limit_error", code="queue_full") from None
        except StopAsyncIteration:
            return None

    async def _sse(rid: str, kind: str, choices: list[Generation], first: Any, events: AsyncIterator,
                   prompt_tokens: int) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(index: int, delta: str, finish: str | None) -> bytes:
            if kind == "chat.completion":
                choice = {"index": index, "delta": {"content": delta} if delta else {}, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": index, "text": delta, "finish_reason": finish, "logprobs": None}
                obj = "text_completion"
            data = {"id": rid, "object": obj, "created": created, "model": served.name, "choices": [choice]}
            return f"data: {json.dumps(data)}\n\n".encode()

        if kind == "chat.completion":
            for i in range(len(choices)):
                data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                        "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]}
                yield f"data: {json.dumps(data)}\n\n".encode()
        try:
            if first is not None:
                yield chunk(*first)
            async for item in events:
                yield chunk(*item)
        except ApiError as exc:  # mid-stream: the status is sent already; say it in the stream
            yield f"data: {json.dumps(error_body(exc.message, exc.kind))}\n\n".encode()
        completion = sum(len(g.ids) for g in choices)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}
        obj = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"
        data = {"id": rid, "object": obj, "created": created, "model": served.name, "choices": [], "usage": usage}
        yield f"data: {json.dumps(data)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def _full_response(rid: str, kind: str, choices: list[Generation], prompt_tokens: int) -> dict[str, Any]:
        completion = sum(len(g.ids) for g in choices)
        if kind == "chat.completion":
            items = [{"index": i, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason}
                     for i, g in enumerate(choices)]
        else:
            items = [{"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None}
                     for i, g in enumerate(choices)]
        return {"id": rid, "object": kind, "created": int(time.time()), "model": served.name, "choices": items,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    return app
