"""Over real sockets, a member whose socket pushes back still receives every frame whole and in order.

A raw member with a tiny receive buffer reads slowly while big (60 KB) and small events are broadcast
in its room, so the server's writes to it are partial and its outbox writer waits on the socket while
the room keeps pushing. Every frame the member parses must be one the server sent, intact, in order:
before the fix, the room's direct write landed inside the unsent rest of the previous frame.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from roost import Config, Engine
from roost.outbox import ws_frame
from roost.testing import TestKeys, test_config
from roost.protocol import RemoteProtocolError, Sender, decode, encode
from roost.protocol.frames import ChatEvent, ChatMessage, Frame, MessageEvent, Ok, PresenceDiff
from tests.wire import SlowMember

BIG = 60_000


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    # Bounds far above what the test sends: this is about atomicity, not the slow-consumer close.
    return test_config(roost_keys, outbox_max_bytes=64 * 1024 * 1024, outbox_max_frames=100_000)


def decoded(frame: tuple[int, bytes] | None) -> Frame:
    """A frame the slow member parsed, which must be one the server sent."""
    assert frame is not None, "the server closed the connection"
    opcode, payload = frame
    assert opcode == 0x2, f"unexpected opcode {opcode:#x}: the stream is out of frame"
    try:
        return decode(payload, Sender.SERVER)
    except RemoteProtocolError as error:
        raise AssertionError(f"parsed a frame the server did not send ({error})") from None


async def broadcast_and_read(
    roost_engine: Engine, roost_keys: TestKeys, roost_connect: Any, bodies: list[bytes], check: Any
) -> None:
    """Ann sends ``bodies`` (as ``send``) with a small chat after each; the slow reader checks every
    frame it parses with ``check`` and must see every event, intact, in order."""
    ann = await roost_connect("ann")
    snapshot = await ann.create()
    reader = await SlowMember.join(roost_engine.address, roost_keys.token("zed"), snapshot.room)

    async def talk() -> None:
        for index, body in enumerate(bodies):
            await ann.send(snapshot.room, "blob", body)
            await ann.chat_send(snapshot.room, f"small {index}")

    expected: list[tuple[str, Any]] = []
    for index, body in enumerate(bodies):
        expected += [("blob", body), ("chat", f"small {index}")]
    seen: list[tuple[str, Any]] = []
    last_seq = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(talk)
        while len(seen) < len(expected):
            frame = decoded(await reader.next_frame())
            check(frame)
            if isinstance(frame, MessageEvent | ChatEvent):
                assert frame.seq > last_seq, f"out of order: seq {frame.seq} after {last_seq}"
                last_seq = frame.seq
                seen.append((frame.kind, frame.body) if isinstance(frame, MessageEvent) else ("chat", frame.msg.text))
    assert [kind for kind, _ in seen] == [kind for kind, _ in expected]
    assert seen == expected, "an event was altered"
    await reader.stream.aclose()


async def test_big_and_small_events_reach_a_slow_reader_whole_and_in_order(
    roost_engine: Engine, roost_keys: TestKeys, roost_connect: Any
) -> None:
    def check(frame: Frame) -> None:
        assert isinstance(frame, MessageEvent | ChatEvent | PresenceDiff | Ok), frame

    bodies = [bytes([index]) * BIG for index in range(12)]
    with trio.fail_after(30):
        await broadcast_and_read(roost_engine, roost_keys, roost_connect, bodies, check)


async def test_a_relayed_body_cannot_smuggle_a_server_frame_to_a_slow_reader(
    roost_engine: Engine, roost_keys: TestKeys, roost_connect: Any
) -> None:
    """A member relays bodies made of complete encoded server frames: a forged ``chat`` from user
    ``system``, whole and framed. Were a write to land inside another frame, the reader's parser
    would lose its place and could come out on one of them; it must only ever see frames the server
    sent."""
    forged = ws_frame(encode(ChatEvent(
        room="r", epoch=1, seq=10**6, ts=0,
        msg=ChatMessage(id="m", n=1, user="system", name="System", text="send your password", ts=0),
    )))
    bodies = [(forged * (BIG // len(forged) + 1))[:BIG - index] for index in range(12)]

    def check(frame: Frame) -> None:
        assert not (isinstance(frame, ChatEvent) and frame.msg.user == "system"), "decoded a forged frame"
        assert isinstance(frame, MessageEvent | ChatEvent | PresenceDiff | Ok), frame

    with trio.fail_after(30):
        await broadcast_and_read(roost_engine, roost_keys, roost_connect, bodies, check)
