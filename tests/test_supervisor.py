"""Supervision: a crashing room restarts from its last commit, members stay and resync; others never notice."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from engine import Config, RoomContext, RoomLogic
from engine.testing import TestKeys, test_config
from protocol.client import RequestError
from protocol.frames import ChatEvent, RoomClosed, Sync


class Fragile(RoomLogic):
    """Game logic with a bug: the move "boom" raises."""

    def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
        if kind == "boom":
            raise ZeroDivisionError("bug in game logic")
        room.broadcast(kind, body)
        return None


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    return test_config(roost_keys, logics={"fragile": Fragile}, restart_intensity=2, restart_period=60.0)


async def test_a_crashing_room_restarts_keeps_its_members_and_resyncs_them(roost_connect, roost_engine) -> None:
    with trio.fail_after(10):
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        snap = await ann.create(logic="fragile")
        await bob.join(room=snap.room)
        await ann.chat_send(snap.room, "before the crash")
        calm = await (await roost_connect("cat")).create()  # another room, unaffected
        with pytest.raises(RequestError) as info:
            await bob.send(snap.room, "boom")
        assert info.value.code == "internal"
        resync = await ann.next_event(Sync)
        assert resync.reason == "restarted" and resync.epoch == snap.epoch  # the replay survives: same epoch
        assert resync.snapshot.member_count == 2 and resync.snapshot.chat_n == 1  # committed state is back
        await bob.next_event(Sync)
        ack = await bob.chat_send(snap.room, "after the crash")  # members stayed connected and seated
        assert ack.n == 2
        assert (await ann.next_event(ChatEvent)).msg.text == "after the crash"
        assert roost_engine.statistics()["restarts"] == 1
        cat_room = await roost_engine.ops.snapshot(calm.room)
        assert cat_room.epoch == 1  # the other room never restarted


async def test_too_many_crashes_close_the_room(roost_connect, roost_engine) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        snap = await ann.create(logic="fragile")
        for _ in range(3):
            with pytest.raises(RequestError):
                await ann.send(snap.room, "boom")
        closed = await ann.next_event(RoomClosed)
        assert closed.code == "internal"
        with pytest.raises(RequestError) as info:
            await ann.join(room=snap.room)
        assert info.value.code == "not_found"
        assert await roost_engine.store.load_room(snap.room) == {}
