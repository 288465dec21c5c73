"""OpenAI-compatible servers for the rephrase tests: a stdlib fake and `transformers serve`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "Here is a paraphrased version:"


@dataclass
class Reply:
    """What the fake server answers to one attempt."""

    status: int = 200
    content: str | None = None
    finish: str = "stop"
    tokens: int | None = None  # usage.completion_tokens; None: words in content
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def chunk_of(body: dict) -> str:
    """The chunk a request carries: what follows ``Text: `` in the user message (WRAP prompts: the last paragraph)."""
    content = body["messages"][-1]["content"]
    return content.rsplit("Text: ", 1)[-1] if "Text: " in content else content.rsplit("\n\n", 1)[-1]


def echo(body: dict, attempt: int) -> Reply:
    """Answer with the required prefix and the chunk itself."""
    return Reply(content=f"{PREFIX}\n{chunk_of(body)}")


class FakeOpenAI:
    """A stdlib ``http.server`` speaking ``POST /v1/chat/completions`` on 127.0.0.1.

    ``behaviour(body, attempt)`` decides each reply (``attempt`` counts tries of the same
    chunk and seed, from 0). Every request is logged as (monotonic time, body).
    """

    def __init__(self, behaviour: Callable[[dict, int], Reply] = echo) -> None:
        self.behaviour = behaviour
        self.log: list[tuple[float, dict]] = []
        self.attempts: dict[tuple, int] = defaultdict(int)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.log.append((time.monotonic(), body))
                    key = (chunk_of(body), body.get("seed"))
                    attempt = server.attempts[key]
                    server.attempts[key] += 1
                r = server.behaviour(body, attempt)
                time.sleep(r.delay)
                if r.status == 200:
                    content = r.content or ""
                    n = r.tokens if r.tokens is not None else len(content.split())
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                        "usage": {"completion_tokens": n, "prompt_tokens": 1, "total_tokens": n + 1},
                    }
                    payload["choices"][0]["finish_reason"] = r.finish
                    data = json.dumps(payload).encode()
                else:
                    data = json.dumps({"error": {"message": f"fake error {r.status}"}}).encode()
                try:
                    self.send_response(r.status)
                    for k, v in r.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TransformersServe:
    """``transformers serve <folder>`` on 127.0.0.1, offline; stopped (and waited for) on exit."""

    def __init__(self, folder: str, startup_s: float = 180.0) -> None:
        exe = shutil.which("transformers") or os.path.join(os.path.dirname(sys.executable), "transformers")
        self.port = free_port()
        self.folder = folder
        self.startup_s = startup_s
        self.cmd = [exe, "serve", folder, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        self.proc: subprocess.Popen | None = None
        # a file, not a pipe: the server never blocks on its own output
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> TransformersServe:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}: {err}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"transformers serve did not answer /health within {self.startup_s:g}s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()
