"""RFC 6455 closing (§7.1.7): a broken peer gets our Close and TCP ends at once; reasons are ours.

Real sockets, so no MockClock: "at once" is measured as "end of stream arrives within half of
``close_timeout``" (the old behaviour waited the whole ``close_timeout`` for a Close reply that a dead
parser can never read).
"""

from __future__ import annotations

import struct

import pytest
import trio

from roost import Engine
from roost.testing import TestKeys
from roost.protocol import encode
from roost.protocol.errors import CloseCode
from roost.protocol.frames import Hello, Ping
from tests.wire import client_frame, server_frames

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SERVER_REASONS = {"", "protocol error", "invalid utf-8", "message too big", "binary frames only"}
"""Every reason the WebSocket layer may send (PROTOCOL.md §8.2): fixed words, never library text."""
CLOSE = 0x8


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


async def upgraded(engine: Engine) -> tuple[trio.SocketStream, bytearray]:
    """A raw TCP stream past the 101; returns it with whatever frame bytes came behind the response."""
    stream = await trio.open_tcp_stream("127.0.0.1", engine.address[1])
    await stream.send_all(UPGRADE)
    head = bytearray()
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, head[head.index(b"\r\n\r\n") + 4 :]


async def frames_until_eof(stream: trio.SocketStream, buffer: bytearray) -> list[tuple[int, bytes]]:
    """Every server frame up to the server's end of stream (FIN)."""
    while chunk := await stream.receive_some(65536):
        buffer += chunk
    return server_frames(buffer)


def close_of(frames: list[tuple[int, bytes]]) -> tuple[int, str]:
    """The last frame must be a Close: its code and reason (the reason must be ASCII)."""
    assert frames, "the connection ended without a Close frame"
    opcode, payload = frames[-1]
    assert opcode == CLOSE, frames
    code = struct.unpack("!H", payload[:2])[0] if payload else 1005
    return code, payload[2:].decode("ascii")


VIOLATIONS = {
    "reserved bit": (b"\xc2\x80\x00\x00\x00\x00", CloseCode.PROTOCOL_ERROR),
    "reserved opcode": (b"\x83\x80\x00\x00\x00\x00", CloseCode.PROTOCOL_ERROR),
    "unmasked frame": (b"\x82\x02hi", CloseCode.PROTOCOL_ERROR),
    "continuation first": (client_frame(b"x", opcode=0x0), CloseCode.PROTOCOL_ERROR),
    "ping over 125 bytes": (client_frame(b"p" * 126, opcode=0x9), CloseCode.PROTOCOL_ERROR),
    "close with one byte": (client_frame(b"\x03", opcode=CLOSE), CloseCode.PROTOCOL_ERROR),
    "close with code 1005": (client_frame(close_payload(1005), opcode=CLOSE), CloseCode.PROTOCOL_ERROR),
    "close reason not utf-8": (client_frame(close_payload(1000, b"\xff\xfe"), opcode=CLOSE), CloseCode.INVALID_PAYLOAD),
    "text not utf-8": (client_frame(b"\xce\xba\xf4\x90\x80\x80", opcode=0x1), CloseCode.INVALID_PAYLOAD),
    "message over the limit": (client_frame(b"\x00" * (64 * 1024 + 1)), CloseCode.MESSAGE_TOO_BIG),
    "fragments over the limit": (
        b"\x02" + client_frame(b"\x00" * 40_000)[1:] + client_frame(b"\x00" * 40_000, opcode=0x0),  # FIN off, on
        CloseCode.MESSAGE_TOO_BIG,
    ),
    "text message": (client_frame(b"hello", opcode=0x1), CloseCode.UNSUPPORTED_DATA),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_a_violation_gets_a_close_and_tcp_ends_at_once(roost_engine: Engine, name: str) -> None:
    data, expected = VIOLATIONS[name]
    stream, buffer = await upgraded(roost_engine)
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(roost_engine.config.close_timeout / 2):
            frames = await frames_until_eof(stream, buffer)
    code, reason = close_of(frames)
    assert code == expected
    assert reason in SERVER_REASONS


async def test_a_violation_after_hello_ends_the_session_at_once(roost_engine: Engine, roost_keys: TestKeys) -> None:
    stream, buffer = await upgraded(roost_engine)
    async with stream:
        await stream.send_all(client_frame(encode(Hello(v=1, token=roost_keys.token("ann")))))
        while not server_frames(bytearray(buffer)):
            buffer += await stream.receive_some(65536)
        await stream.send_all(b"\x82\x02hi")  # unmasked
        with trio.fail_after(roost_engine.config.close_timeout / 2):
            frames = await frames_until_eof(stream, buffer)
            while roost_engine.gateway.by_user:  # the session ends with the connection
                await trio.sleep(0.01)
    assert close_of(frames) == (CloseCode.PROTOCOL_ERROR, "protocol error")


async def test_a_peer_that_never_closes_is_dropped_within_the_linger(roost_engine: Engine) -> None:
    """After our Close and FIN, a peer that keeps its end open (and keeps sending) is cut off: bounded."""
    stream, buffer = await upgraded(roost_engine)
    async with stream:
        await stream.send_all(b"\x83\x80\x00\x00\x00\x00")
        with trio.fail_after(roost_engine.config.close_timeout / 2):
            frames = await frames_until_eof(stream, buffer)
        assert close_of(frames)[0] == CloseCode.PROTOCOL_ERROR
        with trio.fail_after(roost_engine.config.close_timeout):
            while roost_engine.gateway.connections:
                try:
                    await stream.send_all(b"garbage")
                except trio.BrokenResourceError:
                    pass
                await trio.sleep(0.05)


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        (close_payload(1000, "bye, café".encode()), 1000),
        (close_payload(4321, b"x" * 123), 4321),
        (b"", 1005),
    ],
    ids=["normal with a reason", "private code, longest reason", "no code"],
)
async def test_a_peer_close_is_answered_and_tcp_ends_at_once(roost_engine: Engine, payload: bytes, answer: int) -> None:
    stream, buffer = await upgraded(roost_engine)
    async with stream:
        await stream.send_all(client_frame(payload, opcode=CLOSE))
        with trio.fail_after(roost_engine.config.close_timeout / 2):
            frames = await frames_until_eof(stream, buffer)
    assert [opcode for opcode, _ in frames] == [CLOSE]
    assert close_of(frames) == (answer, "")  # the code echoed (RFC 6455 §5.5.1), never the peer's text


async def test_a_server_close_answered_by_the_peer_ends_tcp_at_once(roost_engine: Engine) -> None:
    stream, buffer = await upgraded(roost_engine)
    async with stream:
        await stream.send_all(client_frame(b"\x80"))  # not a hello: 4502, a normal (waiting) close
        while not server_frames(bytearray(buffer)):
            buffer += await stream.receive_some(65536)
        assert close_of(server_frames(bytearray(buffer))) == (CloseCode.BAD_FRAME, "bad first frame")
        await stream.send_all(client_frame(close_payload(4502), opcode=CLOSE))
        with trio.fail_after(roost_engine.config.close_timeout / 2):
            await frames_until_eof(stream, buffer)


async def test_the_close_arrives_although_the_peer_keeps_sending(roost_engine: Engine) -> None:
    """Closing a socket with unread input sends RST, not FIN, and an RST can destroy the Close in the
    peer's receive buffer (on some stacks, or when it overtakes a retransmission). The server
    half-closes and discards instead: the peer reads the Close and end of stream, and its writes
    after the violation never meet a reset."""
    stream, buffer = await upgraded(roost_engine)
    async with stream, trio.open_nursery() as nursery:
        # A violation, then far more than one read of garbage; BrokenResourceError would fail the test.
        nursery.start_soon(stream.send_all, b"\x83\x80\x00\x00\x00\x00" + b"\x00" * 512 * 1024)
        with trio.fail_after(roost_engine.config.close_timeout / 2):
            frames = await frames_until_eof(stream, buffer)
    assert close_of(frames) == (CloseCode.PROTOCOL_ERROR, "protocol error")


ENGINE_REASONS = {
    "bad first frame", "first frame must be hello", "protocol version 1 only", "missing token",
    "token", "malformed", "unknown_key", "bad_signature", "expired", "not_yet_valid", "revoked",
}
"""The reasons of the engine's own refusals at ``hello`` (constants in engine/connection.py)."""


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"\xc1", CloseCode.BAD_FRAME),  # not msgpack
        (encode(Ping()), CloseCode.BAD_FRAME),
        (encode(Hello(v=2, token="x")), CloseCode.UNSUPPORTED_VERSION),
        (encode(Hello(v=1)), CloseCode.BAD_TOKEN),
        (encode(Hello(v=1, token="not.a.token")), CloseCode.BAD_TOKEN),
    ],
    ids=["undecodable", "not hello", "version", "no token", "bad token"],
)
async def test_refusals_at_hello_carry_fixed_ascii_reasons(roost_engine: Engine, first: bytes, expected: int) -> None:
    stream, buffer = await upgraded(roost_engine)
    async with stream:
        await stream.send_all(client_frame(first))
        while not server_frames(bytearray(buffer)):
            buffer += await stream.receive_some(65536)
    code, reason = close_of(server_frames(buffer))
    assert code == expected
    assert reason in ENGINE_REASONS
