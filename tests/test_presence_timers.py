"""Presence timers on MockClock over in-memory streams: typing expiry, heartbeat expiry, reconnect grace."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from roost import Config
from roost.testing import TestKeys, test_config
from roost.protocol.errors import CloseCode
from roost.protocol.frames import ChatSend, JoinOrCreate, PresenceDiff, PresenceStatus, Status
from tests.wire import raw_peer

@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    return test_config(roost_keys, reconnect_grace=30.0)


async def next_update(client, user: str) -> object:
    while True:
        diff = await client.next_event(PresenceDiff)
        for member in diff.join + diff.update:
            if member.user == user:
                return member
        if user in diff.leave:
            return None


async def test_typing_stops_by_itself_after_five_seconds(autojump_clock, roost_connect) -> None:
    ann, bob = await roost_connect("ann", memory=True), await roost_connect("bob", memory=True)
    snap = await ann.create()
    await bob.join(room=snap.room)
    start = trio.current_time()
    await ann.typing(snap.room, True)
    assert (await next_update(bob, "ann")).typing is True
    assert (await next_update(bob, "ann")).typing is False
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_sending_a_message_clears_typing(autojump_clock, roost_connect) -> None:
    ann, bob = await roost_connect("ann", memory=True), await roost_connect("bob", memory=True)
    snap = await ann.create()
    await bob.join(room=snap.room)
    await ann.typing(snap.room, True)
    assert (await next_update(bob, "ann")).typing is True
    start = trio.current_time()
    await ann.chat_send(snap.room, "done typing")
    assert (await next_update(bob, "ann")).typing is False
    assert trio.current_time() - start < 1


async def test_status_and_custom_data_reach_members_as_diffs(autojump_clock, roost_connect) -> None:
    ann, bob = await roost_connect("ann", memory=True), await roost_connect("bob", memory=True)
    snap = await ann.create()
    await bob.join(room=snap.room)
    await ann.set_presence(snap.room, data={"avatar": "fox"}, status=Status.AWAY)
    member = await next_update(bob, "ann")
    assert (member.status, member.data) == (PresenceStatus.AWAY, {"avatar": "fox"})


async def test_a_silent_session_expires_after_two_and_a_half_heartbeats_then_leaves_after_grace(autojump_clock, 
    roost_connect, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    ann = await roost_connect("ann", memory=True)
    snap = await ann.create()
    silent = await raw_peer(nursery, stream=roost_engine.connect_memory())
    await silent.hello(roost_keys.token("bob"), hb=2000)
    await silent.send(JoinOrCreate(id=1, code=snap.code))
    joined_at = trio.current_time()
    assert (await next_update(ann, "bob")).status is PresenceStatus.ONLINE
    assert await silent.closed_code() == CloseCode.HEARTBEAT_TIMEOUT
    assert trio.current_time() - joined_at == pytest.approx(5.0)  # 2.5 × 2 s
    dropped = await next_update(ann, "bob")
    assert (dropped.status, dropped.sessions) == (PresenceStatus.OFFLINE, 0)  # dropped is not left
    assert await next_update(ann, "bob") is None  # left when the 30 s grace ran out
    assert trio.current_time() - joined_at == pytest.approx(35.0)


async def test_a_member_that_comes_back_within_grace_keeps_its_seat(autojump_clock, 
    roost_connect, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    ann = await roost_connect("ann", memory=True)
    snap = await ann.create()
    first = await raw_peer(nursery, stream=roost_engine.connect_memory())
    welcome = await first.hello(roost_keys.token("bob"), hb=2000)
    await first.send(JoinOrCreate(id=1, code=snap.code))
    assert (await next_update(ann, "bob")).status is PresenceStatus.ONLINE
    await first.ws.aclose()
    assert (await next_update(ann, "bob")).status is PresenceStatus.OFFLINE
    await trio.sleep(20)
    again = await raw_peer(nursery, stream=roost_engine.connect_memory())
    back = await again.hello(roost_keys.token("bob"), session=welcome.session, hb=300_000)
    assert back.resumed and back.sid == welcome.sid
    await again.send({"t": "resume", "id": 2, "room": snap.room, "epoch": snap.epoch, "seq": 0})
    assert (await next_update(ann, "bob")).status is PresenceStatus.ONLINE
    await trio.sleep(60)  # the old grace deadline passes without effect
    await again.send(ChatSend(id=3, room=snap.room, cid="c", text="still here"))
    assert (await ann.next_event()).msg.text == "still here"
