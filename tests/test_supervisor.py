"""Supervision: a crashing room restarts from its last commit, members stay and resync; others never notice."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from roost import Config, RoomContext, RoomError, RoomLogic
from roost.room import Call
from roost.state import RoomOptions
from roost.testing import TestKeys, test_config
from roost.client import RequestError
from roost.protocol.frames import ChatEvent, MessageEvent, PresenceStatus, RoomClosed, Sync


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


class BadCreate(RoomLogic):
    def on_create(self, room: RoomContext) -> None:
        raise ZeroDivisionError("bug in on_create")


class BadLeave(RoomLogic):
    def on_leave(self, room: RoomContext, user: str, *, consented: bool) -> None:
        raise ZeroDivisionError("bug in on_leave")


class TestRecoveryFailures:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, logics={"badcreate": BadCreate, "badleave": BadLeave, "fragile": Fragile},
                           restart_intensity=3, restart_period=60.0)

    async def test_a_room_that_cannot_even_be_recovered_closes_alone(self, roost_connect, roost_engine) -> None:
        """on_create raises before the first commit: nothing to restart from. The room goes, the engine stays."""
        with trio.fail_after(10):
            ann, bob = await roost_connect("ann"), await roost_connect("bob")
            calm = await bob.create()
            with pytest.raises(RequestError) as info:
                await ann.create(logic="badcreate")
            assert info.value.code in {"internal", "not_found"}
            assert (await bob.chat_send(calm.room, "still fine")).n == 1
            assert len(roost_engine.router.rooms) == 1

    async def test_a_crash_in_a_leave_turn_keeps_the_member_attached(self, roost_connect, roost_engine) -> None:
        with trio.fail_after(10):
            ann, bob = await roost_connect("ann"), await roost_connect("bob")
            snap = await ann.create(logic="badleave")
            await bob.join(room=snap.room)
            with pytest.raises(RequestError) as info:
                await bob.leave(snap.room)
            assert info.value.code == "internal"  # it did not take effect...
            await bob.next_event(Sync)  # ...so bob is still in, resynced with everyone
            await roost_engine.ops.publish(snap.room, "hello", 1)
            assert (await bob.next_event(MessageEvent)).kind == "hello"

    async def test_resync_snapshots_show_every_reattached_member_online(self, roost_connect) -> None:
        with trio.fail_after(10):
            ann, bob = await roost_connect("ann"), await roost_connect("bob")
            snap = await ann.create(logic="fragile")
            await bob.join(room=snap.room)
            with pytest.raises(RequestError):
                await bob.send(snap.room, "boom")
            for client in (ann, bob):
                synced = await client.next_event(Sync)
                assert {m.user: m.status for m in synced.snapshot.members} == {
                    "ann": PresenceStatus.ONLINE, "bob": PresenceStatus.ONLINE}


async def test_a_page_too_large_for_a_frame_is_cut_not_a_crash(roost_connect, roost_engine) -> None:
    with trio.fail_after(20):
        ann = await roost_connect("ann")
        snap = await ann.create()
        for i in range(20):
            await ann.chat_send(snap.room, f"m{i}", meta={"x": "a" * 16_000})
        page = await ann.history(snap.room, limit=20)  # 320 KB of messages: more than one page holds
        assert 0 < len(page.messages) < 20 and page.next == page.messages[0].n
        assert len((await ann.history(snap.room, limit=5)).messages) == 5
        assert roost_engine.statistics()["restarts"] == 0


async def test_a_stopped_room_answers_everything_queued(roost_engine) -> None:
    runtime = await roost_engine.router.create(RoomOptions())
    calls = [Call(lambda actor, i=i: actor.publish("k", i)) for i in range(200)]
    for call in calls:
        runtime.inbox.send_nowait(call)
    runtime.stop()
    with trio.fail_after(5):
        outcomes = []
        for call in calls:
            try:
                await call.wait()
                outcomes.append("done")
            except RoomError as error:
                outcomes.append(error.code.value)
    assert set(outcomes) <= {"done", "invalid_state"} and "invalid_state" in outcomes
