"""A bare-bones WebSocket peer for tests that must misbehave: no heartbeats, bad frames, no reading."""

from __future__ import annotations

import urllib.parse
import collections
import socket
from typing import Any

import msgpack
import trio
import trio_websocket

from roost.protocol import PROTOCOL_VERSION, Sender, decode, encode
from roost.protocol.frames import ClientFrame, Frame, Hello, Join, Ok, Welcome


class RawPeer:
    """One WebSocket connection, driven by hand."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, frame: ClientFrame | dict[str, Any] | bytes) -> None:
        if isinstance(frame, bytes):
            data = frame
        elif isinstance(frame, dict):
            data = msgpack.packb(frame, use_bin_type=True)
        else:
            data = encode(frame)
        await self.ws.send_message(data)

    async def recv(self) -> Frame:
        message = await self.ws.get_message()
        assert isinstance(message, bytes), message
        return decode(message, Sender.SERVER)

    async def recv_until(self, kind: type[Frame]) -> Any:
        while True:
            frame = await self.recv()
            if isinstance(frame, kind):
                return frame

    async def hello(self, token: str, **fields: Any) -> Welcome:
        await self.send(Hello(v=PROTOCOL_VERSION, token=token, **fields))
        welcome = await self.recv()
        assert isinstance(welcome, Welcome), welcome
        return welcome

    async def closed_code(self) -> int:
        """Read until the server closes; return its close code."""
        try:
            while True:
                await self.ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code


async def raw_peer(nursery: trio.Nursery, url: str | None = None, stream: trio.abc.Stream | None = None,
                   *, resource: str = "/") -> RawPeer:
    """Connect over a real socket (``url``) or an in-memory ``stream``; closed when ``nursery`` ends."""
    if stream is None:
        assert url is not None
        parts = urllib.parse.urlsplit(url)
        stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    nursery.start_soon(_close_at_end, stream)
    ws = await trio_websocket.wrap_client_stream(nursery, stream, "localhost", resource, message_queue_size=1024)
    return RawPeer(ws)


async def _close_at_end(stream: trio.abc.Stream) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(1):
                await stream.aclose()


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame (with an all-zero mask key, so the payload goes as is)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


def server_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Split complete server frames off the front of ``buffer``: (opcode, payload) pairs."""
    frames = []
    while len(buffer) >= 2:
        size, offset = buffer[1] & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                break
            size, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            if len(buffer) < 10:
                break
            size, offset = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < offset + size:
            break
        frames.append((buffer[0] & 0x0F, bytes(buffer[offset : offset + size])))
        del buffer[: offset + size]
    return frames

class ServerFrames(collections.deque[tuple[int, bytes]]):
    """What a raw client reads: the 101 response (checked, then dropped), then complete server
    frames, (opcode, payload) in order, as bytes arrive in any split."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()
        self.upgraded = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self.buffer.startswith(b"HTTP/1.1 101"), bytes(self.buffer[:80])
            del self.buffer[: end + 4]
            self.upgraded = True
        self.extend(server_frames(self.buffer))



class SlowMember:
    """A member over a raw TCP socket with a tiny receive buffer, read by hand a little at a time.

    The small window makes the server's writes to it partial, so its outbox writer really waits on
    the socket while rooms keep pushing.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.frames = ServerFrames()

    @classmethod
    async def join(cls, address: tuple[str, int], token: str, room: str, *, rcvbuf: int = 4096) -> SlowMember:
        """Connect, upgrade, authenticate and join ``room``; returns once the join is answered."""
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
        await sock.connect(address)
        member = cls(trio.SocketStream(sock))
        await member.stream.send_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + client_frame(encode(Hello(v=PROTOCOL_VERSION, token=token, hb=300_000)))
            + client_frame(encode(Join(id=1, room=room)))
        )
        while True:
            frame = await member.next_frame()
            assert frame is not None and frame[0] == 0x2, f"no answer to the join: {frame}"
            reply = decode(frame[1], Sender.SERVER)
            if isinstance(reply, Ok) and reply.id == 1:
                return member

    async def next_frame(self, *, chunk: int = 1024, pause: float = 0.0005) -> tuple[int, bytes] | None:
        """The next (opcode, payload) from the server, reading ``chunk`` bytes at a time with a
        ``pause`` after each read (slow, not stopped); None at the end of the stream."""
        while not self.frames:
            data = await self.stream.receive_some(chunk)
            if not data:
                assert not self.frames.buffer, f"the stream ended inside a frame ({len(self.frames.buffer)} bytes)"
                return None
            self.frames.feed(data)
            await trio.sleep(pause)
        return self.frames.popleft()
