"""A fake OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests.

``respond(body, hit_no)`` returns ``(status, headers, text, delay)`` or, to trickle the body,
``(status, headers, text, delay, seconds_per_byte)``: headers go out at once, then one byte per
interval (a misbehaving server that never lets a per-read timeout fire).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY_ENV = "HB_JUDGE_TEST_KEY"
KEY = "sk-test-DISTINCTIVE-9f3c1e7a5b"


def chat_reply(content: str) -> str:
    """A chat-completions response body holding ``content``."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})


def prompt_text(body: dict) -> str:
    """The text of the first message of a request body (plain or multi-part content)."""
    content = body["messages"][0]["content"]
    return content if isinstance(content, str) else content[0]["text"]


class FakeServer:
    """A chat-completions server whose replies come from ``respond(request_body, hit_no)``."""

    def __init__(self, respond=None):
        self.hits: list[dict] = []
        self.lock = threading.Lock()
        self.respond = respond or (lambda req, n: (200, {}, chat_reply("ok"), 0.0))
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    n = len(owner.hits)
                    owner.hits.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, text, delay, *trickle = owner.respond(body, n)
                time.sleep(delay)
                try:
                    data = text.encode()
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if trickle:
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            time.sleep(trickle[0])
                    else:
                        self.wfile.write(data)
                except OSError:  # the client gave up
                    pass

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> "FakeServer":
        """Start serving in a daemon thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def hits_for(self, text: str) -> int:
        """How many requests had ``text`` in their prompt."""
        return sum(text in prompt_text(h["body"]) for h in self.hits)
