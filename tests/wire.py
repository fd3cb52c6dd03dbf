"""A bare-bones WebSocket peer for tests that must misbehave: no heartbeats, bad frames, no reading."""

from __future__ import annotations

from typing import Any

import msgpack
import trio
import trio_websocket

from protocol import PROTOCOL_VERSION, Sender, decode, encode
from protocol.frames import ClientFrame, Frame, Hello, Welcome


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
    """Connect over a real socket (``url``) or an in-memory ``stream``."""
    if stream is not None:
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "localhost", resource, message_queue_size=1024)
    else:
        assert url is not None
        ws = await trio_websocket.connect_websocket_url(nursery, url.rstrip("/") + resource, message_queue_size=1024)
    return RawPeer(ws)
