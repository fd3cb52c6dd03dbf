"""The WebSocket layer alone (engine/websocket.py): any split of the input gives the same result."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from roost.outbox import Outbox, Transport
from roost.websocket import FAIL_REASONS, MAX_REQUEST_HEAD, WebSocket, WsState, safe_reason
from tests.wire import server_frames
from tests.wsproto_layer import WebSocket as OldWebSocket

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MASK = b"\x37\xfa\x21\x3d"


class Recorder(Transport):
    """Takes every byte at once and keeps them."""

    def __init__(self) -> None:
        self.out = bytearray()

    def try_send(self, data: bytes | memoryview) -> int:
        self.out += data
        return len(data)

    async def wait_writable(self) -> None:  # pragma: no cover - try_send takes all
        pass

    async def send_some(self, data: bytes | memoryview) -> int:  # pragma: no cover - try_send takes all
        return self.try_send(data)

    async def receive_some(self) -> bytes:  # pragma: no cover - the tests feed bytes by hand
        return b""

    async def aclose(self) -> None:  # pragma: no cover
        pass


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame, masked with a real key."""
    size = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    if size < 126:
        head += bytes((0x80 | size,))
    elif size < 65536:
        head += bytes((0x80 | 126,)) + size.to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + size.to_bytes(8, "big")
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def open_socket(limit: int = 1 << 20) -> tuple[WebSocket, Recorder]:
    recorder = Recorder()
    outbox = Outbox(recorder, max_frames=1 << 20, max_bytes=1 << 30, on_overflow=lambda: None)
    websocket = WebSocket(outbox, max_message_bytes=limit)
    return websocket, recorder


def after_upgrade(recorder: Recorder) -> list[tuple[int, bytes]]:
    out = bytes(recorder.out)
    assert out.startswith(b"HTTP/1.1 101"), out[:40]
    return server_frames(bytearray(out[out.index(b"\r\n\r\n") + 4 :]))


message = st.one_of(
    st.binary(max_size=300).map(lambda b: ("bin", b)),
    st.text(max_size=100).map(lambda t: ("text", t)),
)


@st.composite
def conversation(draw: st.DrawFn) -> tuple[bytes, list[bytes | str], list[tuple[int, bytes]]]:
    """Client bytes (messages fragmented at random, pings in between, then a violation), with the
    messages the layer must yield and the frames it must send (pongs in order, then Close 1002)."""
    wire, messages, replies = bytearray(UPGRADE), [], []
    for kind, data in draw(st.lists(message, max_size=8)):
        payload = data if isinstance(data, bytes) else data.encode()
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for index, part in enumerate(parts):
            opcode = (0x2 if kind == "bin" else 0x1) if index == 0 else 0x0
            wire += frame(opcode, part, fin=index == len(parts) - 1)
            if draw(st.booleans()):
                ping = draw(st.binary(max_size=125))
                wire += frame(0x9, ping)
                replies.append((0xA, ping))
        messages.append(data)
    wire += b"\xc2\x80" + MASK  # RSV1 without an extension: a violation
    replies.append((0x8, struct.pack("!H", 1002) + b"protocol error"))
    return bytes(wire), messages, replies


@settings(max_examples=200, deadline=None)
@given(conversation(), st.lists(st.integers(1, 64), min_size=1, max_size=200))
def test_any_split_of_the_input_gives_the_same_messages_pongs_and_close(case, sizes) -> None:
    wire, expected_messages, expected_frames = case
    websocket, recorder = open_socket()
    got: list[bytes | str] = []
    offset, index = 0, 0
    while offset < len(wire) and websocket.state is not WsState.CLOSED:
        size = sizes[index % len(sizes)]
        got.extend(websocket.receive(wire[offset : offset + size]))
        offset, index = offset + size, index + 1
    assert got == expected_messages
    assert after_upgrade(recorder) == expected_frames
    assert websocket.state is WsState.CLOSED


def test_a_message_over_the_limit_fails_while_its_fragments_arrive() -> None:
    websocket, recorder = open_socket(limit=1000)
    assert list(websocket.receive(UPGRADE + frame(0x2, b"a" * 600, fin=False))) == []
    assert list(websocket.receive(frame(0x0, b"b" * 401))) == []  # 1001 bytes: one over
    assert websocket.state is WsState.CLOSED
    assert after_upgrade(recorder) == [(0x8, struct.pack("!H", 1009) + b"message too big")]


def test_while_closing_data_is_dropped_pings_are_not_answered_and_the_reply_ends_it() -> None:
    websocket, recorder = open_socket()
    list(websocket.receive(UPGRADE))
    assert websocket.close(4003, "heartbeat timeout")
    assert not websocket.close(4003, "heartbeat timeout")  # once
    assert list(websocket.receive(frame(0x2, b"late") + frame(0x9, b"ping?"))) == []
    assert websocket.state is WsState.CLOSING
    list(websocket.receive(frame(0x8, struct.pack("!H", 1000))))
    assert websocket.state is WsState.CLOSED
    assert (websocket.close_code, websocket.peer_code) == (4003, 1000)
    assert after_upgrade(recorder) == [(0x8, struct.pack("!H", 4003) + b"heartbeat timeout")]


def test_a_violation_while_closing_ends_it_without_a_second_close() -> None:
    websocket, recorder = open_socket()
    list(websocket.receive(UPGRADE))
    websocket.close(1001, "resume")
    list(websocket.receive(b"\x83\x80" + MASK))  # reserved opcode
    assert websocket.state is WsState.CLOSED
    assert [opcode for opcode, _ in after_upgrade(recorder)] == [0x8]


def test_close_reasons_are_short_ascii_words() -> None:
    assert all(safe_reason(reason) == reason for reason in FAIL_REASONS.values())
    assert safe_reason("resume") == "resume"
    assert safe_reason("caf\u00e9") == ""
    assert safe_reason("x" * 65) == ""
    assert safe_reason("line\nbreak") == ""


def test_a_flood_of_empty_continuation_frames_fails_the_connection() -> None:
    """Empty fragments add no bytes to the size limit: 1 GB of them (6 bytes each on the wire) used to
    be kept one list entry each, for ever, and refresh the heartbeat. A message has a fragment cap."""
    websocket, recorder = open_socket(limit=64 * 1024)
    list(websocket.receive(UPGRADE + frame(0x2, b"a", fin=False)))
    chunk = frame(0x0, b"", fin=False) * 10_000  # 60 KB of wire, as one recv could bring
    for _ in range(20):
        assert list(websocket.receive(chunk)) == []
        if websocket.state is WsState.CLOSED:
            break
    assert websocket.state is WsState.CLOSED
    assert after_upgrade(recorder) == [(0x8, struct.pack("!H", 1009) + b"message too big")]


def test_a_message_in_many_small_fragments_is_still_assembled() -> None:
    websocket, _recorder = open_socket()
    parts = [frame(0x2, b"x", fin=False)] + [frame(0x0, b"y", fin=False)] * 500 + [frame(0x0, b"z")]
    assert list(websocket.receive(UPGRADE + b"".join(parts))) == [b"x" + b"y" * 500 + b"z"]


def test_a_request_head_over_the_limit_is_refused_even_when_it_arrives_whole() -> None:
    """MAX_REQUEST_HEAD held only for a head still incomplete: one that came in a single read (up to
    64 KiB) went to the HTTP parser whatever its size."""
    websocket, recorder = open_socket()
    padding = b"X-Pad: " + b"a" * MAX_REQUEST_HEAD + b"\r\n"
    head = UPGRADE[:-2] + padding + b"\r\n"
    assert list(websocket.receive(head)) == []
    assert websocket.state is WsState.CLOSED
    assert bytes(recorder.out).startswith(b"HTTP/1.1 431 ")


# -- the parser against the layer it replaced (wsproto's Connection, tests/wsproto_layer.py) -----------

CLOSE_CODES = [0, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1012, 1013, 1014, 1015, 1016,
               2000, 2999, 3000, 3999, 4000, 4999, 5000, 65535]


def raw_frame(b0: int, payload: bytes, mask: bytes | None, *, long_form: int = 0) -> bytes:
    """Any frame, also a broken one: ``long_form`` 1 or 2 writes the length in 2 or 8 bytes whatever it is."""
    size = len(payload)
    bit = 0x80 if mask is not None else 0
    if long_form == 1 or (not long_form and 126 <= size < 65536):
        head = bytes((b0, bit | 126)) + size.to_bytes(2, "big")
    elif long_form == 2 or size >= 65536:
        head = bytes((b0, bit | 127)) + size.to_bytes(8, "big")
    else:
        head = bytes((b0, bit | size))
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@st.composite
def any_frame(draw: st.DrawFn, opcode: int | None = None, payload: bytes | None = None, fin: bool = True) -> bytes:
    """One client frame: ``opcode``/``payload`` as given (a fragment of a message) or any frame (a
    ping, pong, Close or an odd one), and now and then broken: a reserved RSV bit, no mask, a length
    not in its shortest form."""
    if opcode is None:
        kind = draw(st.sampled_from(["ping"] * 4 + ["pong", "close", "close", "odd"]))
        if kind == "odd":  # any opcode and FIN: reserved opcodes, continuations out of place, long pings
            opcode, fin = draw(st.integers(0, 15)), draw(st.booleans())
            payload = draw(st.binary(max_size=130))
        elif kind == "close":
            opcode = 0x8
            payload = draw(st.one_of(
                st.just(b""), st.binary(min_size=1, max_size=1),
                st.tuples(st.sampled_from(CLOSE_CODES), st.one_of(st.text(max_size=20).map(str.encode),
                                                                  st.just(b"\xc3("))).map(
                    lambda cr: cr[0].to_bytes(2, "big") + cr[1])))
        else:
            opcode, payload = {"ping": 0x9, "pong": 0xA}[kind], draw(st.binary(max_size=8))
    assert payload is not None
    broken = draw(st.integers(0, 59))  # 1 in 12: RSV1, RSV2, RSV3, unmasked, a long form of the length
    rsv = (0x40, 0x20, 0x10)[broken] if broken < 3 else 0
    mask = None if broken == 3 else draw(st.sampled_from([b"\x00\x00\x00\x00", MASK, MASK]))
    long_form = broken - 3 if broken in (4, 5) else 0
    return raw_frame((0x80 if fin else 0) | rsv | opcode, payload, mask, long_form=long_form)


@st.composite
def any_frames(draw: st.DrawFn) -> bytes:
    """Messages in random fragments (text sometimes with bad or split UTF-8), control frames between
    and inside them, odd frames: mostly well-formed, so what follows a violation is seldom reached."""
    wire = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            wire += draw(any_frame())
            continue
        text = draw(st.booleans())
        payload = draw(st.text(max_size=60).map(str.encode) if text else st.binary(max_size=300))
        if text and draw(st.integers(0, 9)) == 0:
            payload += draw(st.sampled_from([b"\xff", b"\xe2\x82", b"\xed\xa0\x80"]))
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for index, part in enumerate(parts):
            opcode = (0x1 if text else 0x2) if index == 0 else 0x0
            wire += draw(any_frame(opcode, part, index == len(parts) - 1))
            if draw(st.integers(0, 3)) == 0:
                wire += draw(any_frame())
    return bytes(wire)


def run_layer(cls, wire: bytes, sizes: list[int], limit: int, close_first: bool, pings_allowed: int):
    recorder = Recorder()
    outbox = Outbox(recorder, max_frames=1 << 20, max_bytes=1 << 30, on_overflow=lambda: None)
    pings = []

    def on_ping() -> None:
        pings.append(1)
        if len(pings) > pings_allowed:
            websocket.close(4008, "rate limited")

    websocket = cls(outbox, max_message_bytes=limit, on_ping=on_ping)
    got: list[bytes | str] = list(websocket.receive(UPGRADE))
    if close_first:
        websocket.close(4003, "heartbeat timeout")
    offset, index = 0, 0
    while offset < len(wire) and websocket.state is not WsState.CLOSED:
        size = sizes[index % len(sizes)]
        got.extend(bytes(m) if isinstance(m, bytearray) else m for m in websocket.receive(wire[offset : offset + size]))
        offset, index = offset + size, index + 1
    return (got, bytes(recorder.out), websocket.state.value, websocket.close_code, websocket.close_reason,
            websocket.peer_code, len(pings))


@settings(max_examples=1000, deadline=None)
@given(any_frames(), st.lists(st.integers(1, 80), min_size=1, max_size=50),
       st.sampled_from([0, 10, 100, 300, 1 << 20]), st.booleans(), st.integers(0, 3), st.booleans())
def test_the_parser_does_what_the_wsproto_layer_did_over_any_frames_split_anywhere(
        wire, sizes, limit, close_first, pings_allowed, cut) -> None:
    """Same messages, same bytes sent (pongs, Close and its code and reason), same state and codes,
    over random frame sequences (violations included), split at random points, with a random limit,
    a random rate limit on pings, while open or closing; ``cut`` drops the last bytes (a peer gone
    mid-frame: neither layer may have decided more than the other)."""
    if cut and wire:
        wire = wire[: len(wire) - 1 - sizes[0] % len(wire)]
    new = run_layer(WebSocket, wire, sizes, limit, close_first, pings_allowed)
    old = run_layer(OldWebSocket, wire, sizes, limit, close_first, pings_allowed)
    assert new == old
