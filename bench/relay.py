"""Baseline relay: the ceiling of Trio + wsproto for a chat fan-out, the yardstick ``bench fanout`` uses.

``python -m roost.bench.relay [--host H] [--port 0]`` prints ``RELAY_URL=ws://H:PORT/`` and serves until
SIGTERM/SIGINT. It is the "raw encode-once relay" of reference/stack-limits.md §A.8: one Trio task per
connection reads with wsproto; a ``chat_send`` becomes ONE ``chat`` event, msgpack-encoded
(``roost.protocol.codec.encode``) and WebSocket-framed once, and the same bytes are written to every member
of the room with a synchronous non-blocking ``sock.send()``; only a member whose kernel buffer is full
gets a backlog and a writer task, which lives until that backlog is flushed. Then ``ok`` goes to the
sender. Nothing is stored, checked or rate-limited.

It speaks just enough of the protocol for the load generator: ``hello`` → ``welcome`` (any token is
accepted), ``join_or_create {code}`` → joins the room named by the code and answers ``ok`` with
``{"room": code}`` (the room id *is* the code here), ``chat_send`` → the fan-out above, ``ping`` →
``pong``; anything else gets an ``error``. A connection whose backlog passes :data:`MAX_BACKLOG`
bytes is dropped (slow consumer).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request
from wsproto.utilities import RemoteProtocolError

from roost.protocol.codec import encode
from roost.protocol.frames import PROTOCOL_VERSION, ChatEvent, ChatMessage, ErrorReply, Ok, Pong, ServerFrame, Welcome

from roost.outbox import ws_frame  # the same server framing as the engine: pure, and not what is compared

__all__ = ["MAX_BACKLOG", "Relay", "main"]

MAX_BACKLOG = 4 * 1024 * 1024
"""Bytes a member may have waiting before it is dropped."""
_RECV_SIZE = 65536


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Room:
    __slots__ = ("members", "n", "seq")

    def __init__(self) -> None:
        self.members: set[_Conn] = set()
        self.seq = 0
        self.n = 0


class _Conn:
    """One client connection: reader task, direct writes, a writer task only while there is a backlog."""

    __slots__ = ("_buffer", "_relay", "backlog", "backlog_bytes", "dead", "rooms", "sock", "user", "ws")

    def __init__(self, relay: Relay, sock: socket.socket, user: str) -> None:
        self._relay = relay
        self.sock = sock
        self.user = user
        self.ws = WSConnection(ConnectionType.SERVER)
        self.rooms: set[_Room] = set()
        self.backlog: collections.deque[bytes | memoryview] = collections.deque()
        self.backlog_bytes = 0
        self.dead = False
        self._buffer = bytearray()

    # -- writing ----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send now without blocking; whatever the kernel does not take waits in the backlog."""
        if self.dead:
            return
        if self.backlog:  # order: queue behind what is already waiting (the writer is running)
            self._queue(data)
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.dead = True
            return
        if sent < len(data):
            self._queue(memoryview(data)[sent:])
            self._relay.nursery.start_soon(self._drain)  # backlog was empty: no writer runs yet

    def _queue(self, data: bytes | memoryview) -> None:
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        if self.backlog_bytes > MAX_BACKLOG:
            self.dead = True  # slow consumer: the reader notices and drops the connection

    async def _drain(self) -> None:
        """Writer task: flush the backlog (coalesced), then end. Runs only while the backlog is non-empty."""
        try:
            while self.backlog and not self.dead:
                await trio.lowlevel.wait_writable(self.sock)
                data = self.backlog[0] if len(self.backlog) == 1 else b"".join(self.backlog)
                self.backlog.clear()
                try:
                    sent = self.sock.send(data)
                except BlockingIOError:
                    sent = 0
                self.backlog_bytes -= sent
                if sent < len(data):
                    self.backlog.appendleft(memoryview(data)[sent:])
        except (OSError, trio.ClosedResourceError):
            self.dead = True
        if self.dead:
            self.backlog.clear()

    def send_frame(self, frame: ServerFrame) -> None:
        self.write(ws_frame(encode(frame)))

    # -- reading ----------------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            while not self.dead:
                await trio.lowlevel.wait_readable(self.sock)
                try:
                    data = self.sock.recv(_RECV_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    return
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if not self._on_event(event):
                        return
        except (OSError, RemoteProtocolError):
            return
        finally:
            for room in self.rooms:
                room.members.discard(self)
            self.rooms.clear()
            self.dead = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def _on_event(self, event: object) -> bool:
        if isinstance(event, BytesMessage):
            self._buffer += event.data
            if event.message_finished:
                data = bytes(self._buffer)
                self._buffer.clear()
                try:
                    self._on_frame(msgpack.unpackb(data, raw=False))
                except Exception as exc:  # a frame this relay cannot handle: say so, keep the connection
                    self.send_frame(ErrorReply(code="malformed", message=type(exc).__name__))
        elif isinstance(event, Request):
            self.write(self.ws.send(AcceptConnection()))
        elif isinstance(event, Ping):
            self.write(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                self.write(self.ws.send(event.response()))
            return False
        else:  # text messages and anything else: not for this relay
            return False
        return True

    def _on_frame(self, frame: Any) -> None:
        kind = frame.get("t") if type(frame) is dict else None
        if kind == "chat_send":
            self._relay.chat(self, frame)
        elif kind == "hello":
            self.send_frame(Welcome(v=PROTOCOL_VERSION, sid=self.user, session=self.user, user=self.user, name="",
                                    hb=frame.get("hb") or 10_000, exp=int(time.time()) + 86_400, time=_now_ms()))
        elif kind == "join_or_create":
            code = frame["code"]
            room = self._relay.rooms[code]
            room.members.add(self)
            self.rooms.add(room)
            self.send_frame(Ok(id=frame["id"], result={"room": code}))
        elif kind == "ping":
            self.send_frame(Pong(time=_now_ms()))
        else:
            self.send_frame(ErrorReply(id=frame.get("id") if type(frame) is dict else None,
                                       code="unsupported", message=f"the relay does not do {kind!r}"))


class Relay:
    """Rooms by code, and the connections' nursery."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.rooms: collections.defaultdict[str, _Room] = collections.defaultdict(_Room)
        self._users = itertools.count(1)

    def chat(self, sender: _Conn, frame: dict[str, Any]) -> None:
        """Encode and frame the ``chat`` event once; write the same bytes to every member; ``ok`` the sender."""
        code = frame["room"]
        room = self.rooms.get(code)
        if room is None or sender not in room.members:
            sender.send_frame(ErrorReply(id=frame["id"], code="not_member", message="join the room first"))
            return
        room.seq += 1
        room.n += 1
        ts = _now_ms()
        message = ChatMessage(id=f"m{room.n}", n=room.n, user=sender.user, name="", text=frame["text"], ts=ts,
                              cid=frame.get("cid"))
        data = ws_frame(encode(ChatEvent(room=code, epoch=1, seq=room.seq, ts=ts, msg=message)))
        for member in room.members:
            member.write(data)
        sender.send_frame(Ok(id=frame["id"], result={"id": message.id, "n": message.n, "ts": ts}))

    async def accept_loop(self, listener: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _address = listener.accept()
            except BlockingIOError:
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.nursery.start_soon(_Conn(self, sock, f"u{next(self._users)}").serve)


async def _main(host: str, port: int) -> None:
    listener = socket.create_server((host, port), backlog=1024)
    listener.setblocking(False)
    bound_host, bound_port = listener.getsockname()[:2]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            relay = Relay(nursery)
            nursery.start_soon(relay.accept_loop, listener)
            print(f"RELAY_URL=ws://{bound_host}:{bound_port}/", flush=True)
            async for _signum in signals:
                break
            nursery.cancel_scope.cancel()
    listener.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roost.bench.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    trio.run(_main, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
