"""A scripted OpenAI-compatible server on loopback (the standard library's HTTP server): what `fromzero synth` is
tested against where a real model's output cannot be chosen. It answers from a function of the prompt, fails the
first requests of chosen prompts (500 or 429) and records every request it gets."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    def __init__(
        self,
        reply: Callable[[str], str | tuple[str, str]],
        fail: dict[str, tuple[int, int]] | None = None,
        delay_s: float = 0.0,
    ):
        self.reply, self.fail, self.delay_s = reply, fail or {}, delay_s
        self.requests: list[dict] = []
        self.failures: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.requests.append(body)
                    code = next(
                        (
                            c
                            for key, (c, times) in server.fail.items()
                            if key in prompt and server.failures[key] < times
                        ),
                        None,
                    )
                    if code is not None:
                        server.failures[next(k for k in server.fail if k in prompt)] += 1
                if server.delay_s:
                    time.sleep(server.delay_s)
                if code is not None:
                    self.send_response(code)
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted failure"}')
                    return
                out = server.reply(prompt)
                text, finish = out if isinstance(out, tuple) else (out, "stop")
                data = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                        ],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @contextlib.contextmanager
    def running(self):
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
