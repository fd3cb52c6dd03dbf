"""Plain HTTP on the WebSocket port: ``GET /health``, ``GET /metrics`` and the service API under ``/api/``.

A request that is not a WebSocket upgrade is handed here by :class:`~roost.websocket.WebSocket` (its
head already complete and within ``MAX_REQUEST_HEAD``); :class:`~roost.connection.Connection` feeds
the rest of the bytes to a :class:`RequestReader`, answers with what :class:`HttpService` returns, and
closes. The reader and the JSON rules are sans-IO; only :meth:`HttpService.respond` awaits (an admin
operation runs in a room's turn).

Deliberately small, because it shares a port with the realtime traffic and must not become its weak
spot: one request per connection (every answer says ``connection: close``; a pipelined second request
is never read), bodies by ``Content-Length`` only (chunked is 411), the body bounded in bytes (413
before it is read), and the whole exchange bounded by the connection's auth deadline (PROTOCOL.md §11).

The service API (PROTOCOL.md §11.2) is :class:`~roost.admin.Admin`, the same object the WebSocket
``admin`` frame calls: this module only translates JSON and statuses. JSON in is checked like a
msgpack frame (duplicate keys, NaN and Infinity are malformed, nesting is capped at ``max_depth``);
JSON out maps what msgpack carries and JSON cannot (byte strings, non-finite floats) to one-key
objects (``{"$bytes": base64}``, ``{"$float": "NaN"}``).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import http
import json
import math
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h11

from roost.protocol.errors import ErrorCode, LocalProtocolError
from roost.protocol.frames import OPAQUE_MAP, AdminOp
from roost.protocol.schema import FieldProblem, Limits

from .errors import RoomError
from .websocket import MAX_REQUEST_HEAD

if TYPE_CHECKING:
    from .admin import Admin

__all__ = [
    "STATUS_OF",
    "Availability",
    "Exposition",
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "HttpService",
    "RequestReader",
    "Routes",
    "dump_json",
    "load_json_object",
]

Exposition = Callable[[], tuple[bytes, str]]
"""What ``GET /metrics`` serves: a callable returning the body and its content type."""

Routes = Callable[["HttpRequest"], "HttpResponse | None"]
"""Extra GET/HEAD routes (``roost serve --dev``'s demo site, :mod:`roost.devsite`): a response, or None
for a path that is not theirs (then 404). Asked after the engine's own paths, so they cannot shadow them."""


class Availability(enum.Enum):
    """Whether the engine takes clients; the value is what ``GET /health`` says."""

    STARTING = "starting"
    """Rooms are still being restored: WebSocket upgrades and the service API answer 503."""
    SERVING = "serving"
    DRAINING = "draining"
    """A graceful shutdown: clients are being closed; upgrades and the service API answer 503."""


STATUS_OF: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.NOT_A_MAP: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.MISSING_FIELD: 400,
    ErrorCode.BAD_FIELD: 400,
    ErrorCode.TOO_LONG: 400,
    ErrorCode.TOO_DEEP: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_MEMBER: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ROOM_FULL: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_STATE: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.LIMIT_REACHED: 429,
    ErrorCode.UNSUPPORTED: 404,
    ErrorCode.INTERNAL: 500,
    ErrorCode.MOVED: 421,  # Misdirected Request: another node serves the room
    ErrorCode.UNAVAILABLE: 503,
}
"""The HTTP status of each error code of the service API (PROTOCOL.md §11.2): the one table."""

_READ_ONLY = frozenset({AdminOp.ROOMS, AdminOp.ROOM, AdminOp.STATS, AdminOp.USER_GET, AdminOp.USERS, AdminOp.USER_AUDIT})
_OP_METHODS: dict[AdminOp, tuple[str, ...]] = {
    op: ("GET", "HEAD", "POST") if op in _READ_ONLY else ("POST",)
    for op in AdminOp
}
"""Read-only operations also answer GET (arguments in the query string), for curl and browsers."""

_ROUTE_METHODS = ("GET", "HEAD")
_METHODS = frozenset({"GET", "HEAD", "POST"})
_INT_QUERY_ARGS = frozenset({"limit"})
"""Query arguments that are integers; every other one is a string."""
_MSGPACK_INTS = (-(2**63), 2**64 - 1)
"""The integers msgpack can carry: a JSON integer outside is ``bad_field``, as it could not be stored."""


# -- messages ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequest:
    """One complete request: method and path as sent, headers with lower-case names, the whole body."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower case), in order."""
        return [value for key, value in self.headers if key == name]


@dataclasses.dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, value: Any, *headers: tuple[str, str]) -> HttpResponse:
        return cls(status, dump_json(value), headers=headers)

    @classmethod
    def error(cls, status: int, code: ErrorCode, message: str, *headers: tuple[str, str]) -> HttpResponse:
        return cls.json(status, {"error": {"code": code.value, "message": message[:512]}}, *headers)


class HttpError(Exception):
    """The request cannot be served; :attr:`response` says why (400, 411, 413)."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


def render(response: HttpResponse, *, head_only: bool = False) -> bytes:
    """The bytes of ``response``: status line, headers, ``connection: close``, the body unless HEAD.

    Written by hand, not by h11: h11 refuses to send once the peer's bytes broke its parser, and an
    error answer is exactly what is sent then.
    """
    lines = [
        f"HTTP/1.1 {response.status} {http.HTTPStatus(response.status).phrase}",
        f"content-type: {response.content_type}",
        f"content-length: {len(response.body)}",
        "cache-control: no-store",
        "connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


# -- reading a request (sans-IO) --------------------------------------------------------------------


class RequestReader:
    """Parses one request from bytes fed in any pieces; refuses what it will not read.

    :meth:`receive` returns the request once its body is complete, None while more is needed, and
    raises :class:`HttpError` for a request that will not be served (malformed 400, chunked 411,
    ``Content-Length`` over ``max_body`` 413, decided at the head, before any body is read). Only
    the first request is read: bytes behind it (a pipelined request) stay unparsed.
    """

    __slots__ = ("_body", "_h11", "_max_body", "_request", "interim")

    def __init__(self, *, max_body: int) -> None:
        # The head reached us whole and within MAX_REQUEST_HEAD (the WebSocket layer checked it).
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._max_body = max_body
        self._request: h11.Request | None = None
        self._body = bytearray()
        self.interim = b""
        """Bytes to send before the answer (``100 Continue`` to a client that waits for it); the
        caller sends and clears them."""

    def receive(self, data: bytes) -> HttpRequest | None:
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(HttpResponse.error(400, ErrorCode.MALFORMED, "malformed HTTP request")) from exc
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Request):
                self._on_head(event)
            elif isinstance(event, h11.Data):
                self._body += event.data  # h11 stops at Content-Length, which _on_head bounded
            elif isinstance(event, h11.EndOfMessage):
                return self._complete()
            else:  # pragma: no cover - h11 yields no other event to a server before the end of a request
                raise HttpError(HttpResponse.error(400, ErrorCode.MALFORMED, "malformed HTTP request"))

    def _on_head(self, request: h11.Request) -> None:
        self._request = request
        headers = {name for name, _value in request.headers}
        if b"transfer-encoding" in headers:
            raise HttpError(HttpResponse.error(411, ErrorCode.BAD_FIELD, "bodies by content-length only"))
        length = next((int(value) for name, value in request.headers if name == b"content-length"), 0)
        if length > self._max_body:
            raise HttpError(HttpResponse.error(413, ErrorCode.TOO_LARGE,
                                               f"body of {length} bytes exceeds {self._max_body}"))
        if self._h11.they_are_waiting_for_100_continue:
            self.interim = b"HTTP/1.1 100 Continue\r\n\r\n"

    @property
    def head_only(self) -> bool:
        """Whether the answer goes without its body (a HEAD request)."""
        return self._request is not None and self._request.method == b"HEAD"

    def _complete(self) -> HttpRequest:
        request = self._request
        assert request is not None
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        return HttpRequest(
            method=request.method.decode("ascii", "replace"), path=path, query=query,
            headers=tuple((bytes(name), bytes(value)) for name, value in request.headers),
            body=bytes(self._body),
        )


# -- JSON -------------------------------------------------------------------------------------------


class _JsonProblem(ValueError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _JsonProblem(ErrorCode.MALFORMED, "a JSON object has a key twice")
    return result


def _refuse_constant(name: str) -> Any:
    raise _JsonProblem(ErrorCode.MALFORMED, f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity: the same refusal as the literal
        raise _JsonProblem(ErrorCode.MALFORMED, f"{text} is not a finite number")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)  # over 4,300 digits: ValueError, malformed
    if not _MSGPACK_INTS[0] <= value <= _MSGPACK_INTS[1]:
        raise _JsonProblem(ErrorCode.BAD_FIELD, "an integer outside the 64-bit range")
    return value


def load_json_object(body: bytes, limits: Limits) -> dict[str, Any]:
    """The JSON object in ``body``, checked as the ``args`` of an ``admin`` frame are, or RoomError.

    Refused: bytes that are not UTF-8 JSON, a key given twice, ``NaN``/``Infinity`` (and numbers that
    overflow to it), integers msgpack cannot carry (``malformed`` or ``bad_field``), a value that is
    not an object (``not_a_map``), nesting deeper than ``limits.max_depth`` (``too_deep``). The trap:
    Python's parser recurses, so a body of 60,000 ``[`` raises RecursionError, not a decode error.
    """
    try:
        value = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant,
                           parse_float=_finite_float, parse_int=_bounded_int)
    except _JsonProblem as problem:
        raise RoomError(problem.code, str(problem)) from None
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RoomError(ErrorCode.MALFORMED, "the body is not JSON") from None
    if type(value) is not dict:
        raise RoomError(ErrorCode.NOT_A_MAP, "the body must be a JSON object")
    try:
        OPAQUE_MAP.load(value, limits)
    except FieldProblem as problem:
        raise RoomError(problem.code, problem.message) from None
    return value


def _to_json(value: Any) -> Any:
    """``value`` with byte strings as ``{"$bytes": base64}`` and non-finite floats as ``{"$float": ...}``."""
    kind = type(value)
    if kind is dict:
        return {key: _to_json(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [_to_json(item) for item in value]
    if kind is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if kind is float and not math.isfinite(value):
        return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    return value


def dump_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of a result (records nest to a bounded depth: the recursion is safe)."""
    return json.dumps(_to_json(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


# -- routing ----------------------------------------------------------------------------------------


class HttpService:
    """Answers one parsed request: the routes, the credential, JSON in and out."""

    def __init__(self, admin: Admin, limits: Limits, availability: Callable[[], Availability],
                 exposition: Exposition | None = None, routes: Routes | None = None) -> None:
        self._admin = admin
        self._routes = routes
        self._limits = limits
        self._availability = availability
        self._exposition = exposition

    async def respond(self, request: HttpRequest, remote: str) -> HttpResponse:
        method, path = request.method, request.path
        if any(b"websocket" in value.lower() for value in request.header(b"upgrade")):
            # An upgrade the WebSocket layer refused (no key, wrong version): what wsproto answers.
            return HttpResponse.error(400, ErrorCode.MALFORMED, "bad WebSocket handshake")
        if path == "/api" or path.startswith("/api/"):
            if not self._admin.enabled:  # fail closed: no route under /api/ exists, whatever the method
                return HttpResponse.error(404, ErrorCode.UNSUPPORTED,
                                          "the service API is disabled (no service key configured)")
            return await self._api(request, remote)
        if method not in _METHODS:
            return _not_allowed(_ROUTE_METHODS)
        if path == "/health":
            if method not in _ROUTE_METHODS:
                return _not_allowed(_ROUTE_METHODS)
            availability = self._availability()
            return HttpResponse.json(200 if availability is Availability.SERVING else 503,
                                     {"status": availability.value})
        if path == "/metrics" and self._exposition is not None:
            if method not in _ROUTE_METHODS:
                return _not_allowed(_ROUTE_METHODS)
            body, content_type = self._exposition()
            return HttpResponse(200, body, content_type)
        if self._routes is not None and method in _ROUTE_METHODS:
            routed = self._routes(request)
            if routed is not None:
                return routed
        return HttpResponse.error(404, ErrorCode.NOT_FOUND, "no such path")

    async def _api(self, request: HttpRequest, remote: str) -> HttpResponse:
        try:
            op = AdminOp(request.path[len("/api/"):])
        except ValueError:
            return HttpResponse.error(404, ErrorCode.NOT_FOUND, "no such operation")
        methods = _OP_METHODS[op]
        if request.method not in methods:
            return _not_allowed(methods)
        credential = _bearer(request)
        try:
            # The credential first: nothing about the body is told to a caller without it.
            self._admin.authorize(credential, remote, op)
        except RoomError as error:
            return HttpResponse.error(STATUS_OF[error.code], error.code, error.message,
                                      ("www-authenticate", 'Bearer realm="roost"'))
        availability = self._availability()
        if availability is not Availability.SERVING:
            return HttpResponse.error(503, ErrorCode.INVALID_STATE, f"the server is {availability.value}",
                                      ("retry-after", "1"))
        try:
            args = _query_args(request.query) if request.method != "POST" else (
                load_json_object(request.body, self._limits) if request.body.strip() else {})
            result = await self._admin.call(op, args, credential, remote=remote)
        except RoomError as error:
            headers = (("retry-after", str(math.ceil(error.retry_ms / 1000))),) if error.retry_ms else ()
            return HttpResponse.error(STATUS_OF[error.code], error.code, error.message, *headers)
        except LocalProtocolError as error:
            # A result this server cannot encode (over its limits): as the WebSocket path answers.
            code = ErrorCode.TOO_LARGE if error.code is ErrorCode.TOO_LARGE else ErrorCode.INTERNAL
            return HttpResponse.error(STATUS_OF[code], code, "the reply cannot be sent within the server's limits")
        return HttpResponse.json(200, {"result": result})


def _not_allowed(methods: tuple[str, ...]) -> HttpResponse:
    return HttpResponse.error(405, ErrorCode.UNSUPPORTED, "method not allowed", ("allow", ", ".join(methods)))


def _bearer(request: HttpRequest) -> bytes | None:
    """The credential of ``Authorization: Bearer <credential>`` (one such header), else None."""
    values = request.header(b"authorization")
    if len(values) != 1:
        return None
    scheme, _, credential = values[0].partition(b" ")
    credential = credential.strip()
    return credential if scheme.lower() == b"bearer" and credential else None


def _query_args(query: str) -> dict[str, Any]:
    """The arguments of a GET: ``?room=r1`` → ``{"room": "r1"}``; ``limit`` is an integer."""
    try:
        pairs = urllib.parse.parse_qsl(query, strict_parsing=bool(query), errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise RoomError(ErrorCode.MALFORMED, "malformed query string") from None
    args: dict[str, Any] = {}
    for name, value in pairs:
        if name in args:
            raise RoomError(ErrorCode.BAD_FIELD, f"query argument {name} given twice")
        if name in _INT_QUERY_ARGS:
            if not value.isascii() or not value.isdigit() or len(value) > 16:
                raise RoomError(ErrorCode.BAD_FIELD, f"args.{name} must be an integer")
            args[name] = int(value)
        else:
            args[name] = value
    return args
