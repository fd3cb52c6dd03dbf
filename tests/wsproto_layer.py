"""The WebSocket layer as it was over wsproto (engine/websocket.py before issue 9): the reference the
C-masked parser is checked against in tests/test_websocket.py. Not used by the product.

The old module docstring follows.

It owns everything RFC 6455 asks of a server and nothing of Roost: the HTTP upgrade (with a hook that
may refuse it), fragment assembly, the message size limit (in bytes, counted while fragments arrive),
UTF-8 of text messages (checked by wsproto as bytes arrive, so a bad byte fails at once), answering
pings, and the closing handshake. :class:`~roost.connection.Connection` runs the engine's protocol on
it; ``python -m roost.bench autobahn`` runs an echo server on it that Autobahn|Testsuite checks, so the code
the fuzzer passes is the code the engine runs.

Closing (RFC 6455 §7.1.7, the trap this module exists to get right): after a protocol violation the
parser is dead (wsproto's frame generator has raised and yields nothing more), so waiting for the
peer's Close reply would only wait out a timeout. :meth:`WebSocket.fail` sends our Close and moves
straight to ``CLOSED``; so does answering a peer's Close. Only :meth:`WebSocket.close` (we start a
normal close) waits in ``CLOSING`` for the reply, which the caller bounds in time. ``CLOSED`` means:
flush, half-close TCP and drop it (:meth:`roost.outbox.Transport.linger_close`).

Close reasons are short ASCII words chosen by the server (PROTOCOL.md §8.2): never the library's
exception text, never the peer's own reason echoed back.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Iterator

from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as HandshakeRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from roost.outbox import Outbox

__all__ = ["FAIL_REASONS", "MAX_FRAGMENTS", "MAX_REQUEST_HEAD", "WebSocket", "WsState", "safe_reason"]

log = logging.getLogger("roost.websocket")

MAX_REQUEST_HEAD = 16 * 1024
"""Bytes of HTTP request head (up to its blank line) accepted; more is answered 431."""

FAIL_REASONS: dict[int, str] = {
    1002: "protocol error",
    1003: "unsupported data",
    1007: "invalid utf-8",
    1009: "message too big",
}
"""The reason sent with each code the WebSocket layer fails a connection with (PROTOCOL.md §8.2)."""

MAX_FRAGMENTS = 1024
"""Frames one message may arrive in (1009 beyond). The byte limit alone does not bound them: an
empty continuation frame adds nothing to it, so a peer could send 1 GB of them (6 bytes each), each
kept and each counted as activity, without ever finishing a message."""

_REASON = re.compile(r"[A-Za-z0-9 _.,:/+-]{0,64}")
_TOO_BIG = 1009

Accept = Callable[[HandshakeRequest], RejectConnection | None]
"""The upgrade hook: ``None`` accepts the request; a :class:`RejectConnection` is sent instead."""


def safe_reason(reason: str) -> str:
    """``reason`` if it is a short ASCII word or phrase (PROTOCOL.md §8.2), else ``""``.

    A guard, not a filter for user text: every reason the server sends is a constant; this only keeps
    a future mistake (an exception's text, a peer's string) off the wire.
    """
    if _REASON.fullmatch(reason):
        return reason
    log.error("close reason %r is not a short ASCII word: sent without it", reason)
    return ""


class WsState(enum.Enum):
    HANDSHAKE = "handshake"
    """Reading the HTTP upgrade request."""
    OPEN = "open"
    CLOSING = "closing"
    """We sent a Close (:meth:`WebSocket.close`) and wait for the peer's; data is ignored meanwhile."""
    CLOSED = "closed"
    """Nothing more to read or say: flush and close TCP now."""
    HTTP = "http"
    """The request is plain HTTP, not an upgrade (only with ``http=True``): its bytes are in
    :attr:`WebSocket.http_bytes` for the HTTP layer (engine/http.py); this object is done."""


class WebSocket:
    """The server side of one WebSocket connection, over an :class:`~roost.outbox.Outbox`.

    Feed every received chunk to :meth:`receive` and iterate it: it yields each complete message
    (``bytes`` for binary, ``str`` for text) in order, and does everything else (pongs, close replies,
    failing the connection) between the yields, so replies to a message keep their place relative to
    pongs and to a Close. Stop reading once :attr:`state` is ``CLOSED``.
    """

    __slots__ = (
        "_accept",
        "_handshake",
        "_head",
        "_http",
        "_message",
        "_message_bytes",
        "_message_frames",
        "_on_ping",
        "_text",
        "_ws",
        "close_code",
        "close_reason",
        "http_bytes",
        "max_message_bytes",
        "outbox",
        "peer_code",
        "state",
    )

    def __init__(self, outbox: Outbox, *, max_message_bytes: int, accept: Accept | None = None,
                 on_ping: Callable[[], None] | None = None, http: bool = False) -> None:
        self.outbox = outbox
        self._on_ping = on_ping
        """Called for each ping before its pong (the engine charges it to its rate limit)."""
        self.max_message_bytes = max_message_bytes
        self.state = WsState.HANDSHAKE
        self.close_code: int | None = None
        """The code of the Close this side sent (or answered with)."""
        self.close_reason = ""
        self.peer_code: int | None = None
        """The code of the peer's Close, if it sent one (1005: a Close without a code)."""
        self._accept = accept
        self._http = http
        self.http_bytes = b""
        """With ``http=True``, a request that is no upgrade: the bytes of it and of all behind it."""
        self._handshake = H11Handshake(ConnectionType.SERVER)
        self._ws: WsConnection | None = None
        self._head = bytearray()
        self._message: list[bytes] | list[str] = []
        self._message_bytes = 0
        self._message_frames = 0
        self._text = False

    # -- sending ----------------------------------------------------------------------------------

    def send_message(self, data: bytes | str) -> None:
        """Frame and push one message (an echo; the engine frames its binary frames once itself)."""
        if self.state is WsState.OPEN:
            assert self._ws is not None
            event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
            self.outbox.push(self._ws.send(event))

    def close(self, code: int, reason: str) -> bool:
        """Start the closing handshake: send Close, wait (``CLOSING``) for the peer's.

        Returns False when there is no open WebSocket to close (the caller just drops TCP).
        """
        if self.state is not WsState.OPEN:
            return False
        self._send_close(code, reason)
        self.state = WsState.CLOSING
        return True

    def fail(self, code: int, reason: str | None = None) -> None:
        """_Fail the WebSocket Connection_ (RFC 6455 §7.1.7): send Close if still allowed, then CLOSED.

        No waiting for the reply: after a violation nothing the peer sends can be trusted or parsed.
        """
        if self.state is WsState.OPEN:
            self._send_close(code, FAIL_REASONS.get(code, "") if reason is None else reason)
        self.state = WsState.CLOSED

    def _send_close(self, code: int, reason: str) -> None:
        assert self._ws is not None
        self.close_code, self.close_reason = code, safe_reason(reason)
        self.outbox.push_final(self._ws.send(CloseConnection(code=code, reason=self.close_reason)))

    # -- receiving --------------------------------------------------------------------------------

    def receive(self, data: bytes) -> Iterator[bytes | str]:
        """Process ``data`` from the peer; yield each message it completes.

        A generator, and lazy on purpose: the frames behind a message are processed only after the
        caller has handled it (its replies go out before a later pong or Close). The trap: nothing
        at all happens until it is iterated, so always iterate it to the end (or until CLOSED).
        """
        if self.state is WsState.HANDSHAKE:
            data = self._on_handshake_bytes(data)
            if self.state is not WsState.OPEN or not data:
                return
        if self.state is WsState.CLOSED:
            return
        assert self._ws is not None
        self._ws.receive_data(data)
        for event in self._ws.events():
            message = self._on_event(event)
            if message is not None:
                yield message
            if self.state is WsState.CLOSED:
                return

    def _on_event(self, event: object) -> bytes | str | None:
        ws = self._ws
        assert ws is not None
        if isinstance(event, BytesMessage | TextMessage):
            if self.state is not WsState.OPEN:
                return None  # we are closing: data is dropped (RFC 6455 §5.5.1)
            return self._on_data(event)
        if isinstance(event, Ping):
            if self.state is WsState.OPEN and self._on_ping is not None:
                self._on_ping()  # may close (rate limit): then no pong, only the Close
            if self.state is WsState.OPEN:  # after our Close, no more frames but the Close (wsproto too)
                self.outbox.push(ws.send(event.response()))
            return None
        if isinstance(event, CloseConnection):
            if ws.state is ConnectionState.REMOTE_CLOSING:  # the peer closes first: answer, done
                self.peer_code = int(event.code)
                self.close_code, self.close_reason = int(event.code), ""
                # Echo the code (1005, a Close without one, is answered without one), not the reason.
                self.outbox.push_final(ws.send(CloseConnection(code=event.code)))
                self.state = WsState.CLOSED
            elif ws.state is ConnectionState.CLOSED:  # the peer answered our Close
                self.peer_code = int(event.code)
                self.state = WsState.CLOSED
            else:  # wsproto found a violation (its parser is dead now): fail with the code it chose
                self.fail(int(event.code))
        return None  # pongs: nothing to do

    def _on_data(self, event: BytesMessage | TextMessage) -> bytes | str | None:
        chunk = event.data
        if not self._message:
            self._text = isinstance(event, TextMessage)
        self._message_bytes += len(chunk.encode()) if isinstance(chunk, str) else len(chunk)
        self._message_frames += event.frame_finished  # wsproto also hands out parts of one frame
        if self._message_bytes > self.max_message_bytes or self._message_frames > MAX_FRAGMENTS:
            self._message.clear()
            self.fail(_TOO_BIG)
            return None
        if chunk or not self._message:
            self._message.append(chunk)  # type: ignore[arg-type]  # one message is all str or all bytes
        if not event.message_finished:
            return None
        parts, self._message, self._message_bytes, self._message_frames = self._message, [], 0, 0
        if self._text:
            return "".join(parts)  # type: ignore[arg-type]
        return parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[arg-type]

    def _on_handshake_bytes(self, data: bytes) -> bytes:
        """Feed the HTTP upgrade request to wsproto; return the bytes behind it (frames, if any).

        Only the request itself goes to the handshake: bytes behind it (a client that sends frames
        without waiting for the 101, which RFC 6455 §4.1 forbids but happens) are handed to the
        WebSocket connection once accepted, instead of being lost inside the HTTP parser.
        """
        self._head += data
        # Search only the new bytes (and the 3 before them): a head sent a byte at a time must not
        # cost a scan of the whole buffer per byte (16 KiB in 1-byte reads: 134 MB scanned).
        end = self._head.find(b"\r\n\r\n", max(0, len(self._head) - len(data) - 3))
        if end < 0 or end > MAX_REQUEST_HEAD:
            # 431 exactly when the head (before its blank line) is over the bound, however it was
            # split: whole in one read, or in pieces (then as soon as no end could still be in bounds).
            if end >= 0 or len(self._head) > MAX_REQUEST_HEAD + 3:
                self.outbox.push_final(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
                self.state = WsState.CLOSED
            return b""
        request, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
        self._head.clear()
        try:
            self._handshake.receive_data(request)
            for event in self._handshake.events():
                if isinstance(event, HandshakeRequest):
                    self._on_request(event)
        except WsRemoteProtocolError as exc:
            # Not a WebSocket handshake: the HTTP layer's, if there is one (it parses the request
            # again: only this path pays for it, the upgrade path parses once). Else wsproto's
            # HTTP rejection, and drop TCP.
            if self._http:
                self._to_http(request + rest)
            else:
                if exc.event_hint is not None:
                    self.outbox.push_final(self._handshake.send(exc.event_hint))
                self.state = WsState.CLOSED
            return b""
        if self.state is WsState.HANDSHAKE:  # a request that is no upgrade at all
            if self._http:
                self._to_http(request + rest)
                return b""
            self.state = WsState.CLOSED
        return rest

    def _to_http(self, data: bytes) -> None:
        self.http_bytes = data
        self.state = WsState.HTTP

    def _on_request(self, request: HandshakeRequest) -> None:
        reject = self._accept(request) if self._accept is not None else None
        if reject is not None:
            self.outbox.push_final(self._handshake.send(reject))
            self.state = WsState.CLOSED
            return
        self.outbox.push(self._handshake.send(AcceptConnection()))
        self._ws = self._handshake.connection
        self.state = WsState.OPEN
