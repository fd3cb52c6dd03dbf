"""A TEST DOUBLE of the HTTP service API (PROTOCOL.md §10), for the ``roost admin`` client tests only.

It speaks the contract the real server speaks (``POST /api/<op>``, JSON in and out, bearer key,
``{"result"}`` or ``{"error": {code, message}}`` with the status of the code) from a script of
answers, and records every request it got. It is not shipped and not the server: the end-to-end test
(tests/test_admin_cli.py::test_roost_admin_end_to_end_against_roost_serve_dev) runs the real one.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

STATUS = {"bad_field": 400, "missing_field": 400, "malformed": 400, "too_long": 400, "unauthorized": 401,
          "forbidden": 403, "not_found": 404, "conflict": 409, "too_large": 413, "rate_limited": 429,
          "unsupported": 404, "internal": 500}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


Answer = tuple[int, bytes, dict[str, str]]


def result(value: Any) -> Answer:
    return 200, json.dumps({"result": value}).encode(), {}


def error(code: str, message: str) -> Answer:
    return STATUS[code], json.dumps({"error": {"code": code, "message": message}}).encode(), {}


@dataclass
class FakeServiceApi:
    key: str
    answers: dict[str, Callable[[Any], Answer]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def answer(self, seen: Seen) -> Answer:
        if seen.headers.get("authorization") != f"Bearer {self.key}":
            return error("unauthorized", "wrong service key")
        op = seen.path.removeprefix("/api/")
        if seen.method != "POST" or op not in self.answers:
            return error("not_found", "no such path")
        return self.answers[op](seen.body)


@contextmanager
def fake_service_api(key: str, **answers: Callable[[Any], Answer]) -> Iterator[FakeServiceApi]:
    """Serve a :class:`FakeServiceApi` on 127.0.0.1, port 0, in a thread, for the ``with`` block."""
    api = FakeServiceApi(key, dict(answers))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            length = int(self.headers.get("content-length", "0"))
            raw = self.rfile.read(length)
            seen = Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw or b"null"))
            api.seen.append(seen)
            status, body, headers = api.answer(seen)
            self.send_response(status)
            headers = {"content-type": "application/json", **headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    api.url = f"ws://127.0.0.1:{server.server_address[1]}/"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
