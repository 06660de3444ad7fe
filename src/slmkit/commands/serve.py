"""`slm serve CKPT [--host 127.0.0.1 --port 8000 --api-key KEY --max-batch N --max-queue M]`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API (continuous batching)",
        description="An OpenAI-compatible server (FastAPI + uvicorn): GET /v1/models, POST /v1/completions, "
        "POST /v1/chat/completions (plain or SSE streaming; n, temperature, top_p, max_tokens, stop, seed), "
        "GET /health, GET /metrics (Prometheus). One engine decodes every active request together; requests "
        "join and leave between steps. Binds 127.0.0.1 unless --host says otherwise; SIGTERM finishes the "
        "requests in flight, then exits. Details: docs/serve.md.",
    )
    parser.add_argument("ckpt", metavar="CKPT", help="checkpoint folder (plain or quantized), or a run folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every /v1 request")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests allowed to wait for a slot; beyond it: 429 (default 64)")
    parser.add_argument("--request-timeout", type=float, default=300.0,
                        help="seconds a request may take before it is cancelled (default 300)")
    parser.add_argument("--model-name", default=None, help="the model id clients use (default: the folder name)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `slm serve`."""
    from slmkit.errors import SlmError
    from slmkit.pipeline.rundir import resolve_checkpoint

    if not 0 < args.port < 65536:
        raise SlmError(f"--port must be in 1..65535, got {args.port}")
    for option, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue)):
        if value < 1:
            raise SlmError(f"{option} must be >= 1, got {value}")
    if not args.request_timeout > 0:
        raise SlmError(f"--request-timeout must be > 0, got {args.request_timeout}")
    if args.api_key is not None and not args.api_key.strip():
        raise SlmError("--api-key must not be empty")
    import uvicorn

    from slmkit.serve.app import create_app, load_served_model

    served = load_served_model(resolve_checkpoint(args.ckpt), args.model_name, args.device)
    app = create_app(served, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                     request_timeout=args.request_timeout)
    print(f"serving {served.name} on http://{args.host}:{args.port} (OpenAI API at /v1; "
          f"{'chat template: yes' if served.chat is not None else 'no chat template'})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
