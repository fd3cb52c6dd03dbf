"""No reply exceeds the frame limit, and no member can make a room or the lobby unusable.

Every page (``lobby``, admin ``rooms``, ``members``, ``history``) is cut by encoded size as well as by
count, a join snapshot carries as many members as fit plus ``members_next``, and the opaque values
members control (room ``meta``, presence ``data``, chat ``meta``, game ``state``) have byte limits. Each
test builds its replies from user data at the largest size the server accepts.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio

from roost import Config, RoomContext, RoomLogic
from roost.config import ConfigError
from roost.state import RoomOptions
from roost.testing import SERVICE_KEY, TestKeys, test_config
from roost.client import Client, RequestError
from roost.protocol.codec import SERVER_LIMITS, dump_record, encode
from roost.protocol.frames import ErrorReply, MessageEvent, Ok, Send, StateEvent
from roost.protocol.schema import Limits
from tests.wire import raw_peer

KIB = 1024
META_BYTES = 16 * KIB
"""The default byte limits (PROTOCOL.md §3.4): room meta, presence data, chat meta."""
STATE_BYTES = 256 * KIB
FITS = SERVER_LIMITS.max_frame_bytes // 2
"""What "fits with margin" means here: half the server frame limit."""


def opaque(size: int) -> dict[str, Any]:
    """A map whose msgpack encoding is exactly ``size`` bytes (256 + 6 <= size < 65536 + 6)."""
    value = {"x": "a" * (size - 6)}
    assert len(msgpack.packb(value, use_bin_type=True)) == size
    return value


def reply_size(result: Any) -> int:
    """The encoded size of the ``ok`` frame that carried ``result``."""
    return len(encode(Ok(id=1, result=dump_record(result))))


def test_the_documented_defaults_are_the_configured_ones() -> None:
    config = Config()
    assert (config.max_meta_bytes, config.max_presence_bytes, config.max_chat_meta_bytes) == (META_BYTES,) * 3
    assert config.max_state_bytes == STATE_BYTES


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_meta_bytes", 32 * KIB + 1), ("max_presence_bytes", 32 * KIB + 1), ("max_chat_meta_bytes", 32 * KIB + 1),
     ("max_state_bytes", STATE_BYTES + 1), ("max_presence_bytes", 0)],
)
def test_byte_limits_cannot_exceed_what_every_client_accepts(name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=name):
        Config(**{name: value})
    if value:
        assert Config(**{name: value - 1}).limits == Limits(**{name: value - 1})


def test_a_config_builds_its_client_limits_once() -> None:
    """Every inbound frame is decoded with ``config.limits``: one object per config, not one per frame
    (a copy made with ``replace`` gets its own, with the changed values)."""
    config = Config(max_chat_chars=100)
    assert config.limits is config.limits
    assert config.limits == Limits(max_chat_chars=100)
    changed = config.replace(max_chat_chars=50)
    assert changed.limits.max_chat_chars == 50 and config.limits.max_chat_chars == 100


async def test_welcome_announces_the_byte_limits(roost_connect) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        limits = ann.welcome.limits or {}
        assert (limits["meta"], limits["data"], limits["chat_meta"], limits["state"]) == (
            META_BYTES, META_BYTES, META_BYTES, STATE_BYTES)


async def _twenty_rooms_with_the_largest_meta(roost_connect) -> set[str]:
    ann, bob = await roost_connect("ann"), await roost_connect("bob")  # 16 rooms per connection at most
    rooms = set()
    for index in range(20):
        owner = ann if index % 2 else bob
        snapshot = await owner.create(public=True, meta=opaque(META_BYTES))
        rooms.add(snapshot.room)
    return rooms


async def test_lobby_of_rooms_with_the_largest_meta_is_paged_by_size(roost_connect) -> None:
    with trio.fail_after(20):
        rooms = await _twenty_rooms_with_the_largest_meta(roost_connect)
        carol = await roost_connect("carol")
        page = await carol.lobby()
        assert reply_size(page) <= FITS and page.next is not None and len(page.rooms) < 20
        seen = [info.room for info in page.rooms]
        while page.next is not None:
            page = await carol.lobby(cursor=page.next)
            assert reply_size(page) <= FITS
            seen += [info.room for info in page.rooms]
        assert sorted(seen) == sorted(rooms)  # every room exactly once
        assert carol.connected


async def test_admin_rooms_of_rooms_with_the_largest_meta_is_paged_by_size(roost_connect) -> None:
    with trio.fail_after(20):
        rooms = await _twenty_rooms_with_the_largest_meta(roost_connect)
        ops = await roost_connect("ops")
        page = await ops.admin(SERVICE_KEY, "rooms", {"limit": 100})
        assert reply_size(page) <= FITS and page.next is not None and len(page.rooms) < 20
        seen = [info.room for info in page.rooms]
        while page.next is not None:
            page = await ops.admin(SERVICE_KEY, "rooms", {"cursor": page.next})
            assert reply_size(page) <= FITS
            seen += [info.room for info in page.rooms]
        assert sorted(seen) == sorted(rooms)


async def test_a_newcomer_joins_a_room_of_64_members_with_the_largest_presence_data(roost_connect) -> None:
    with trio.fail_after(30):
        host = await roost_connect("host", memory=True)
        snapshot = await host.create(max=100, meta=opaque(META_BYTES))
        room = snapshot.room
        await host.set_presence(room, data=opaque(META_BYTES))
        users = {"host"}
        for index in range(63):
            # Members that set their data and drop stay members (offline, within the grace): the room
            # holds 64 of them without 64 live connections receiving every diff.
            member = await roost_connect(f"m{index:02d}", memory=True)
            await member.join(room=room)
            await member.set_presence(room, data=opaque(META_BYTES))
            await member.aclose()
            users.add(f"m{index:02d}")
        newcomer = await roost_connect("newcomer")
        joined = await newcomer.join(room=room)
        users.add("newcomer")
        assert reply_size(joined) <= FITS
        assert joined.member_count == 65 and joined.members_next is not None
        seen = [m.user for m in joined.members]
        cursor = joined.members_next
        while cursor is not None:
            page = await newcomer.members(room, cursor=cursor, limit=100)
            assert reply_size(page) <= FITS
            seen += [m.user for m in page.members]
            cursor = page.next
        assert sorted(seen) == sorted(users)  # every member exactly once
        page = await newcomer.members(room, limit=100)  # the first page, asked for directly
        assert reply_size(page) <= FITS and page.next is not None
        snapshot = await host.admin(SERVICE_KEY, "room", {"room": room})  # the operator's view too
        assert reply_size(snapshot) <= FITS and snapshot.members_next is not None


async def test_history_of_the_largest_messages_is_paged_by_size(roost_connect) -> None:
    with trio.fail_after(30):
        ann = await roost_connect("ann")
        room = (await ann.create()).room
        text = "\U0001f426" * Config().max_chat_chars  # four bytes per code point
        for index in range(40):
            await ann.chat_send(room, text, meta=opaque(META_BYTES), cid=f"c{index}")
        page = await ann.history(room, limit=100)
        assert reply_size(page) <= FITS and page.next is not None
        seen = [m.n for m in page.messages]
        while page.next is not None:
            page = await ann.history(room, before=page.next)
            assert reply_size(page) <= FITS
            seen = [m.n for m in page.messages] + seen
        assert seen == list(range(1, 41))  # every message exactly once, in order


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"t": "create"}, "meta"),
        ({"t": "join_or_create", "code": "BIGMETA"}, "meta"),
        ({"t": "presence_set", "room": "ROOM"}, "data"),
        ({"t": "chat_send", "room": "ROOM", "cid": "c1", "text": "hi"}, "meta"),
    ],
)
async def test_opaque_values_one_byte_over_their_limit_are_refused(
    nursery: trio.Nursery, roost_engine, roost_keys: TestKeys, frame: dict[str, Any], field: str
) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.hello(roost_keys.token("ann"))
        await peer.send({"t": "create", "id": 1})
        created = await peer.recv_until(Ok)
        room = created.result["room"]
        request = {key: room if value == "ROOM" else value for key, value in frame.items()}
        await peer.send({**request, "id": 2, field: opaque(META_BYTES + 1)})
        refused = await peer.recv_until(Ok | ErrorReply)
        assert isinstance(refused, ErrorReply) and (refused.id, refused.code) == (2, "too_large"), refused
        await peer.send({**request, "id": 3, field: opaque(META_BYTES)})
        accepted = await peer.recv_until(Ok | ErrorReply)
        assert isinstance(accepted, Ok) and accepted.id == 3, accepted


class TestLargestEvents:
    """Events built from user data at the largest client frame the server accepts (1 MiB here)."""

    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, max_frame_bytes=SERVER_LIMITS.max_frame_bytes, outbox_max_bytes=8 * 1024 * KIB)

    @staticmethod
    async def _pair(roost_connect) -> tuple[Client, Client, str]:
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        room = (await ann.create()).room
        await bob.join(room=room)
        return ann, bob, room

    async def test_a_send_whose_event_exceeds_the_frame_is_refused_without_using_a_seq(self, roost_connect) -> None:
        with trio.fail_after(20):
            ann, bob, room = await self._pair(roost_connect)
            before = await bob.next_event()  # bob's own join
            size = SERVER_LIMITS.max_frame_bytes
            body = b"x" * (size - 100)
            body += b"x" * (size - len(encode_send(room, body)))
            assert len(encode_send(room, body)) == size  # the largest frame the server accepts
            with pytest.raises(RequestError) as info:
                await ann.send(room, "big", body)
            assert info.value.code == "too_large"
            await ann.send(room, "small", 1)
            event = await bob.next_event(MessageEvent)
            assert (event.kind, event.seq) == ("small", before.seq + 1)  # no seq used up, no event lost

    async def test_a_host_state_over_its_limit_is_refused(
        self, nursery: trio.Nursery, roost_engine, roost_keys: TestKeys, roost_connect
    ) -> None:
        with trio.fail_after(20):
            peer = await raw_peer(nursery, roost_engine.url)
            await peer.hello(roost_keys.token("ann"))
            await peer.send({"t": "create", "id": 1})
            room = (await peer.recv_until(Ok)).result["room"]
            for request_id, size in ((2, STATE_BYTES + 1), (3, SERVER_LIMITS.max_frame_bytes - 200)):
                await peer.send({"t": "state_set", "id": request_id, "room": room, "version": 0,
                                 "state": b"s" * (size - 5)})  # bin 32: a 5-byte header
                refused = await peer.recv_until(Ok | ErrorReply)
                assert isinstance(refused, ErrorReply) and refused.code == "too_large", refused
            await peer.send({"t": "state_set", "id": 4, "room": room, "version": 0, "state": b"s" * (STATE_BYTES - 5)})
            accepted = await peer.recv_until(Ok | ErrorReply)
            assert isinstance(accepted, Ok) and accepted.result == {"version": 1}, accepted
            carol = await roost_connect("carol")
            joined = await carol.join(room=room)  # the largest state does not keep anyone out
            assert joined.version == 1 and reply_size(joined) <= SERVER_LIMITS.max_frame_bytes * 3 // 4


class BigState(RoomLogic):
    """Room logic that sets a game state of the size a member asks for."""

    def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
        return room.set_state(b"s" * (body - 5), reason="grow")


class TestLogicState:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, logics={"big": BigState}, outbox_max_bytes=8 * 1024 * KIB)

    async def test_a_logic_state_too_large_to_send_is_refused_and_changes_nothing(self, roost_connect) -> None:
        with trio.fail_after(20):
            ann, bob = await roost_connect("ann"), await roost_connect("bob")
            room = (await ann.create(logic="big")).room
            await bob.join(room=room)
            before = await bob.next_event()  # bob's own join
            for size in (STATE_BYTES + 1, SERVER_LIMITS.max_frame_bytes + 1):
                with pytest.raises(RequestError) as info:
                    await ann.send(room, "grow", size)
                assert info.value.code == "too_large"
            assert await ann.request(Send(id=0, room=room, kind="grow", body=STATE_BYTES)) == 1  # the refused ones left version 0
            event = await bob.next_event(StateEvent)
            assert (event.version, event.seq, len(event.state)) == (1, before.seq + 1, STATE_BYTES - 5)


def encode_send(room: str, body: bytes) -> bytes:
    return encode(Send(id=1, room=room, kind="big", body=body), SERVER_LIMITS)


async def test_a_reply_the_server_cannot_encode_is_refused_in_band(roost_engine, roost_connect, caplog) -> None:
    """A lobby entry over the server's limits (an embedding app's room, made in-process without the
    wire's checks) is the server's bug: the caller gets an error, not a 1011 close and a traceback."""
    with trio.fail_after(10):
        await roost_engine.router.create(RoomOptions(public=True, meta=opaque(SERVER_LIMITS.max_meta_bytes + 1)))
        carol = await roost_connect("carol")
        with pytest.raises(RequestError) as info:
            await carol.lobby()
        assert info.value.code == "too_large"
        assert carol.connected and (await carol.lobby(limit=1, cursor="z")).rooms == ()
        assert not [r for r in caplog.records if r.exc_info]
