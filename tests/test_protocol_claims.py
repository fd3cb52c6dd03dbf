"""What PROTOCOL.md claims the server does, each claim pinned by a test (issue 8, item 8).

A client was written from the document alone; these are the places where it was unclear or wrong.
Each test names the section it pins, so a change of behaviour shows up as a document to fix.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgpack
import pytest
import trio

from roost import Config, Engine
from roost import router as router_module
from roost.revocations import Revocations
from roost.store.memory import MemoryStore
from roost.testing import SERVICE_KEY, TestKeys, test_config
from roost.protocol import Sender, decode, encode
from roost.client import RequestError
from roost.protocol.codec import load_record
from roost.protocol.errors import CloseCode, ErrorCode, LocalProtocolError, RemoteProtocolError
from roost.protocol.frames import (
    ChatEvent,
    ChatSend,
    ErrorReply,
    Ok,
    Ping,
    Pong,
    PresenceDiff,
    Resume,
    ResumeResult,
    RoomEvent,
    RoomSnapshot,
    Send,
    Sync,
)
from roost.protocol.tokens import Claims, generate_key, kid_for
from tests.wire import RawPeer, raw_peer

# -- §2: ext values and repeated keys (the decode side is in test_protocol_codec.py) ----------------


@pytest.mark.parametrize("value", [msgpack.Timestamp(1), {1, 2}, object()])
def test_values_the_decoder_cannot_produce_are_refused_when_encoding(value: Any) -> None:
    """The decoder refuses every ext value, so an application's Timestamp (or set) never goes out either."""
    with pytest.raises(LocalProtocolError) as info:
        encode(Send(id=1, room="r", kind="k", body={"when": value}))
    assert info.value.code is ErrorCode.BAD_FIELD


# -- §3: hello -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"v": 0},
        {"v": 1, "hb": 999},
        {"v": 1, "hb": 300_001},
        {"v": 1, "token": 5},
        {"v": 1, "session": ""},
        {"v": 1, "agent": "x" * 129},
        {"v": "1"},
        {},
    ],
    ids=["v-0", "hb-low", "hb-high", "token-int", "session-empty", "agent-long", "v-str", "no-v"],
)
async def test_a_hello_with_an_invalid_field_closes_with_4502(
    roost_engine: Engine, roost_keys: TestKeys, nursery, fields: dict[str, Any]
) -> None:
    """§3 step 2: any first frame that does not decode as a valid hello is 4502, not 4503 or 4500."""
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.send({"t": "hello", "token": roost_keys.token("ann"), **fields})
        assert await peer.closed_code() == CloseCode.BAD_FRAME
        assert roost_engine.gateway.stats["sessions_opened"] == 0


# -- §3.1: bad frames and the rate limit ------------------------------------------------------------


async def _bad(peer: RawPeer) -> ErrorReply:
    await peer.send(b"\xc1")
    reply = await peer.recv()
    assert isinstance(reply, ErrorReply) and reply.code == "malformed" and reply.id is None
    return reply


async def test_the_eleventh_bad_frame_in_a_minute_closes(
    autojump_clock, roost_engine: Engine, roost_keys, nursery
) -> None:
    """§3.1: ten undecodable frames within 60 s are answered and tolerated; the 11th is answered, then 4502."""
    peer = await raw_peer(nursery, stream=roost_engine.connect_memory())
    await peer.hello(roost_keys.token("ann"), hb=300_000)
    for _ in range(10):
        await _bad(peer)
    await peer.send(Ping())
    assert isinstance(await peer.recv(), Pong)  # still open after ten
    await trio.sleep(61)  # the window slides: the first ten no longer count
    for _ in range(10):
        await _bad(peer)
    await peer.send(Ping())
    assert isinstance(await peer.recv(), Pong)
    await _bad(peer)  # the 11th within the window: its error comes, then the Close
    assert await peer.closed_code() == CloseCode.BAD_FRAME


class TestPingsAreRequests:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, rate=5.0, burst=5)

    async def test_pings_count_toward_the_rate_limit(
        self, autojump_clock, roost_engine: Engine, roost_keys, nursery
    ) -> None:
        """§3.1/§3.4: a ping takes a token like any request; over the rate it gets rate_limited (no id)."""
        peer = await raw_peer(nursery, stream=roost_engine.connect_memory())
        await peer.hello(roost_keys.token("ann"), hb=300_000)
        for _ in range(6):
            await peer.send(Ping())
        replies = [await peer.recv() for _ in range(6)]
        assert [type(r) for r in replies] == [Pong] * 5 + [ErrorReply]
        assert (replies[-1].code, replies[-1].id, replies[-1].retry_ms) == ("rate_limited", None, 200)


# -- §3.4: welcome.limits, §10: stats ------------------------------------------------------------


async def test_welcome_limits_have_the_documented_keys_and_types(roost_engine: Engine, roost_keys, nursery) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        welcome = await peer.hello(roost_keys.token("ann"))
        limits = welcome.limits
        assert limits == {"frame": 65_536, "rate": 50.0, "burst": 100, "rooms": 16, "chat": 4096,
                          "meta": 16_384, "data": 16_384, "chat_meta": 16_384, "state": 262_144}
        assert {k: type(v) for k, v in limits.items()} == {
            "frame": int, "rate": float, "burst": int, "rooms": int, "chat": int,
            "meta": int, "data": int, "chat_meta": int, "state": int}


STATS_KEYS = {
    "connections", "sessions", "rooms", "restarts", "store_commits", "revocations", "connections_accepted",
    "sessions_opened", "auth_failures", "auth_timeouts", "handshakes_refused", "rate_limited", "slow_consumers",
    "service_auth_failures",
}


async def test_admin_stats_has_every_documented_key_from_the_start(roost_connect) -> None:
    """§10: every counter is present (0 before its first event), and nothing undocumented."""
    with trio.fail_after(10):
        ops = await roost_connect("ops")
        stats = await ops.admin(SERVICE_KEY, "stats")
        assert set(stats) == STATS_KEYS
        assert all(type(v) is int for v in stats.values())
        assert stats["auth_failures"] == 0 and stats["sessions_opened"] == 1


# -- §4: codes and room size -----------------------------------------------------------------------


async def test_client_codes_are_normalised_like_generated_ones(roost_connect) -> None:
    """§4: a join_or_create code is stored in normal form (upper case, I/L as 1, O as 0); any spelling finds it."""
    with trio.fail_after(10):
        ann, bob, cat = await roost_connect("ann"), await roost_connect("bob"), await roost_connect("cat")
        snap = await ann.join_or_create("x-Ol")
        assert snap.code == "X-01"
        assert (await bob.join(code="x-01")).room == snap.room
        assert (await cat.join_or_create("X-oL")).room == snap.room
        assert snap.max == 64  # the default room size


async def test_a_client_code_that_equals_a_live_code_joins_that_room(roost_connect) -> None:
    """§4: one namespace: join_or_create with another room's (generated) code joins it, as join does."""
    with trio.fail_after(10):
        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        private = await ann.create(public=False)
        joined = await bob.join_or_create(private.code.lower())
        assert joined.room == private.room and joined.member_count == 2


async def test_generated_codes_are_drawn_until_free(roost_connect, monkeypatch) -> None:
    """§4: a generated code never equals a live code, client-chosen ones included: it is drawn again."""
    draws = iter(["K7M2QX9P", "K7M2QX9P", "AAAAAAAA"])
    monkeypatch.setattr(router_module, "new_code", lambda: next(draws))
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        chosen = await ann.join_or_create("k7m2qx9p")
        assert chosen.code == "K7M2QX9P"
        generated = await ann.create()
        assert generated.code == "AAAAAAAA" and generated.room != chosen.room


async def test_a_room_claim_names_a_code_in_any_spelling(roost_connect, roost_keys: TestKeys) -> None:
    """§4/§9.1: the token's ``room`` claim is compared like codes are (normal form), or as a room id."""
    with trio.fail_after(10):
        ann = await roost_connect("ann", token=roost_keys.token("ann", room="table-o"))
        snap = await ann.join_or_create("Table-O")
        assert snap.code == "TAB1E-0"  # L is read as 1, O as 0
        bob = await roost_connect("bob", token=roost_keys.token("bob", room=snap.room))
        assert (await bob.join_or_create("tab1e-o")).room == snap.room


async def test_a_scoped_join_or_create_of_another_code_creates_nothing(
    roost_connect, roost_keys: TestKeys, roost_engine: Engine
) -> None:
    """§4: refused ``forbidden`` before a room exists, so a scoped token cannot leave empty rooms behind."""
    with trio.fail_after(10):
        ann = await roost_connect("ann", token=roost_keys.token("ann", room="mine"))
        with pytest.raises(RequestError) as info:
            await ann.join_or_create("elsewhere")
        assert info.value.code == "forbidden"
        assert roost_engine.router.by_code("elsewhere") is None and not roost_engine.router.rooms


# -- §5: positions of snapshots, syncs and replays -------------------------------------------------


async def _until_ok(peer: RawPeer) -> tuple[list[RoomEvent], Ok]:
    events: list[RoomEvent] = []
    while True:
        frame = await peer.recv()
        if isinstance(frame, Ok):
            return events, frame
        assert isinstance(frame, RoomEvent), frame
        events.append(frame)


async def test_events_before_the_ok_of_create_and_join_are_in_the_snapshot(roost_engine, roost_keys, nursery) -> None:
    """§5.1: the joiner's own presence join (and host) events arrive before the ok, seq <= snapshot.seq."""
    with trio.fail_after(10):
        ann, bob = await raw_peer(nursery, roost_engine.url), await raw_peer(nursery, roost_engine.url)
        await ann.hello(roost_keys.token("ann"))
        await bob.hello(roost_keys.token("bob"))
        await ann.send({"t": "create", "id": 1})
        early, ok = await _until_ok(ann)
        created = load_record(RoomSnapshot, ok.result)
        assert early and all(e.seq <= created.seq for e in early)
        assert [m.user for m in created.members] == ["ann"] and created.host == "ann"
        await bob.send({"t": "join", "id": 2, "room": created.room})
        early, ok = await _until_ok(bob)
        joined = load_record(RoomSnapshot, ok.result)
        assert early and all(e.seq <= joined.seq for e in early)
        assert isinstance(early[-1], PresenceDiff) and early[-1].seq == joined.seq
        assert {m.user for m in joined.members} == {"ann", "bob"}
        await ann.send(ChatSend(id=3, room=created.room, cid="c", text="after"))
        chat = await bob.recv()
        assert isinstance(chat, ChatEvent) and chat.seq == joined.seq + 1


async def test_a_sync_repeats_its_snapshots_position_and_takes_no_seq(roost_engine, roost_keys, nursery) -> None:
    """§5.1/§5.3: ok (resync) first, then the sync at the snapshot's (epoch, seq); the next event is seq + 1."""
    with trio.fail_after(10):
        ann = await raw_peer(nursery, roost_engine.url)
        await ann.hello(roost_keys.token("ann"))
        await ann.send({"t": "create", "id": 1})
        _, ok = await _until_ok(ann)
        snap = load_record(RoomSnapshot, ok.result)
        await ann.send(Resume(id=2, room=snap.room, epoch=snap.epoch + 1, seq=0))
        reply = await ann.recv()
        assert isinstance(reply, Ok) and load_record(ResumeResult, reply.result).resync
        sync = await ann.recv()
        assert isinstance(sync, Sync)
        assert (sync.epoch, sync.seq) == (sync.snapshot.epoch, sync.snapshot.seq) == (snap.epoch, snap.seq)
        await ann.send(ChatSend(id=3, room=snap.room, cid="c", text="next"))
        chat = await ann.recv()
        assert isinstance(chat, ChatEvent) and chat.seq == sync.seq + 1


# -- §8.2: 1000 ends the connection, not the session --------------------------------------------------


async def test_a_1000_close_ends_the_connection_not_the_session(roost_engine, roost_keys, nursery) -> None:
    with trio.fail_after(10):
        ann, bob = await raw_peer(nursery, roost_engine.url), await raw_peer(nursery, roost_engine.url)
        welcome = await ann.hello(roost_keys.token("ann"))
        await bob.hello(roost_keys.token("bob"))
        await ann.send({"t": "create", "id": 1})
        _, ok = await _until_ok(ann)
        snap = load_record(RoomSnapshot, ok.result)
        await bob.send({"t": "join", "id": 2, "room": snap.room})
        _, ok = await _until_ok(bob)
        position = load_record(RoomSnapshot, ok.result).seq
        await ann.ws.aclose(code=1000)
        diff = await bob.recv_until(PresenceDiff)
        assert not diff.leave and [(m.user, m.status) for m in diff.update] == [("ann", "offline")]
        again = await raw_peer(nursery, roost_engine.url)
        resumed = await again.hello(roost_keys.token("ann"), session=welcome.session)
        assert resumed.resumed and resumed.sid == welcome.sid
        await again.send(Resume(id=3, room=snap.room, epoch=snap.epoch, seq=position))
        reply = await again.recv()
        assert isinstance(reply, Ok) and load_record(ResumeResult, reply.result).replayed >= 1


# -- §7: state_set ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [{}, {"state": None}, {"phase": None}])
def test_state_set_needs_state_or_phase(fields: dict[str, Any]) -> None:
    """§7: nil is absent, so a state_set cannot set the state to nil; without either it is bad_field."""
    data = msgpack.packb({"t": "state_set", "id": 1, "room": "r", "version": 0, **fields})
    with pytest.raises(RemoteProtocolError) as info:
        decode(data, Sender.CLIENT)
    assert info.value.code is ErrorCode.BAD_FIELD and info.value.request_id == 1


# -- §9.1: kid, revocation by user -------------------------------------------------------------


def test_the_default_kid_is_blake2b_with_a_9_byte_digest() -> None:
    """§9.1: BLAKE2b with digest_size=9 (its own parameter block), not the first 9 bytes of BLAKE2b-512."""
    _kid, key = generate_key()
    raw = bytes(key.verify_key)
    kid = kid_for(key.verify_key)
    assert kid == base64.urlsafe_b64encode(hashlib.blake2b(raw, digest_size=9).digest()).rstrip(b"=").decode()
    assert kid != base64.urlsafe_b64encode(hashlib.blake2b(raw).digest()[:9]).rstrip(b"=").decode()
    assert len(kid) == 12


def _claims(iat: int) -> Claims:
    return Claims(sub="ann", name="Ann", iat=iat, exp=iat + 3600, jti=f"j{iat}", kid="k")


async def test_revoking_a_user_refuses_tokens_issued_at_or_before_it() -> None:
    """§9.1/§10: whole seconds of the server clock; the entry is forgotten at the first start after its exp."""
    now = [1_800_000_000.7]
    store = MemoryStore()
    revocations = Revocations(store, lambda: now[0])
    await revocations.revoke_user("ann", until=1_800_000_100)
    assert revocations.is_revoked(_claims(1_799_999_000))
    assert revocations.is_revoked(_claims(1_800_000_000))  # same second: refused
    assert not revocations.is_revoked(_claims(1_800_000_001))
    now[0] = 1_800_000_100.0
    kept = Revocations(store, lambda: now[0])
    await kept.load()
    assert kept.is_revoked(_claims(1_800_000_000))  # a restart at exp keeps it
    now[0] = 1_800_000_101.0
    forgotten = Revocations(store, lambda: now[0])
    await forgotten.load()
    assert not forgotten.is_revoked(_claims(1_800_000_000))  # after exp: forgotten, old tokens work again


# -- §10: admin rooms pages like lobby ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code"),
    [({"limit": 101}, "bad_field"), ({"limit": 0}, "bad_field"), ({"limit": -1}, "bad_field"),
     ({"limit": "5"}, "bad_field"), ({"cursor": ""}, "bad_field"), ({"cursor": "x" * 257}, "too_long")],
)
async def test_admin_rooms_refuses_the_page_arguments_lobby_refuses(roost_connect, args: dict[str, Any], code) -> None:
    """§10: the admin listing checks cursor and limit with lobby's own field specs (no clamping)."""
    with trio.fail_after(10):
        ops = await roost_connect("ops")
        await ops.create()
        lobby = {"t": "lobby", "id": 1, **args}
        with pytest.raises(RemoteProtocolError) as refused:
            decode(msgpack.packb(lobby), Sender.CLIENT)
        assert refused.value.code == code  # what lobby answers
        with pytest.raises(RequestError) as info:
            await ops.admin(SERVICE_KEY, "rooms", args)
        assert info.value.code == code
        assert len((await ops.admin(SERVICE_KEY, "rooms", {"limit": 100})).rooms) == 1
