"""A member that stops reading is closed with a resumable code; its room never waits for it.

The Close 4000 comes right behind the frame being sent, and it reaches the member: the socket is
closed the TCP way that keeps queued bytes (FIN, drain, close), never with an RST.
"""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from roost import Config, Engine
from roost.outbox import Outbox, SocketTransport, ws_frame
from roost.testing import TestKeys, connect_client, start_engine, test_config
from roost.protocol import Sender, decode
from roost.protocol.errors import CloseCode
from roost.protocol.frames import ChatEvent, MessageEvent
from tests.wire import SlowMember, client_frame


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    """Small bounds: a few chats nobody reads overflow the outbox."""
    return test_config(roost_keys, outbox_max_bytes=64 * 1024, outbox_max_frames=10_000)


async def test_a_consumer_that_never_reads_is_closed_and_the_room_goes_on(
    roost_engine: Engine, roost_keys: TestKeys, roost_connect
) -> None:
    with trio.fail_after(20):
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        snap = await ann.create()
        await bob.join(room=snap.room)
        sleeper = await SlowMember.join(roost_engine.address, roost_keys.token("zed"), snap.room)
        # From here on the sleeper reads nothing. Ann talks; bob must get every message.
        sent = 0
        while roost_engine.gateway.stats["slow_consumers"] == 0:
            await ann.chat_send(snap.room, "x" * 4000)
            sent += 1
            assert sent < 2000, "the slow consumer was never detected"
        # The sleeper wakes up: after the frames it had begun it finds a Close with the resumable code.
        while (frame := await sleeper.next_frame()) is not None and frame[0] != 0x8:
            pass
        assert frame is not None, "dropped without a Close frame"
        assert struct.unpack("!H", frame[1][:2])[0] == CloseCode.SLOW_CONSUMER
        for _ in range(20):
            await ann.chat_send(snap.room, "after")
            sent += 1
        received = 0
        while received < sent:
            await bob.next_event(ChatEvent)
            received += 1
        await sleeper.stream.aclose()


async def test_a_reader_that_stops_then_drains_finds_the_close_right_after_the_frames_it_began(
    nursery: trio.Nursery, roost_keys: TestKeys
) -> None:
    """Default bounds (1 MiB), a 1 s close timeout and a reader draining at ~400 KB/s: the 4000 Close
    must not wait behind the megabyte queued when the overflow happened (that took longer than the
    timeout, and the reader got a FIN and no Close: 1006). What it parses is an unbroken run of the
    room's events from the first, whole, then the Close, then the end of the stream."""
    engine = await start_engine(nursery, test_config(roost_keys, close_timeout=1.0))
    with trio.fail_after(30):
        ann = await connect_client(nursery, engine.url, roost_keys.token("ann"))
        snap = await ann.create()
        sleeper = await SlowMember.join(engine.address, roost_keys.token("zed"), snap.room)
        # The sleeper stops reading; ann relays 60 KB bodies until its outbox overflows.
        sent = 0
        while engine.gateway.stats["slow_consumers"] == 0:
            await ann.send(snap.room, "blob", sent.to_bytes(4, "big") * 15_000)
            sent += 1
            assert sent < 200, "the slow consumer was never detected"
        seqs, close = [], None
        while close is None:
            frame = await sleeper.next_frame(chunk=4096, pause=0.01)
            assert frame is not None, f"dropped without a Close frame after {len(seqs)} of {sent} events"
            opcode, payload = frame
            if opcode == 0x8:
                close = payload
                await sleeper.stream.send_all(client_frame(payload[:2], opcode=0x8))  # answer it
                continue
            event = decode(payload, Sender.SERVER)
            assert isinstance(event, MessageEvent), event
            assert event.body == len(seqs).to_bytes(4, "big") * 15_000, "a body was altered"
            seqs.append(event.seq)
        assert struct.unpack("!H", close[:2])[0] == CloseCode.SLOW_CONSUMER
        assert close[2:] == b"slow consumer"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap before the Close"
        assert len(seqs) < sent, "nothing was dropped"
        assert await sleeper.next_frame() is None  # the Close is the last frame: then the server's FIN
        await sleeper.stream.aclose()


async def test_the_close_survives_bytes_the_server_never_read() -> None:
    """``close()`` on a socket with unread received bytes makes the kernel send RST and discard its
    send queue, which is where a slow reader's Close frame waits. SocketTransport.aclose sends its FIN
    behind the last byte written, reads what the peer sends meanwhile, and closes once the peer has."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        plain = socket.socket()
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        plain.connect(listener.getsockname())
        server, _ = listener.accept()
    transport = SocketTransport(server)
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(plain))
    with trio.fail_after(10):
        await peer.send_all(b"ping")  # never read by the server
        await trio.lowlevel.wait_readable(server)
        written = 0
        while sent := transport.try_send(b"x" * 65536):  # until the kernel's send queue is full
            written += sent
        received, last = bytearray(), b"\x88\x02\x0f\xa0"
        while last:  # the peer reads a little until the kernel takes the last frame (a Close)
            received += await peer.receive_some(4096)
            last = last[transport.try_send(last) :]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.aclose)
            await trio.testing.wait_all_tasks_blocked()  # the server is closing: now the peer reads
            while data := await peer.receive_some(65536):
                received += data
            await peer.aclose()  # the peer's end of stream ends the server's linger
        assert bytes(received) == b"x" * written + b"\x88\x02\x0f\xa0"


async def test_closing_while_the_reader_waits_ends_the_read() -> None:
    """aclose from another task than the one reading: it does not fight the reader for the socket,
    and the waiting read returns the end of stream."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        plain = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    transport = SocketTransport(server)
    result: list[bytes] = []

    async def read() -> None:
        result.append(await transport.receive_some())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await transport.aclose()
    assert result == [b""]
    plain.close()


async def test_closing_under_a_waiting_writer_ends_it() -> None:
    """The transport closed while the outbox writer waits for the socket: the writer ends (broken)
    instead of failing its connection's nursery."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        plain = socket.socket()
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        plain.connect(listener.getsockname())
        server, _ = listener.accept()
    transport = SocketTransport(server)
    outbox = Outbox(transport, max_frames=100, max_bytes=10**9, on_overflow=lambda: None)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run_writer)
            while outbox.idle:  # until the kernel's send queue is full and the rest waits for the writer
                assert outbox.push(ws_frame(bytes(60_000)))
            await trio.testing.wait_all_tasks_blocked()
            plain.close()  # a peer gone: the linger ends at once
            await transport.aclose()
    assert outbox.broken and outbox.backlog_bytes == 0
