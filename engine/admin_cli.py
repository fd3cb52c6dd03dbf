"""``roost admin``: the service API over HTTP, from a terminal or a script (stdlib only: urllib, json).

The contract it speaks (PROTOCOL.md §10): ``POST /api/<op>`` with a JSON object of the op's args and
``Authorization: Bearer <service key>``; ``200 {"result": ...}``, or ``{"error": {"code", "message"}}``
with the protocol's error code. Every outcome maps to one exit status (:data:`EXIT_CODES`), so a
script can tell "the server said no" from "there is no server" from "the credential is wrong".

Traps this module exists to avoid:

- the credential never reaches the output, a log or an exception text: only the header carries it;
- redirects are refused, not followed: urllib would resend the ``Authorization`` header to wherever
  a ``Location`` points (another host included);
- every wait is bounded (connect and each read: ``timeout``), and so is the body read (a server
  that streams forever cannot exhaust the client's memory);
- ``rooms --all`` stops if the server hands back a cursor it gave before (it would loop forever).
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

__all__ = [
    "EXIT_AUTH", "EXIT_CODES", "EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "AdminClient", "AdminError",
    "api_base", "run",
]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4

EXIT_CODES = f"""\
exit status:
  {EXIT_OK}  done
  {EXIT_REFUSED}  the server refused the request (its error code is printed: roost: error: not_found: ...)
  {EXIT_USAGE}  usage: a bad argument, no URL or no service key
  {EXIT_UNREACHABLE}  the server cannot be reached, or its answer is not the service API's
  {EXIT_AUTH}  authentication: a wrong service key (unauthorized), or the API is disabled on the server
     (unsupported: it has no service_key configured)
"""
"""The exit statuses, as ``roost admin --help`` and the README show them."""

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""Largest answer read (a page of rooms or a snapshot is a few hundred KiB at most)."""

_AUTH_CODES = frozenset({"unauthorized", "unsupported"})


class AdminError(Exception):
    """One failed request: ``status`` is the exit status, ``text`` the one line to print."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def api_base(url: str) -> str:
    """The HTTP base of the server at ``url``: the ``ws://`` URL ``roost serve`` prints becomes
    ``http://`` (``wss://``: ``https://``); ``http(s)://`` stays. Raises ValueError for anything else."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"--url must be a ws://, wss://, http:// or https:// URL with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("--url must not have a query or fragment")
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect (the credential would follow it): the 3xx surfaces as an HTTPError."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class AdminClient:
    """Calls the service API of one server. Raises :class:`AdminError` for every failure."""

    def __init__(self, url: str, key: str, *, timeout: float = 10.0) -> None:
        self.base = api_base(url)
        self._key = key
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __repr__(self) -> str:  # never the key, even in a traceback's locals
        return f"AdminClient({self.base!r})"

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """``POST /api/<op>`` with ``args``; the ``result`` of the answer."""
        body = json.dumps(args or {}, separators=(",", ":")).encode()
        request = urllib.request.Request(
            f"{self.base}/api/{op}", data=body, method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "Authorization": f"Bearer {self._key}"},
        )
        where = self.base
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status, data = response.status, _read(response)
        except urllib.error.HTTPError as error:
            with error:
                status, data = error.code, _read(error)
        except urllib.error.URLError as error:
            reason = error.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            raise AdminError(EXIT_UNREACHABLE, f"cannot reach the server at {where}: {text}") from None
        except TimeoutError:
            raise AdminError(EXIT_UNREACHABLE, f"no answer from {where} within {self._timeout:g} s") from None
        except http.client.HTTPException as error:  # not HTTP at all (a status line that is none)
            raise AdminError(EXIT_UNREACHABLE, f"bad response from {where}: not HTTP ({type(error).__name__})") from None
        except OSError as error:  # a reset in the middle of the answer, a closed connection...
            raise AdminError(EXIT_UNREACHABLE, f"cannot reach the server at {where}: {error.strerror or error}") from None
        return _result(status, data, where)


def _read(response: Any) -> bytes:
    data: bytes = response.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise AdminError(EXIT_UNREACHABLE, f"bad response: larger than {MAX_RESPONSE_BYTES} bytes")
    return data


def _result(status: int, data: bytes, where: str) -> Any:
    """The result of an answer, or AdminError. Anything not shaped as the contract says is exit 3:
    a proxy's HTML error page is no answer from Roost, whatever its status."""
    try:
        answer = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        answer = None
    if status == 200 and isinstance(answer, dict) and "result" in answer:
        return answer["result"]
    error = answer.get("error") if isinstance(answer, dict) else None
    if status != 200 and isinstance(error, dict) and isinstance(error.get("code"), str):
        code, message = error["code"], error.get("message")
        text = f"{_clean(code)}: {_clean(message)}" if isinstance(message, str) and message else _clean(code)
        return _raise(EXIT_AUTH if code in _AUTH_CODES or status == 401 else EXIT_REFUSED, text)
    return _raise(EXIT_UNREACHABLE, f"bad response from {where}: HTTP {status}, not the service API's answer")


def _raise(status: int, text: str) -> NoReturn:
    raise AdminError(status, text)


def _clean(text: str, limit: int = 300) -> str:
    """Server text made one short printable line (a hostile server must not paint the terminal)."""
    line = "".join(ch if ch.isprintable() else " " for ch in text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- output -----------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return f"<{len(base64.b64decode(value['$bytes']))} bytes>"
    if isinstance(value, (dict, list)):
        return _clean(json.dumps(value, separators=(",", ":")), 60)
    return _clean(str(value), 60)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart (no trailing spaces)."""
    cells = [list(headers)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def render_rooms(rooms: Sequence[dict[str, Any]]) -> str:
    """A ``LobbyPage``'s rooms. ``logic`` is shown when the entry carries it (``-`` otherwise)."""
    rows = [[r.get("room"), r.get("code"), r.get("public"), f"{_cell(r.get('members'))}/{_cell(r.get('max'))}",
             r.get("phase"), r.get("logic")] for r in rooms]
    return table(["ROOM", "CODE", "PUBLIC", "MEMBERS", "PHASE", "LOGIC"], rows)


def render_room(snapshot: dict[str, Any]) -> str:
    """A ``RoomSnapshot``: a summary, then its page of members."""
    members = snapshot.get("members") or []
    count = snapshot.get("member_count", len(members))
    summary = [
        ("room", snapshot.get("room")), ("code", snapshot.get("code")), ("public", snapshot.get("public")),
        ("phase", snapshot.get("phase")), ("host", snapshot.get("host")),
        ("members", f"{_cell(count)}/{_cell(snapshot.get('max'))}"), ("logic", snapshot.get("logic")),
        ("inactive", snapshot.get("inactive")), ("version", snapshot.get("version")),
        ("epoch/seq", f"{_cell(snapshot.get('epoch'))}/{_cell(snapshot.get('seq'))}"),
        ("chat", snapshot.get("chat_n")), ("created", snapshot.get("created")), ("meta", snapshot.get("meta")),
    ]
    lines = [table(["FIELD", "VALUE"], summary), ""]
    rows = [[m.get("user"), m.get("name"), m.get("status"), m.get("sessions"), m.get("typing")] for m in members]
    lines.append(table(["USER", "NAME", "STATUS", "SESSIONS", "TYPING"], rows))
    if isinstance(count, int) and count > len(members):
        lines.append(f"({len(members)} of {count} members shown)")
    return "\n".join(lines)


def render_stats(stats: dict[str, Any]) -> str:
    """Two columns: counter, value (in the server's order)."""
    return table(["COUNTER", "VALUE"], list(stats.items()))


# -- the command ----------------------------------------------------------------------------------


def _all_rooms(client: AdminClient, args: dict[str, Any]) -> dict[str, Any]:
    """Every room, page by page until a page has no ``next``."""
    rooms: list[Any] = []
    seen: set[str] = set()
    args = dict(args)
    while True:
        page = client.call("rooms", args)
        if not isinstance(page, dict) or not isinstance(page.get("rooms"), list):
            raise AdminError(EXIT_UNREACHABLE, "bad response: a rooms page without a rooms list")
        rooms += page["rooms"]
        cursor = page.get("next")
        if cursor is None:
            return {"rooms": rooms}
        if not isinstance(cursor, str) or cursor in seen:
            raise AdminError(EXIT_UNREACHABLE, "bad response: the server repeated a cursor")
        seen.add(cursor)
        args["cursor"] = cursor


def run(client: AdminClient, op: str, args: dict[str, Any], *, as_json: bool = False, all_pages: bool = False,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one ``roost admin`` operation; print its result (a table, or ``--json``); return the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        result = _all_rooms(client, args) if all_pages else client.call(op, args)
        if as_json:
            print(json.dumps(result, indent=2), file=out)  # ASCII escapes: any terminal or locale takes it
        else:
            renderer: Callable[[Any], str] | None = _RENDERERS.get(op)
            if renderer is not None:
                print(renderer(result), file=out)
                cursor = result.get("next") if op == "rooms" and isinstance(result, dict) else None
                if cursor is not None:
                    print(f"more rooms: roost admin rooms --cursor {_clean(str(cursor))} (or --all)", file=err)
            else:
                print("ok", file=out)
    except AdminError as error:
        print(f"roost: error: {error.text}", file=err)
        return error.status
    except (AttributeError, TypeError, KeyError, ValueError) as error:  # a result not shaped as documented
        print(f"roost: error: bad response: {type(error).__name__} while reading the result (try --json)", file=err)
        return EXIT_UNREACHABLE
    return EXIT_OK


_RENDERERS: dict[str, Callable[[Any], str]] = {
    "rooms": lambda page: render_rooms(page["rooms"]),
    "room": render_room,
    "stats": render_stats,
}
