"""`slm chat CKPT | --url URL`: a terminal chat with history and streamed replies."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat in the terminal with a checkpoint or an OpenAI-compatible server",
        description="A terminal chat: each line you type is sent with the conversation so far (through the "
        "checkpoint's chat template, or to URL/chat/completions), the reply streams as it is generated. "
        "/reset starts over, /exit or Ctrl-D leaves.",
    )
    parser.add_argument("ckpt", metavar="CKPT", nargs="?", help="checkpoint folder with a chat template")
    parser.add_argument("--url", help="an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="with --url: the model id (default: the server's first)")
    parser.add_argument("--api-key", help="with --url: sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--system", help="a system message that starts every conversation")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per reply at most (default 256)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `slm chat`."""
    from slmkit.errors import SlmError
    from slmkit.generate.sampling import SamplingConfig
    from slmkit.serve.chat_client import LocalChat, RemoteChat, chat_loop

    if (args.ckpt is None) == (args.url is None):
        raise SlmError("give either a checkpoint folder or --url, not both" if args.ckpt else
                       "give a checkpoint folder or --url URL of an OpenAI-compatible server")
    if args.max_tokens < 1:
        raise SlmError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    SamplingConfig(args.temperature).validate()
    if args.url:
        if not args.url.startswith(("http://", "https://")):
            raise SlmError(f"--url must start with http:// or https://, got {args.url!r}")
        backend = RemoteChat(args.url, args.model, args.api_key, args.max_tokens, args.temperature)
    else:
        from slmkit.pipeline.rundir import resolve_checkpoint

        backend = LocalChat(resolve_checkpoint(args.ckpt), args.max_tokens, args.temperature)
    return chat_loop(backend, args.system)
