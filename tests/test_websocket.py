"""The WebSocket layer alone (engine/websocket.py): any split of the input gives the same result."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from roost.outbox import Outbox, Transport
from roost.websocket import FAIL_REASONS, MAX_REQUEST_HEAD, WebSocket, WsState, safe_reason
from tests.wire import server_frames

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
