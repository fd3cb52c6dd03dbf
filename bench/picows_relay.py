"""picows relay: the floor of a Python chat fan-out, the second yardstick ``bench fanout`` uses.

``python -m roost.bench.picows_relay [--host H] [--port 0]`` prints ``PICOWS_URL=ws://H:PORT/`` and
``PICOWS_LOOP=uvloop|asyncio`` and serves until SIGTERM/SIGINT. It is the "picows + uvloop, raw
encode" row of reference/inbound-path.md §4: picows (Cython WebSocket framing and parsing on asyncio)
on uvloop when uvloop is installed, every frame packed with plain ``msgpack.packb`` from a dict (no
schema, no validation), a ``chat_send`` packed ONCE into one ``chat`` event whose same bytes are sent to
every member of the room, then ``ok`` to the sender. Nothing is stored, checked or rate-limited. It is
the floor, not a peer: no real server can do less per message on a Python process.

It speaks exactly what ``roost.bench.relay`` speaks, which is what the load generator of ``bench
fanout`` expects: ``hello`` -> ``welcome`` (any token is accepted), ``join_or_create {code}`` -> joins the
room named by the code and answers ``ok`` with ``{"room": code}``, ``chat_send`` -> the fan-out above,
``ping`` -> ``pong``; anything else gets an ``error``. The keys are written in the order the engine
writes them (``t`` first), so the load generator's fast path applies. A member whose unsent bytes
pass :data:`MAX_BACKLOG` is dropped (slow consumer); the size is only looked at while the transport
has paused writing, so the hot path pays nothing for the check.

picows and uvloop are the ``bench`` extra (``pip install -e '.[bench]'``); importing this module
without picows raises ImportError, which ``bench fanout`` reports instead of a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgpack
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from roost.protocol.frames import PROTOCOL_VERSION

__all__ = ["MAX_BACKLOG", "PicowsRelay", "main"]

MAX_BACKLOG = 4 * 1024 * 1024
"""Bytes a member may have waiting before it is dropped (as in ``roost.bench.relay``)."""

_packb = msgpack.Packer().pack  # one packer, reused: packb would build one per call


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Room:
    __slots__ = ("members", "n", "seq")

    def __init__(self) -> None:
        self.members: set[_Conn] = set()
        self.seq = 0
        self.n = 0


class _Conn(WSListener):  # type: ignore[misc]  # picows ships a stub, but its base class is Cython
    """One connection: picows calls ``on_ws_frame`` per frame; replies are sent at once."""

    def __init__(self, relay: PicowsRelay, user: str) -> None:
        self.relay = relay
        self.user = user
        self.transport: WSTransport | None = None
        self.rooms: set[_Room] = set()
        self.paused = False
        self.fragments: bytearray | None = None

    # -- picows callbacks -------------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for room in self.rooms:
            room.members.discard(self)
        self.rooms.clear()
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.BINARY and frame.fin and self.fragments is None:
            self._on_message(frame.get_payload_as_bytes())
        elif kind is WSMsgType.BINARY and self.fragments is None:
            self.fragments = bytearray(frame.get_payload_as_memoryview())
        elif kind is WSMsgType.CONTINUATION and self.fragments is not None:
            self.fragments += frame.get_payload_as_memoryview()
            if frame.fin:
                data, self.fragments = bytes(self.fragments), None
                self._on_message(data)
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind is not WSMsgType.PONG:  # pings are answered by picows (auto pong); text is not for us
            transport.send_close(WSCloseCode.UNSUPPORTED_DATA)
            transport.disconnect()

    # -- the protocol -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """One binary frame of ``data`` (picows frames it in C); drop the member if it reads too slowly."""
        transport = self.transport
        if transport is None:
            return
        transport.send(WSMsgType.BINARY, data)
        if self.paused and transport.underlying_transport.get_write_buffer_size() > MAX_BACKLOG:
            transport.disconnect(graceful=False)

    def _on_message(self, data: bytes) -> None:
        try:
            frame = msgpack.unpackb(data, raw=False)
            self._on_frame(frame)
        except Exception as exc:  # a frame this relay cannot handle: say so, keep the connection
            self.write(_packb({"t": "error", "code": "malformed", "message": type(exc).__name__}))

    def _on_frame(self, frame: Any) -> None:
        kind = frame.get("t") if type(frame) is dict else None
        if kind == "chat_send":
            self.relay.chat(self, frame)
        elif kind == "hello":
            self.write(_packb({"t": "welcome", "v": PROTOCOL_VERSION, "sid": self.user, "session": self.user,
                               "user": self.user, "name": "", "hb": frame.get("hb") or 10_000,
                               "exp": int(time.time()) + 86_400, "time": _now_ms(), "resumed": False}))
        elif kind == "join_or_create":
            code = frame["code"]
            room = self.relay.rooms[code]
            room.members.add(self)
            self.rooms.add(room)
            self.write(_packb({"t": "ok", "id": frame["id"], "result": {"room": code}}))
        elif kind == "ping":
            self.write(_packb({"t": "pong", "time": _now_ms()}))
        else:
            self.write(_packb({"t": "error", "id": frame.get("id") if type(frame) is dict else None,
                               "code": "unsupported", "message": f"the relay does not do {kind!r}"}))


class PicowsRelay:
    """Rooms by code; ``chat`` packs the event once and sends the same bytes to every member."""

    def __init__(self) -> None:
        self.rooms: collections.defaultdict[str, _Room] = collections.defaultdict(_Room)
        self._users = itertools.count(1)

    def listener(self, _request: WSUpgradeRequest) -> _Conn:
        return _Conn(self, f"u{next(self._users)}")

    def chat(self, sender: _Conn, frame: dict[str, Any]) -> None:
        code = frame["room"]
        room = self.rooms.get(code)
        if room is None or sender not in room.members:
            sender.write(_packb({"t": "error", "id": frame["id"], "code": "not_member",
                                 "message": "join the room first"}))
            return
        room.seq += 1
        room.n += 1
        n = room.n
        ts = _now_ms()
        data = _packb({"t": "chat", "room": code, "epoch": 1, "seq": room.seq, "ts": ts,
                       "msg": {"id": f"m{n}", "n": n, "user": sender.user, "name": "", "text": frame["text"],
                               "ts": ts, "cid": frame.get("cid"), "deleted": False}})
        for member in room.members:
            member.write(data)
        sender.write(_packb({"t": "ok", "id": frame["id"], "result": {"id": f"m{n}", "n": n, "ts": ts}}))


async def _main(host: str, port: int, loop_name: str) -> None:
    relay = PicowsRelay()
    server = await ws_create_server(relay.listener, host, port, backlog=1024)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"PICOWS_URL=ws://{bound_host}:{bound_port}/", flush=True)
    print(f"PICOWS_LOOP={loop_name}", flush=True)
    await stop.wait()
    server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roost.bench.picows_relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                        help="event loop: uvloop when installed (auto, the default), or asyncio's own")
    args = parser.parse_args(argv)
    loop_name = args.loop
    if loop_name == "auto":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            loop_name = "asyncio"
        else:
            loop_name = "uvloop"
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(_main(args.host, args.port, loop_name))
    else:
        asyncio.run(_main(args.host, args.port, loop_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
