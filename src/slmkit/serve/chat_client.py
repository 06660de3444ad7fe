"""`slm chat`: a terminal chat with history and streamed replies, with a local checkpoint or any
OpenAI-compatible server (`--url`).

Two backends behind one `reply(messages, on_text) -> text` call:
- `LocalChat`: the checkpoint in this process, its chat template, `slmkit.generate.generate` streaming;
- `RemoteChat`: POST {url}/chat/completions with stream=true, Server-Sent Events read with urllib
  (no client library needed).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from slmkit.errors import SlmError

OnText = Callable[[str], None]


class LocalChat:
    """A checkpoint folder with a chat template, run here."""

    def __init__(self, folder: Path, max_tokens: int, temperature: float) -> None:
        from slmkit.serve.app import load_served_model

        self.served = load_served_model(folder)
        if self.served.chat is None:
            raise SlmError(f"{folder} has no chat template (tokenizer_config.json chat_template); chat needs one")
        self.max_tokens, self.temperature = max_tokens, temperature
        self.name = self.served.name

    def reply(self, messages: list[dict[str, str]], on_text: OnText) -> str:
        from slmkit.generate import generate

        prompt = self.served.chat.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        room = self.served.context - len(self.served.tokenizer.encode(prompt).ids)
        if room < 1:
            raise SlmError(f"the conversation no longer fits the context of {self.served.context} tokens; /reset")
        return generate(self.served.model, self.served.tokenizer, [prompt], min(self.max_tokens, room),
                        temperature=self.temperature, eos_ids=self.served.eos_ids,
                        stream=lambda row, delta: on_text(delta))[0]


class RemoteChat:
    """An OpenAI-compatible server at `url` (e.g. http://127.0.0.1:8000/v1)."""

    def __init__(self, url: str, model: str | None, api_key: str | None, max_tokens: int, temperature: float) -> None:
        self.url, self.api_key = url.rstrip("/"), api_key
        self.max_tokens, self.temperature = max_tokens, temperature
        self.name = model or self._first_model()

    def _open(self, path: str, body: dict | None = None) -> Any:
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                         method="GET" if body is None else "POST")
        try:
            return urllib.request.urlopen(request, timeout=600)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise SlmError(f"{self.url}{path}: HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SlmError(f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None

    def _first_model(self) -> str:
        with self._open("/models") as response:
            data = json.loads(response.read()).get("data") or []
        if not data:
            raise SlmError(f"{self.url}/models lists no model")
        return data[0]["id"]

    def reply(self, messages: list[dict[str, str]], on_text: OnText) -> str:
        body = {"model": self.name, "messages": messages, "stream": True, "max_tokens": self.max_tokens,
                "temperature": self.temperature}
        text = []
        with self._open("/chat/completions", body) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise SlmError(f"the server stopped the reply: {chunk['error'].get('message')}")
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        text.append(delta)
                        on_text(delta)
        return "".join(text)


HELP = "/reset starts a new conversation, /exit (or Ctrl-D) leaves"


def chat_loop(backend: Any, system: str | None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Read a line, stream the reply, keep the history; /reset and /exit."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    print(f"chatting with {backend.name} ({HELP})", file=sys.stderr)
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = history[:1] if system else []
            print("(new conversation)", file=stdout)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=stdout)
            continue
        history.append({"role": "user", "content": text})
        stdout.write("assistant> ")
        stdout.flush()

        def show(delta: str) -> None:
            stdout.write(delta)
            stdout.flush()

        try:
            answer = backend.reply(history, show)
        except SlmError as exc:
            history.pop()
            stdout.write("\n")
            print(f"error: {exc}", file=sys.stderr)
            continue
        stdout.write("\n")
        stdout.flush()
        history.append({"role": "assistant", "content": answer})
