"""The WebSocket layer of one server connection: bytes in, whole messages out (sans-IO).

It owns everything RFC 6455 asks of a server and nothing of Roost: the HTTP upgrade (with a hook that
may refuse it), fragment assembly, the message size limit (in bytes, counted while fragments arrive),
UTF-8 of text messages (checked by an incremental decoder as bytes arrive, so a bad byte fails at
once), answering pings, and the closing handshake. :class:`~roost.connection.Connection` runs the engine's protocol on
it; ``python -m roost.bench autobahn`` runs an echo server on it that Autobahn|Testsuite checks, so the code
the fuzzer passes is the code the engine runs.

Two parsers, for two costs. The upgrade is wsproto's ``H11Handshake`` (once per connection). Frames are
parsed here (RFC 6455 §5.2, a server's side only: no extension, so any RSV bit is an error) with the
payload unmasked by ``websockets.speedups.apply_mask`` (C). wsproto's ``Connection`` cost ~96 k
instructions per 64-byte frame (generators, namedtuples, enum calls, Python XOR); this path costs a
few k, and every inbound message pays it. websockets' sans-IO ``Protocol`` (~30 k) was the other
candidate: its own close and state machinery would have to be mapped back onto this class's, for 5x
the instructions. The rules and codes are wsproto's, check for check and in its order
(tests/test_websocket.py runs the old wsproto layer, tests/wsproto_layer.py, side by side with this one
over random frames split anywhere).

Closing (RFC 6455 §7.1.7, the trap this module exists to get right): after a protocol violation the
parser is dead (its state is mid-frame and means nothing any more), so waiting for the
peer's Close reply would only wait out a timeout. :meth:`WebSocket.fail` sends our Close and moves
straight to ``CLOSED``; so does answering a peer's Close. Only :meth:`WebSocket.close` (we start a
normal close) waits in ``CLOSING`` for the reply, which the caller bounds in time. ``CLOSED`` means:
flush, half-close TCP and drop it (:meth:`roost.outbox.Transport.linger_close`).

Close reasons are short ASCII words chosen by the server (PROTOCOL.md §8.2): never the library's
exception text, never the peer's own reason echoed back.
"""

from __future__ import annotations

import codecs
import enum
import logging
import re
from collections.abc import Callable, Iterator

from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection
from wsproto.events import Request as HandshakeRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from .outbox import Outbox

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - a platform without the wheel's C extension: websockets' own fallback
    from websockets.utils import apply_mask as _apply_mask

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
_PROTOCOL_ERROR, _INVALID_UTF8, _TOO_BIG = 1002, 1007, 1009
_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))
_PEER_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))
"""Close codes 1000-2999 a peer may send (the rest, and 1005/1006/1015 which never go on the wire, are a
protocol error): wsproto's list, which Autobahn's cases 7.7 and 7.9 pass with; 3000-4999 are all allowed."""
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def _control_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked control frame (FIN set; ``payload`` <= 125 bytes, as every control frame)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def _data_frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload

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


# The members as module globals, for the per-frame checks: ``WsState.OPEN`` is a class attribute
# lookup through EnumType, ~0.4 us each on CPython 3.11 (a global is ~0.02 us), several per frame.
_HANDSHAKE, _OPEN, _CLOSING, _CLOSED, _HTTP = (WsState.HANDSHAKE, WsState.OPEN, WsState.CLOSING, WsState.CLOSED,
                                               WsState.HTTP)


class WebSocket:
    """The server side of one WebSocket connection, over an :class:`~roost.outbox.Outbox`.

    Feed every received chunk to :meth:`receive` and iterate it: it yields each complete message
    (``bytes`` for binary, ``str`` for text) in order, and does everything else (pongs, close replies,
    failing the connection) between the yields, so replies to a message keep their place relative to
    pongs and to a Close. Stop reading once :attr:`state` is ``CLOSED``.
    """

    __slots__ = (
        "_accept",
        "_decoder",
        "_fin",
        "_handshake",
        "_head",
        "_http",
        "_mask",
        "_message",
        "_message_bytes",
        "_message_frames",
        "_offset",
        "_on_ping",
        "_opcode",
        "_pending",
        "_remaining",
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
        self.state = _HANDSHAKE
        self.close_code: int | None = None
        """The code of the Close this side sent (or answered with)."""
        self.close_reason = ""
        self.peer_code: int | None = None
        """The code of the peer's Close, if it sent one (1005: a Close without a code)."""
        self._accept = accept
        self._http = http
        self.http_bytes = b""
        """With ``http=True``, a request that is no upgrade: the bytes of it and of all behind it."""
        self._handshake: H11Handshake | None = H11Handshake(ConnectionType.SERVER)
        self._head = bytearray()
        # The frame parser's state (RFC 6455 §5.2): bytes of an incomplete header or control frame;
        # the data frame being read (its FIN bit, mask, payload bytes read and still to come); the
        # message being assembled (its opcode, UTF-8 decoder if text, parts, bytes and frames so far).
        self._pending = b""
        self._fin = 0
        self._mask = b""
        self._offset = 0
        self._remaining = 0
        self._opcode: int | None = None
        self._decoder: codecs.IncrementalDecoder | None = None
        self._message: list[bytes] | list[str] = []
        self._message_bytes = 0
        self._message_frames = 0

    # -- sending ----------------------------------------------------------------------------------

    def send_message(self, data: bytes | str) -> None:
        """Frame and push one message (an echo; the engine frames its binary frames once itself)."""
        if self.state is _OPEN:
            self.outbox.push(_data_frame(0x1, data.encode()) if isinstance(data, str) else _data_frame(0x2, data))

    def close(self, code: int, reason: str) -> bool:
        """Start the closing handshake: send Close, wait (``CLOSING``) for the peer's.

        Returns False when there is no open WebSocket to close (the caller just drops TCP).
        """
        if self.state is not _OPEN:
            return False
        self._send_close(code, reason)
        self.state = _CLOSING
        return True

    def fail(self, code: int, reason: str | None = None) -> None:
        """_Fail the WebSocket Connection_ (RFC 6455 §7.1.7): send Close if still allowed, then CLOSED.

        No waiting for the reply: after a violation nothing the peer sends can be trusted or parsed.
        """
        if self.state is _OPEN:
            self._send_close(code, FAIL_REASONS.get(code, "") if reason is None else reason)
        self.state = _CLOSED

    def _send_close(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, safe_reason(reason)
        self.outbox.push_final(_control_frame(0x8, code.to_bytes(2, "big") + self.close_reason.encode()))

    # -- receiving --------------------------------------------------------------------------------

    def receive(self, data: bytes) -> Iterator[bytes | str]:
        """Process ``data`` from the peer; yield each message it completes.

        A generator, and lazy on purpose: the frames behind a message are processed only after the
        caller has handled it (its replies go out before a later pong or Close). The trap: nothing
        at all happens until it is iterated, so always iterate it to the end (or until CLOSED).
        """
        if self.state is _HANDSHAKE:
            data = self._on_handshake_bytes(data)
            if self.state is not _OPEN or not data:
                return
        if self.state is _CLOSED:
            return
        if self._pending:
            data, self._pending = self._pending + data, b""
        size, pos = len(data), 0
        try:
            while pos < size:
                if self._remaining:  # inside a data frame's payload: take what has arrived of it
                    take = min(self._remaining, size - pos)
                    chunk, pos = data[pos : pos + take], pos + take
                    message = self._on_payload(chunk, take)
                    if message is not None:
                        yield message
                    if self.state is _CLOSED:
                        return
                    continue
                if size - pos < 2:
                    break
                b0, b1 = data[pos], data[pos + 1]
                opcode, length = b0 & 0x0F, b1 & 0x7F
                # The checks in wsproto's order (so every violation gets the code it got before).
                if opcode not in _OPCODES or (opcode >= 8 and (not b0 & 0x80 or length > 125)):
                    self.fail(_PROTOCOL_ERROR)  # unknown opcode; a fragmented or long control frame
                    return
                head = pos + 2
                if length >= 126:
                    if length == 126:
                        head = pos + 4
                        length = int.from_bytes(data[pos + 2 : head], "big")
                        short = length < 126
                    else:
                        head = pos + 10
                        length = int.from_bytes(data[pos + 2 : head], "big")
                        short = length < 65536 or length >> 63
                    if head > size:
                        break
                    if short:  # a length not in its shortest form (or over 2**63)
                        self.fail(_PROTOCOL_ERROR)
                        return
                if b0 & 0x70 or not b1 & 0x80:  # RSV bits (no extension is negotiated); unmasked (§5.1)
                    self.fail(_PROTOCOL_ERROR)
                    return
                if head + 4 > size:
                    break
                if length and head + 4 == size:
                    break  # checked with its first payload byte (as wsproto did: the same code, not sooner)
                mask = data[head : head + 4]
                if opcode >= 8:  # a control frame: handled whole, so wait for all of it (<= 125 bytes)
                    end = head + 4 + length
                    if end > size:
                        break
                    payload, pos = _apply_mask(data[head + 4 : end], mask), end
                    self._on_control(opcode, payload)
                    if self.state is _CLOSED:
                        return
                    continue
                if self._opcode is None:  # a new message must not start with a continuation
                    if opcode == 0:
                        self.fail(_PROTOCOL_ERROR)
                        return
                    self._opcode = opcode
                    if opcode == 1:
                        self._decoder = _utf8_decoder()
                elif opcode != 0:  # ... and one in progress must go on with continuations only
                    self.fail(_PROTOCOL_ERROR)
                    return
                pos = head + 4
                if b0 == 0x82 and pos + length <= size and self.state is _OPEN and not self._message:
                    # The hot path, inlined (a call is ~1 us): a whole binary message in one frame.
                    self._opcode = None
                    if length > self.max_message_bytes:
                        self.fail(_TOO_BIG)
                        return
                    chunk, pos = data[pos : pos + length], pos + length
                    yield _apply_mask(chunk, mask) if length else chunk
                    if self.state is _CLOSED:
                        return
                    continue
                self._fin, self._mask, self._offset, self._remaining = b0 & 0x80, mask, 0, length
                if pos + length <= size:  # the whole frame is here
                    chunk, pos = data[pos : pos + length], pos + length
                    message = self._on_payload(chunk, length)
                    if message is not None:
                        yield message
                    if self.state is _CLOSED:
                        return
        finally:
            if pos < size and self.state is not _CLOSED:
                self._pending = data[pos:]

    def _on_payload(self, chunk: bytes, take: int) -> bytes | str | None:
        """``take`` more bytes of the current data frame's payload (still masked)."""
        offset = self._offset
        if take:
            mask = self._mask if not offset & 3 else self._mask[offset & 3 :] + self._mask[: offset & 3]
            chunk = _apply_mask(chunk, mask)
        self._offset, self._remaining = offset + take, self._remaining - take
        frame_done = not self._remaining
        finished = frame_done and self._fin
        part: bytes | str = chunk
        if self._decoder is not None:  # text: UTF-8 checked as bytes arrive, so a bad byte fails at once
            try:
                part = self._decoder.decode(chunk, bool(finished))
            except UnicodeDecodeError:
                self.fail(_INVALID_UTF8)
                return None
        if finished:
            self._opcode = self._decoder = None
        if self.state is not _OPEN:
            return None  # we are closing: data is dropped (RFC 6455 §5.5.1), still checked
        self._message_bytes += len(part.encode()) if isinstance(part, str) else take
        self._message_frames += frame_done
        if self._message_bytes > self.max_message_bytes or self._message_frames > MAX_FRAGMENTS:
            self._message.clear()
            self.fail(_TOO_BIG)
            return None
        if not finished:
            if part:
                self._message.append(part)  # type: ignore[arg-type]  # one message is all str or all bytes
            return None
        parts, self._message_bytes, self._message_frames = self._message, 0, 0
        if not parts:
            return part  # a message in one frame
        parts.append(part)  # type: ignore[arg-type]
        self._message = []
        if isinstance(part, str):
            return "".join(parts)  # type: ignore[arg-type]
        return b"".join(parts)  # type: ignore[arg-type]

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:  # ping
            if self.state is _OPEN and self._on_ping is not None:
                self._on_ping()  # may close (rate limit): then no pong, only the Close
            if self.state is _OPEN:  # after our Close, no more frames but the Close
                self.outbox.push(_control_frame(0xA, payload))
            return
        if opcode == 0xA:  # pong: nothing to do
            return
        # Close (RFC 6455 §5.5.1, §7.4): the rules wsproto applied, with its codes.
        code = 1005
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if len(payload) == 1 or not (code in _PEER_CODES or 3000 <= code <= 4999):
                self.fail(_PROTOCOL_ERROR)
                return
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self.fail(_INVALID_UTF8)
                return
        self.peer_code = code
        if self.state is _OPEN:  # the peer closes first: answer, done
            self.close_code, self.close_reason = code, ""
            # Echo the code (1005, a Close without one, is answered without one), not the reason.
            self.outbox.push_final(_control_frame(0x8, b"" if code == 1005 else code.to_bytes(2, "big")))
        self.state = _CLOSED  # or: the peer answered our Close

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
                self.state = _CLOSED
            return b""
        request, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
        self._head.clear()
        assert self._handshake is not None  # only read in HANDSHAKE, which the head's end leaves
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
                self.state = _CLOSED
            return b""
        if self.state is _HANDSHAKE:  # a request that is no upgrade at all
            if self._http:
                self._to_http(request + rest)
                return b""
            self.state = _CLOSED
        return rest

    def _to_http(self, data: bytes) -> None:
        self.http_bytes = data
        self.state = _HTTP

    def _on_request(self, request: HandshakeRequest) -> None:
        handshake = self._handshake
        assert handshake is not None
        reject = self._accept(request) if self._accept is not None else None
        if reject is not None:
            self.outbox.push_final(handshake.send(reject))
            self.state = _CLOSED
            return
        self.outbox.push(handshake.send(AcceptConnection()))
        self.state = _OPEN
        self._handshake = None  # done with: wsproto's and h11's state is ~3.5 KB per idle connection
