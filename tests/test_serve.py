"""`slm serve`: the OpenAI-compatible server, driven by the real `openai` client on a loopback port.

A tiny decoder with a chat template serves most tests (in-process uvicorn on a free port); SmolLM2
serves a real chat; `slm serve` itself runs as a process for the SIGTERM drain.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from slmkit.cli import main as slm_main
from slmkit.generate import generate
from slmkit.interop.hf import load_hf_folder, save_hf_folder
from slmkit.models import build_model, get_preset
from slmkit.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]
TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def openai_client(port: int, key: str = "none", **kwargs):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving `app` on a free loopback port in a thread; stopped by `close`."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def post(port: int, path: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return response.status, response.read().decode()


@pytest.fixture(scope="module")
def folder(datasets, tmp_path_factory) -> Path:
    """A tiny random decoder with a byte-level BPE (trained on NL2Bash) and a chat template."""
    lines = list(itertools.islice((datasets / "nl2bash" / "all.cm").open(encoding="utf-8"), 3000))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = tmp_path_factory.mktemp("serve")
    tok.save(str(out / "tok.json"))
    torch.manual_seed(0)
    cfg = get_preset("tiny-llama").replace(n_layers=2, d_model=64, n_heads=4, vocab_size=400, max_seq_len=128)
    save_hf_folder(build_model(cfg).eval(), out / "tiny", tokenizer_file=out / "tok.json", chat_template=TEMPLATE)
    return out / "tiny"


@pytest.fixture(scope="module")
def served(folder):
    from slmkit.serve.app import load_served_model

    return load_served_model(folder, "tiny")


@pytest.fixture(scope="module")
def server(served):
    from slmkit.serve.app import create_app

    srv = Server(create_app(served, max_batch=4, max_queue=64))
    yield srv
    srv.close()


def ours(folder: Path, prompt: str, n: int) -> str:
    model, tok = load_hf_folder(folder), load_tokenizer(folder / "tokenizer.json")
    return generate(model, tok, [prompt], n, temperature=0.0)[0]


# ---------------------------------------------------------------------------- the API


def test_models_completions_and_streaming(server, folder):
    client = openai_client(server.port)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.completions.create(model="tiny", prompt="find . -name", max_tokens=12, temperature=0)
    assert reply.choices[0].text == ours(folder, "find . -name", 12)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens == len(
        load_tokenizer(folder / "tokenizer.json").encode("find . -name").ids)
    chunks = client.completions.create(model="tiny", prompt="find . -name", max_tokens=12, temperature=0, stream=True)
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == reply.choices[0].text and len(pieces) > 1


def test_chat_uses_the_template_stop_and_seeded_n(server, folder):
    client = openai_client(server.port)
    messages = [{"role": "user", "content": "list files"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert reply.choices[0].message.content == ours(folder, "<|user|>list files\n<|assistant|>", 10)
    streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content
    text = reply.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    a = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, n=3, seed=5, temperature=1.0)
    b = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, n=3, seed=5, temperature=1.0)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # the n choices draw differently (seed + i)


def test_concurrent_requests_each_get_their_alone_answer(server, folder):
    client = openai_client(server.port)
    prompts = ["find . -name", "ls -la", "grep -r foo", "tar -xzf", "cp -r a b", "chmod +x", "du -sh", "ps aux"]

    def ask(prompt: str) -> str:
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == [ours(folder, p, 16) for p in prompts]


# ---------------------------------------------------------------------------- hostile requests


@pytest.mark.parametrize("body,status,words", [
    (b"{bad json", 400, "malformed JSON"),
    ({"model": "tiny", "prompt": "ls", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": "other", "prompt": "ls"}, 404, "does not exist"),
    ({"model": "tiny", "prompt": "ls", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "ls", "max_tokens": 10**9}, 400, "exceeds the model context"),
    ({"model": "tiny", "prompt": "ls " * 400}, 400, "context"),
    ({"model": "tiny", "prompt": ""}, 400, "empty"),
    ({"model": "tiny", "prompt": "ls", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "prompt": "ls", "n": 1000}, 400, "n"),
    ({"prompt": "ls"}, 400, "model"),
])
def test_bad_completions_get_openai_errors(server, body, status, words):
    code, reply = post(server.port, "/v1/completions", body)
    assert code == status and words in reply["error"]["message"] and reply["error"]["type"]
    assert get(server.port, "/health")[0] == 200


def test_bad_chats_and_oversize_bodies(server):
    assert post(server.port, "/v1/chat/completions", {"model": "tiny", "messages": []})[0] == 400
    code, reply = post(server.port, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard",
                                                                                             "content": "hi"}]})
    assert code == 400 and "messages" in reply["error"]["message"]
    client = openai_client(server.port)
    assert client.completions.create(model="tiny", prompt="ls", max_tokens=2).choices[0].text is not None


def test_oversize_body_is_413(served):
    from slmkit.serve.app import create_app

    srv = Server(create_app(served, max_body=1000))  # small, so the whole body sits in the socket buffers
    try:
        code, reply = post(srv.port, "/v1/completions", b'{"model": "tiny", "prompt": "' + b"a" * 5000 + b'"}')
        assert code == 413 and "over 1000 bytes" in reply["error"]["message"]
        assert post(srv.port, "/v1/completions", {"model": "tiny", "prompt": "ls", "max_tokens": 2})[0] == 200
    finally:
        srv.close()


def test_health_and_metrics(server):
    openai_client(server.port).completions.create(model="tiny", prompt="ls", max_tokens=3)
    assert json.loads(get(server.port, "/health")[1])["status"] == "ok"
    text = get(server.port, "/metrics")[1]
    for name in ("slm_requests_total", "slm_generated_tokens_total", "slm_queue_depth", "slm_active_requests",
                 "slm_request_latency_seconds_bucket", "slm_time_to_first_token_seconds_bucket"):
        assert name in text


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/completions", method="POST",
                                     data=json.dumps({"model": "tiny", "prompt": "ls", "max_tokens": 110,
                                                      "stream": True}).encode(),
                                     headers={"content-type": "application/json"})
    response = urllib.request.urlopen(request, timeout=30)
    assert response.readline().startswith(b"data: ")
    response.close()  # gone after the first chunk
    deadline = time.monotonic() + 5
    while json.loads(get(server.port, "/health")[1])["active"]:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.01)


def test_api_key_queue_limit_and_timeout(served):
    from openai import AuthenticationError, RateLimitError

    from slmkit.serve.app import create_app

    srv = Server(create_app(served, api_key="s3cret", max_batch=1, max_queue=1, request_timeout=30))
    try:
        with pytest.raises(AuthenticationError):
            openai_client(srv.port).models.list()
        with pytest.raises(AuthenticationError):
            openai_client(srv.port, key="s3cre7").models.list()
        client = openai_client(srv.port, key="s3cret")
        assert client.models.list().data[0].id == "tiny"

        def ask(_: int) -> str:
            try:
                client.completions.create(model="tiny", prompt="ls", max_tokens=100, temperature=0)
                return "ok"
            except RateLimitError:
                return "429"

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(ask, range(6)))
        assert "429" in results and "ok" in results
    finally:
        srv.close()
    srv = Server(create_app(served, request_timeout=0.001))
    try:
        code, reply = post(srv.port, "/v1/completions", {"model": "tiny", "prompt": "ls", "max_tokens": 100})
        assert code == 504 and "timed out" in reply["error"]["message"]
    finally:
        srv.close()


# ---------------------------------------------------------------------------- the command


def test_cli_refusals(folder, tmp_path, capsys):
    assert slm_main(["serve", str(folder), "--port", "70000"]) == 2
    assert slm_main(["serve", str(folder), "--max-batch", "0"]) == 2
    assert slm_main(["serve", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_sigterm_drains_the_request_in_flight(folder):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slmkit.cli", "serve", str(folder), "--port", str(port),
                             "--model-name", "tiny"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(port, "/health")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "slm serve did not start"
                time.sleep(0.1)
        result: dict = {}

        def ask() -> None:
            result["reply"] = post(port, "/v1/completions", {"model": "tiny", "prompt": "ls", "max_tokens": 100,
                                                             "temperature": 0})

        thread = threading.Thread(target=ask)
        thread.start()
        deadline = time.monotonic() + 10
        while not json.loads(get(port, "/health")[1])["active"]:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
        code, reply = result["reply"]
        assert code == 200 and reply["choices"][0]["finish_reason"] == "length"
        # uvicorn drains, then re-raises the signal so that a supervisor sees it: ended by SIGTERM, in time.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------------------- a real model


@pytest.mark.slow
def test_smollm2_chats(tmp_path):
    from slmkit.interop.gguf import smollm2_gguf_path
    from slmkit.serve.app import create_app, load_served_model

    folder = tmp_path / "smollm2"
    assert slm_main(["import", str(smollm2_gguf_path()), "--out", str(folder)]) == 0
    srv = Server(create_app(load_served_model(folder, "smollm2")))
    try:
        client = openai_client(srv.port)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model="smollm2", messages=question, max_tokens=24, temperature=0)
        assert "Paris" in reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
        replies, _ = chat_in_browser(srv.port, "smollm2", ["What is the capital of France?",
                                                           "And what is it famous for?"], 48, "chat-page-smollm2.png")
        assert "Paris" in replies[0] and len(replies[1]) > 20
    finally:
        srv.close()


# ---------------------------------------------------------------------------- the chat page


CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium browser on this machine (make install puts Debian's chromium there when it can)")
    return path


def chat_in_browser(port: int, model: str, turns: list[str], max_tokens: int, screenshot: str) -> tuple[list[str], str]:
    """Types each turn into the page in headless Debian chromium (driven by playwright), waits for each
    streamed reply; returns the replies and the stats line, and keeps a screenshot in test-artifacts/
    (or $SLM_TEST_ARTIFACTS)."""
    browser_path = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    artifacts = Path(os.environ.get("SLM_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM[1:])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(f"document.getElementById('model').textContent === {json.dumps(model)}")
            page.fill("#max-tokens", str(max_tokens))
            page.fill("#temperature", "0")
            for n, text in enumerate(turns, start=1):
                page.fill("#input", text)
                page.keyboard.press("Enter")
                page.wait_for_function(
                    f"document.querySelectorAll(\".msg.assistant[data-done='true']\").length === {n}", timeout=120000)
            replies = [e.inner_text() for e in page.query_selector_all(".msg.assistant")]
            assert [e.inner_text() for e in page.query_selector_all(".msg.user")] == turns
            stats = page.inner_text("#stats")
            page.screenshot(path=str(artifacts / screenshot))
        finally:
            browser.close()
    assert (artifacts / screenshot).stat().st_size > 5000
    return replies, stats


def test_chat_page_streams_a_reply_in_a_real_browser(server):
    page_html = get(server.port, "/")[1]
    assert "<script>" in page_html and "src=" not in page_html and "<link" not in page_html  # self-contained
    replies, stats = chat_in_browser(server.port, "tiny", ["list files", "and now?"], 24, "chat-page-tiny.png")
    assert len(replies) == 2 and all(r.strip() for r in replies) and "tok/s" in stats


# ---------------------------------------------------------------------------- slm chat


def run_chat(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmkit.cli", "chat", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_slm_chat_local_and_through_a_server(server, folder):
    local = run_chat(str(folder), "--temperature", "0", "--max-tokens", "8",
                     stdin="list files\n/reset\n/nonsense\nls\n/exit\nnever read\n")
    assert local.returncode == 0, local.stderr[-2000:]
    lines = local.stdout.splitlines()
    assert [line.split(">")[0] for line in lines if line.startswith("assistant>")] == ["assistant", "assistant"]
    assert "(new conversation)" in local.stdout and "unknown command /nonsense" in local.stdout
    expected = openai_client(server.port).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "list files"}], max_tokens=8, temperature=0)
    remote = run_chat("--url", f"http://127.0.0.1:{server.port}/v1", "--temperature", "0", "--max-tokens", "8",
                      stdin="list files\n")
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert remote.stdout.startswith("assistant> " + expected.choices[0].message.content)
    assert lines[0] == remote.stdout.splitlines()[0]  # the same reply locally and through the server


def test_slm_chat_refusals(folder, capsys):
    for argv, words in ((["chat"], "--url"), (["chat", str(folder), "--url", "http://x/v1"], "not both"),
                        (["chat", "--url", "ftp://x"], "http://"), (["chat", "--url", "http://127.0.0.1:9/v1"],
                                                                      "cannot reach")):
        assert slm_main(argv) == 2
        assert words in capsys.readouterr().err


def test_a_quantized_checkpoint_serves(folder, tmp_path):
    from slmkit.serve.app import create_app, load_served_model

    assert slm_main(["quantize", str(folder), "--bits", "8", "--no-eval", "--out", str(tmp_path / "q8")]) == 0
    srv = Server(create_app(load_served_model(tmp_path / "q8", "tiny-int8")))
    try:
        client = openai_client(srv.port)
        reply = client.chat.completions.create(model="tiny-int8", messages=[{"role": "user", "content": "ls"}],
                                               max_tokens=6, temperature=0)
        assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    finally:
        srv.close()
