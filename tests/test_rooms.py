"""Rooms over real sockets: create, codes, join, lobby, host hand-over, capacity, exactly-once creation."""

from __future__ import annotations

import pytest
import trio

from roost import Config, Engine
from roost.codes import ALPHABET
from roost.testing import TestKeys, test_config
from roost.client import RequestError
from roost.protocol.frames import HostChanged, PresenceDiff, PresenceStatus


async def test_create_makes_the_creator_host_with_a_shareable_code(roost_connect) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        snap = await ann.create(public=True, max=4, meta={"mode": "duel"})
        assert snap.host == "ann" and snap.member_count == 1 and snap.max == 4
        assert len(snap.code) == 8 and set(snap.code) <= set(ALPHABET)
        assert [m.user for m in snap.members] == ["ann"] and snap.meta == {"mode": "duel"}
        joined = await ann.next_event(PresenceDiff)
        assert [m.user for m in joined.join] == ["ann"]
        host = await ann.next_event(HostChanged)
        assert host.user == "ann" and host.seq == joined.seq + 1 == snap.seq


async def test_join_by_code_in_any_spelling_and_by_id(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, cat = await roost_connect("ann"), await roost_connect("bob"), await roost_connect("cat")
        snap = await ann.create()
        sloppy = snap.code.lower().replace("1", "l").replace("0", "o")
        by_code = await bob.join(code=sloppy)
        by_id = await cat.join(room=snap.room)
        assert by_code.room == by_id.room == snap.room
        assert by_id.member_count == 3 and by_id.host == "ann"
        diff = await ann.next_event(PresenceDiff)
        while [m.user for m in diff.join] != ["cat"]:
            diff = await ann.next_event(PresenceDiff)
        assert diff.join[0].status is PresenceStatus.ONLINE


async def test_joining_twice_is_idempotent(roost_connect) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        snap = await ann.create()
        again = await ann.join(room=snap.room)
        assert again.member_count == 1 and again.seq == snap.seq  # nothing happened


async def test_unknown_rooms_and_codes_are_not_found(roost_connect) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        for kwargs in ({"code": "ZZZZZZZZ"}, {"room": "rnope"}):
            with pytest.raises(RequestError) as info:
                await ann.join(**kwargs)
            assert info.value.code == "not_found"
        with pytest.raises(RequestError) as info:
            await ann.chat_send("rnope", "hello?")
        assert info.value.code == "not_found"


async def test_private_rooms_are_never_listed(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        public = [await ann.create(public=True) for _ in range(3)]
        private = await ann.create(public=False)
        first = await bob.lobby(limit=2)
        second = await bob.lobby(cursor=first.next, limit=2)
        listed = [r.room for r in first.rooms + second.rooms]
        assert sorted(listed) == sorted(s.room for s in public)
        assert private.room not in listed and second.next is None
        assert all(r.public and r.members == 1 for r in first.rooms)


async def test_host_hands_over_when_the_host_leaves(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, cat = await roost_connect("ann"), await roost_connect("bob"), await roost_connect("cat")
        snap = await ann.create()
        await bob.join(room=snap.room)
        await cat.join(room=snap.room)
        await ann.leave(snap.room)
        left = await cat.next_event(PresenceDiff)
        while not left.leave:
            left = await cat.next_event(PresenceDiff)
        assert left.leave == ("ann",)
        host = await cat.next_event()
        assert isinstance(host, HostChanged) and host.user == "bob"  # the longest-present member
        assert host.seq == left.seq + 1
        with pytest.raises(RequestError) as info:
            await ann.chat_send(snap.room, "still here?")
        assert info.value.code == "not_member"


async def test_host_only_actions(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        snap = await ann.create()
        await bob.join(room=snap.room)
        for call in (
            bob.set_state(snap.room, 0, state={"x": 1}),
            bob.kick(snap.room, "ann"),
            bob.set_host(snap.room, "bob"),
        ):
            with pytest.raises(RequestError) as info:
                await call
            assert info.value.code == "forbidden"
        await ann.set_host(snap.room, "bob")
        assert (await bob.next_event(HostChanged)).user in {"ann", "bob"}
        await bob.kick(snap.room, "ann")
        with pytest.raises(RequestError) as info:
            await ann.chat_send(snap.room, "kicked?")
        assert info.value.code == "not_member"
        with pytest.raises(RequestError) as info:
            await bob.kick(snap.room, "nobody")
        assert info.value.code == "not_found"


async def test_a_full_room_refuses_joins(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, cat = await roost_connect("ann"), await roost_connect("bob"), await roost_connect("cat")
        snap = await ann.create(max=2)
        await bob.join(room=snap.room)
        with pytest.raises(RequestError) as info:
            await cat.join(room=snap.room)
        assert info.value.code == "room_full"


async def test_fifty_clients_racing_join_or_create_end_up_in_one_room(roost_connect) -> None:
    with trio.fail_after(30):
        clients = [await roost_connect(f"p{i}") for i in range(50)]
        rooms: list[str] = []

        async def race(client) -> None:
            snap = await client.join_or_create("lobby-eu-1", max=64)
            rooms.append(snap.room)

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(race, client)
        assert len(set(rooms)) == 1 and len(rooms) == 50
        final = await clients[0].join(room=rooms[0])
        assert final.member_count == 50


async def test_seats_are_taken_atomically(roost_connect) -> None:
    with trio.fail_after(30):
        clients = [await roost_connect(f"p{i}") for i in range(20)]
        outcomes: list[str] = []

        async def race(client) -> None:
            try:
                await client.join_or_create("tiny", max=5)
                outcomes.append("in")
            except RequestError as error:
                outcomes.append(error.code)

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(race, client)
        assert sorted(outcomes) == ["in"] * 5 + ["room_full"] * 15


async def test_token_room_scope(roost_connect, roost_keys: TestKeys) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        allowed, other = await ann.create(), await ann.create()
        scoped = await roost_connect("bob", token=roost_keys.token("bob", room=allowed.code))
        assert (await scoped.join(code=allowed.code)).room == allowed.room
        for call in (scoped.join(room=other.room), scoped.create()):
            with pytest.raises(RequestError) as info:
                await call
            assert info.value.code == "forbidden"


class TestRoomsPerConnection:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, max_rooms_per_connection=2)

    async def test_limit(self, roost_connect) -> None:
        with trio.fail_after(10):
            ann = await roost_connect("ann")
            first = await ann.create()
            await ann.create()
            with pytest.raises(RequestError) as info:
                await ann.create()
            assert info.value.code == "limit_reached"
            other = await (await roost_connect("bob")).create()
            with pytest.raises(RequestError) as info:
                await ann.join(room=other.room)
            assert info.value.code == "limit_reached"
            assert (await ann.join(room=first.room)).room == first.room  # already in: fine


async def test_unknown_room_logic_is_unsupported(roost_connect) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        with pytest.raises(RequestError) as info:
            await ann.create(logic="chess")
        assert info.value.code == "unsupported"


async def test_engine_reports_its_address(nursery: trio.Nursery, roost_keys: TestKeys) -> None:
    engine = Engine(test_config(roost_keys))
    host, port = await nursery.start(engine.serve)
    assert engine.url == f"ws://{host}:{port}/" and port > 0


async def test_two_devices_of_one_user_are_one_member(roost_connect) -> None:
    with trio.fail_after(10):
        ann, phone, laptop = await roost_connect("ann"), await roost_connect("bob"), await roost_connect("bob")
        snap = await ann.create()
        await phone.join(room=snap.room)
        await laptop.join(room=snap.room)
        page = await ann.members(snap.room)
        bob = next(m for m in page.members if m.user == "bob")
        assert (bob.sessions, bob.status, len(page.members)) == (2, PresenceStatus.ONLINE, 2)
        await phone.aclose()
        diff = await ann.next_event(PresenceDiff)
        while not any(m.user == "bob" and m.sessions == 1 for m in diff.update):
            diff = await ann.next_event(PresenceDiff)
        assert next(m for m in diff.update if m.user == "bob").status is PresenceStatus.ONLINE
