"""Game state: compare-and-set by the host, phases, relayed messages, and room logic with authority."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from roost import Config, RoomContext, RoomError, RoomLogic
from roost.testing import TestKeys, test_config
from roost.client import RequestError
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import MessageEvent, Phase, RoomClosed, StateEvent


async def test_state_is_compare_and_set_with_versions(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        snap = await ann.create()
        await bob.join(room=snap.room)
        assert (snap.version, snap.phase, snap.state) == (0, Phase.LOBBY, None)
        assert await ann.set_state(snap.room, 0, state={"board": [0] * 9}, phase="playing") == 1
        event = await bob.next_event(StateEvent)
        assert (event.version, event.phase, event.state) == (1, Phase.PLAYING, {"board": [0] * 9})
        with pytest.raises(RequestError) as info:
            await ann.set_state(snap.room, 0, state={"stale": True})
        assert info.value.code == "conflict"
        assert await ann.set_state(snap.room, 1, phase="ended") == 2
        event = await bob.next_event(StateEvent)
        assert (event.phase, event.state) == (Phase.ENDED, {"board": [0] * 9})  # phase only: state kept


async def test_send_without_logic_is_relayed(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        snap = await ann.create()
        await bob.join(room=snap.room)
        await bob.send(snap.room, "emote", {"name": "wave"})
        event = await ann.next_event(MessageEvent)
        assert (event.kind, event.body, event.sender) == ("emote", {"name": "wave"}, "bob")


class Counter(RoomLogic):
    """A tiny game: members add to a shared counter; the logic owns the state."""

    tick_rate = 0.0

    def on_create(self, room: RoomContext) -> None:
        room.set_state({"total": 0}, reason="created")

    def on_join(self, room: RoomContext, user: str, name: str) -> None:
        if user == "banned":
            raise RoomError(ErrorCode.FORBIDDEN, "not welcome")

    def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
        if kind != "add":
            raise RoomError(ErrorCode.BAD_FIELD, "unknown move")
        total = room.state["total"] + body
        room.set_state({"total": total}, reason=f"add by {user}")
        if total >= 10:
            room.broadcast("winner", {"user": user})
            room.set_state({"total": total}, phase=Phase.ENDED, reason="won")
        return {"total": total}


class TestRoomLogic:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, logics={"counter": Counter})

    async def test_logic_has_authority_over_game_state(self, roost_connect) -> None:
        with trio.fail_after(10):
            ann, bob = await roost_connect("ann"), await roost_connect("bob")
            snap = await ann.create(logic="counter")
            assert snap.logic == "counter" and snap.state == {"total": 0} and snap.version == 1
            await bob.join(room=snap.room)
            result = await bob.request({"t": "send", "room": snap.room, "kind": "add", "body": 4})
            assert result == {"total": 4}
            event = await ann.next_event(StateEvent)
            assert (event.state, event.reason) == ({"total": 4}, "add by bob")
            with pytest.raises(RequestError) as info:
                await bob.send(snap.room, "cheat", 100)
            assert info.value.code == "bad_field"
            await ann.request({"t": "send", "room": snap.room, "kind": "add", "body": 6})
            winner = await bob.next_event(MessageEvent)
            assert (winner.kind, winner.body, winner.sender) == ("winner", {"user": "ann"}, None)
            final = await bob.next_event(StateEvent)
            while final.phase is not Phase.ENDED:
                final = await bob.next_event(StateEvent)
            assert final.reason == "won"

    async def test_logic_can_refuse_a_join(self, roost_connect) -> None:
        with trio.fail_after(10):
            ann, banned = await roost_connect("ann"), await roost_connect("banned")
            snap = await ann.create(logic="counter")
            with pytest.raises(RequestError) as info:
                await banned.join(room=snap.room)
            assert info.value.code == "forbidden"


class Clock(RoomLogic):
    """Counts ticks at 4 Hz and publishes the count every second; stops at 3 s."""

    tick_rate = 4.0

    def __init__(self) -> None:
        self.ticks = 0
        self.disposed = False

    def on_tick(self, room: RoomContext, dt: float) -> None:
        self.ticks += 1
        assert dt == pytest.approx(0.25)
        if self.ticks % 4 == 0:
            room.set_state({"seconds": self.ticks // 4}, reason="tick")
        if self.ticks == 12:
            room.close("time is up")

    def on_dispose(self, room: RoomContext) -> None:
        self.disposed = True


class TestTicks:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, logics={"clock": Clock})

    async def test_logic_ticks_at_its_rate_from_the_room_timer(self, autojump_clock, roost_connect) -> None:
        ann = await roost_connect("ann", memory=True)
        start = trio.current_time()
        snap = await ann.create(logic="clock")
        seconds = [(await ann.next_event(StateEvent)).state["seconds"] for _ in range(3)]
        assert seconds == [1, 2, 3]
        closed = await ann.next_event()
        while not isinstance(closed, RoomClosed):
            closed = await ann.next_event()
        assert closed.message == "time is up"
        assert trio.current_time() - start == pytest.approx(3.0)
        with pytest.raises(RequestError) as info:
            await ann.join(room=snap.room)
        assert info.value.code == "not_found"


class BadResult(RoomLogic):
    """Changes the state, then returns a result no frame can carry (too large, or not msgpack)."""

    tick_rate = 0.0

    def on_create(self, room: RoomContext) -> None:
        room.set_state({"moves": 0})

    def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
        room.set_state({"moves": room.state["moves"] + 1})
        room.broadcast("moved", {"by": user})
        return b"x" * (1 << 20) if kind == "big" else {1, 2}


class TestLogicResultThatCannotBeSent:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, logics={"bad": BadResult})

    @pytest.mark.parametrize("kind", ["big", "set"])
    async def test_is_a_logic_failure_and_takes_no_effect(self, roost_connect, kind: str) -> None:
        """§8.1: a request answered ``internal`` did not take effect. The reply used to be refused
        alone (``too_large`` / ``internal``) while the state change and the broadcast the logic made
        for it were committed and sent: the member was told its move failed, everyone else saw it."""
        with trio.fail_after(10):
            ann = await roost_connect("ann")
            snap = await ann.create(logic="bad")
            assert snap.version == 1
            with pytest.raises(RequestError) as info:
                await ann.request({"t": "send", "room": snap.room, "kind": kind})
            assert info.value.code == "internal"
            bob = await roost_connect("bob")
            after = await bob.join(room=snap.room)
            assert (after.version, after.state) == (1, {"moves": 0})
