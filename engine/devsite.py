"""What ``roost serve --dev`` adds to the HTTP layer: the demo page, the JS client files, dev tokens.

Only ``--dev`` installs it (:attr:`roost.app.Engine.http_routes`); the plain engine answers 404 on
every one of these paths. ``GET /dev/token?user=NAME`` mints a user token with the dev signing key
for anyone who asks: fit for a development server on 127.0.0.1 and nothing else (the page says so).

The browser gets ``@msgpack/msgpack`` as its published ESM build (``dist.esm``) straight from
``protocol/js/node_modules``, which ``npm ci --prefix protocol/js`` installs from the npm registry:
no build step, and no third-party code in the repository. The page maps the bare specifier with an
import map, so ``roost.js`` is the same file in Node and in the browser. Without node_modules the
page answers 503 naming the command, rather than a page that fails in the console.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from pathlib import Path

from nacl.signing import SigningKey

from roost.protocol.errors import ErrorCode
from roost.protocol.tokens import new_claims, sign

from .http import HttpRequest, HttpResponse

__all__ = ["DEV_TOKEN_TTL_S", "DevSite", "js_root"]

DEV_TOKEN_TTL_S = 3600
_USER = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MODULE = re.compile(r"(?:utils/)?[A-Za-z0-9_]+\.mjs")
"""The module names of the ESM build: its files and those of its one subfolder, nothing else (no ..)."""
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def js_root() -> Path:
    """``protocol/js`` of this checkout (the editable install maps ``roost.protocol`` to ``protocol/``)."""
    import roost.protocol

    return Path(roost.protocol.__file__).resolve().parent / "js"


class DevSite:
    """A route table for :class:`~roost.http.HttpService`: returns a response, or None (not ours)."""

    def __init__(self, kid: str, signing_key: SigningKey, *, root: Path | None = None,
                 ttl_s: int = DEV_TOKEN_TTL_S) -> None:
        self._kid = kid
        self._key = signing_key
        self._root = root or js_root()
        self._ttl_s = ttl_s

    def __call__(self, request: HttpRequest) -> HttpResponse | None:
        path = request.path
        if path == "/dev/token":
            return self._token(request.query)
        if path in ("/", "/index.html"):
            return self._file(self._root / "demo" / "index.html")
        if path in ("/js/roost.js", "/js/demo.js", "/js/demo.css"):
            name = path.removeprefix("/js/")
            return self._file(self._root / ("demo" if name.startswith("demo") else "") / name)
        if path.startswith("/js/msgpack/"):
            name = path.removeprefix("/js/msgpack/")
            if not _MODULE.fullmatch(name):
                return HttpResponse.error(404, ErrorCode.NOT_FOUND, "no such path")
            return self._file(self._root / "node_modules" / "@msgpack" / "msgpack" / "dist.esm" / name,
                              missing=503)
        return None

    def _token(self, query: str) -> HttpResponse:
        users = urllib.parse.parse_qs(query).get("user", [])
        if len(users) != 1 or not _USER.fullmatch(users[0]):
            return HttpResponse.error(400, ErrorCode.BAD_FIELD, "user must be 1-32 of A-Z a-z 0-9 _ -")
        user = users[0]
        claims = new_claims(sub=user, name=user, kid=self._kid, now=time.time(), ttl=self._ttl_s)
        return HttpResponse.json(200, {"token": sign(claims, self._key), "exp": claims.exp, "dev_only": True})

    def _file(self, path: Path, *, missing: int = 404) -> HttpResponse:
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            if missing == 503:
                return HttpResponse.error(503, ErrorCode.UNSUPPORTED,
                                          "the demo needs @msgpack/msgpack: run  npm ci --prefix protocol/js  once")
            return HttpResponse.error(404, ErrorCode.NOT_FOUND, "no such path")
        return HttpResponse(200, body, _TYPES.get(path.suffix, "application/octet-stream"))
