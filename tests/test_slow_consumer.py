"""A member that stops reading is closed with a resumable code; its room never waits for it."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from engine import Config, Engine
from engine.testing import TestKeys, test_config
from protocol import encode
from protocol.errors import CloseCode
from protocol.frames import ChatEvent, Hello, Join
from tests.wire import client_frame, server_frames


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    # A 4 KiB receive window drains slowly (~35 KiB/s on loopback): give the Close time to get through.
    return test_config(roost_keys, outbox_max_bytes=64 * 1024, outbox_max_frames=10_000, close_timeout=10.0)


async def test_a_consumer_that_never_reads_is_closed_and_the_room_goes_on(
    roost_engine: Engine, roost_keys: TestKeys, roost_connect
) -> None:
    with trio.fail_after(20):
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        snap = await ann.create()
        await bob.join(room=snap.room)

        sleeper = await trio.open_tcp_stream(*roost_engine.address)
        sleeper.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sleeper.send_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await sleeper.send_all(client_frame(encode(Hello(v=1, token=roost_keys.token("zed"), hb=300_000))))
        await sleeper.send_all(client_frame(encode(Join(id=1, room=snap.room))))
        for _ in range(300):
            if roost_engine.statistics()["sessions"] == 3 and (await roost_engine.ops.snapshot(snap.room)).member_count == 3:
                break
            await trio.sleep(0.01)
        else:
            raise AssertionError(f"sleeper never joined: {roost_engine.statistics()} {[c.phase for c in roost_engine.gateway.connections]}")
        # From here on the sleeper reads nothing. Ann talks; bob must get every message.
        sent = 0
        while roost_engine.gateway.stats["slow_consumers"] == 0:
            await ann.chat_send(snap.room, "x" * 4000)
            sent += 1
            assert sent < 2000, "the slow consumer was never detected"
        # The sleeper wakes up (within the close timeout): behind what was queued it finds a Close with the
        # resumable code.
        buffer, code = bytearray(), None
        while code is None:
            chunk = await sleeper.receive_some(65536)
            assert chunk, "dropped without a Close frame"
            buffer += chunk
            if b"\r\n\r\n" in buffer and buffer.startswith(b"HTTP/1.1 101"):
                del buffer[: buffer.index(b"\r\n\r\n") + 4]
            for opcode, payload in server_frames(buffer) if not buffer.startswith(b"HTTP") else []:
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0]
        assert code == CloseCode.SLOW_CONSUMER
        for _ in range(20):
            await ann.chat_send(snap.room, "after")
            sent += 1
        received = 0
        while received < sent:
            await bob.next_event(ChatEvent)
            received += 1
        await sleeper.aclose()
