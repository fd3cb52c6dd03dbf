"""The admin API (service credential, fail closed) and the in-process operations it shares with embedders."""

from __future__ import annotations

import time

import pytest
import trio

from roost import Config, Engine, RoomError
from roost.testing import SERVICE_KEY, TestKeys, test_config
from roost.client import ConnectionClosedError, RequestError
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import MessageEvent, PresenceDiff, RoomClosed


async def test_admin_lists_every_room_and_reads_one(roost_connect) -> None:
    with trio.fail_after(10):
        ann, ops = await roost_connect("ann"), await roost_connect("ops")
        private = await ann.create(public=False)
        public = await ann.create(public=True)
        page = await ops.admin(SERVICE_KEY, "rooms")
        assert {r.room for r in page.rooms} == {private.room, public.room}
        assert len((await ops.admin(SERVICE_KEY, "rooms", {"limit": 1})).rooms) == 1
        snapshot = await ops.admin(SERVICE_KEY, "room", {"room": private.room})
        assert snapshot.host == "ann" and snapshot.member_count == 1
        stats = await ops.admin(SERVICE_KEY, "stats")
        assert stats["rooms"] == 2 and stats["sessions"] == 2


async def test_admin_close_publish_kick(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, ops = await roost_connect("ann"), await roost_connect("bob"), await roost_connect("ops")
        snap = await ann.create()
        await bob.join(room=snap.room)
        await ops.admin(SERVICE_KEY, "publish", {"room": snap.room, "kind": "notice", "body": {"text": "maintenance"}})
        notice = await bob.next_event(MessageEvent)
        assert (notice.kind, notice.body, notice.sender) == ("notice", {"text": "maintenance"}, None)
        await ops.admin(SERVICE_KEY, "kick", {"room": snap.room, "user": "bob"})
        left = await ann.next_event(PresenceDiff)
        while not left.leave:
            left = await ann.next_event(PresenceDiff)
        assert left.leave == ("bob",)
        await ops.admin(SERVICE_KEY, "close", {"room": snap.room, "reason": "season over"})
        closed = await ann.next_event(RoomClosed)
        assert (closed.code, closed.message) == ("closed", "season over")
        with pytest.raises(RequestError) as info:
            await ops.admin(SERVICE_KEY, "room", {"room": snap.room})
        assert info.value.code == "not_found"


async def test_admin_revoke_closes_live_connections(roost_connect) -> None:
    with trio.fail_after(10):
        eve, ops = await roost_connect("eve", reconnect=False), await roost_connect("ops")
        await ops.admin(SERVICE_KEY, "revoke", {"user": "eve", "exp": int(time.time()) + 3600})
        error = await eve.wait_closed()
        assert isinstance(error, ConnectionClosedError) and error.code == 4501


@pytest.mark.parametrize(
    ("key", "op", "args", "code"),
    [
        ("wrong", "stats", None, "unauthorized"),
        (SERVICE_KEY, "room", {}, "missing_field"),
        (SERVICE_KEY, "room", {"room": 5}, "bad_field"),
        (SERVICE_KEY, "room", {"room": "rnope"}, "not_found"),
        (SERVICE_KEY, "revoke", {"exp": 1}, "bad_field"),
        (SERVICE_KEY, "revoke", {"exp": 1, "jti": "a", "user": "b"}, "bad_field"),
        (SERVICE_KEY, "publish", {"room": "rnope", "kind": "k"}, "not_found"),
    ],
)
async def test_admin_refusals(roost_connect, key, op, args, code) -> None:
    with trio.fail_after(10):
        ops = await roost_connect("ops")
        with pytest.raises(RequestError) as info:
            await ops.admin(key, op, args)
        assert info.value.code == code


class TestWithoutServiceKey:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, service_key=None)

    async def test_the_admin_api_fails_closed(self, roost_connect) -> None:
        with trio.fail_after(10):
            ops = await roost_connect("ops")
            with pytest.raises(RequestError) as info:
                await ops.admin(SERVICE_KEY, "stats")
            assert info.value.code == "unsupported"


async def test_in_process_operations_have_wire_semantics(roost_connect, roost_engine: Engine) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        snap = await ann.create()
        await roost_engine.ops.publish(snap.room, "tick", {"n": 1})
        event = await ann.next_event(MessageEvent)
        assert (event.kind, event.body) == ("tick", {"n": 1})
        state = await roost_engine.ops.snapshot(snap.room)
        assert state.seq == event.seq and state.member_count == 1
        for call in (roost_engine.ops.kick(snap.room, "nobody"), roost_engine.ops.snapshot("rnope"),
                     roost_engine.ops.publish(snap.room, "", None)):
            with pytest.raises(RoomError) as info:
                await call
            assert info.value.code in {ErrorCode.NOT_FOUND, ErrorCode.BAD_FIELD}
        await roost_engine.ops.close_room(snap.room, "bye")
        assert (await ann.next_event(RoomClosed)).message == "bye"
        with pytest.raises(RoomError) as info:
            await roost_engine.ops.publish(snap.room, "late")
        assert info.value.code is ErrorCode.NOT_FOUND
        assert roost_engine.ops.rooms().rooms == ()
