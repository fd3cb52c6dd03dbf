"""Claims stay true for the whole connection (issue 8 item 6), on MockClock over in-memory streams.

Refresh cannot change what a connection may do; the ``role`` claim reaches room logic; ``last_seen``
is the last time the member was heard from; a kick removes a member from one room with a cool-down;
``welcome.resumed`` means the memberships survived; heartbeat expiry follows ``hello.hb``; rooms
nobody shared are reaped soon after they empty.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing

from roost import Config
from roost.errors import RoomError
from roost.logic import RoomContext, RoomLogic
from roost.store.memory import MemoryStore
from roost.testing import SERVICE_KEY, TestKeys, start_engine, test_config
from roost.protocol.errors import CloseCode, ErrorCode
from roost.protocol.frames import (
    ChatSend,
    ErrorReply,
    Join,
    JoinOrCreate,
    Leave,
    Members,
    Ok,
    PresenceDiff,
    Refresh,
    Resume,
)
from tests.wire import raw_peer

BASE = time.time()


def wall() -> float:
    """The engine's wall clock moves with the MockClock (tokens and ``last_seen`` follow it)."""
    return BASE + trio.current_time()


class Roles(RoomLogic):
    """Logic that reads the role claim: refuses ``banned`` joiners and answers with the sender's role."""

    def __init__(self) -> None:
        self.joined: list[tuple[str, str | None]] = []

    def on_join(self, room: RoomContext, user: str, name: str) -> None:
        if room.role(user) == "banned":
            raise RoomError(ErrorCode.FORBIDDEN, "banned")
        self.joined.append((user, room.role(user)))

    def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
        return {"role": room.role(user), "joined": [list(j) for j in self.joined]}


@pytest.fixture
def roost_keys() -> TestKeys:
    return TestKeys(clock=wall)


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    return test_config(roost_keys, reconnect_grace=30.0, wall_clock=wall, kick_cooldown=20.0,
                       solo_room_ttl=10.0, logics={"roles": Roles})


async def peer(engine, keys: TestKeys, nursery, sub: str, **hello: Any):
    raw = await raw_peer(nursery, stream=engine.connect_memory())
    token = hello.pop("token", None) or keys.token(sub)
    return raw, await raw.hello(token, **hello)


async def reply(raw, request_id: int) -> Ok | ErrorReply:
    while True:
        frame = await raw.recv()
        if isinstance(frame, Ok | ErrorReply) and frame.id == request_id:
            return frame


# -- 1. refresh ------------------------------------------------------------------------------------


async def test_refresh_cannot_change_room_role_or_name_and_does_not_extend_the_old_access(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    ann, _ = await peer(roost_engine, roost_keys, nursery, "ann", token=roost_keys.token("ann", ttl=60), hb=300_000)
    started = trio.current_time()
    for request_id, token in enumerate((
        roost_keys.token("ann", room="r-other", ttl=3600),
        roost_keys.token("ann", role="admin", ttl=3600),
        roost_keys.token("ann", name="Someone Else", ttl=3600),
    ), start=1):
        await ann.send(Refresh(id=request_id, token=token))
        answer = await reply(ann, request_id)
        assert isinstance(answer, ErrorReply) and answer.code == "forbidden", answer
    # The unscoped token was not extended by the scoped one: access ends at its own exp (+ leeway).
    assert await ann.closed_code() == CloseCode.TOKEN_EXPIRED
    assert trio.current_time() - started == pytest.approx(60 + 30, abs=1)


async def test_refresh_with_the_same_claims_extends_the_connection(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    ann, _ = await peer(roost_engine, roost_keys, nursery, "ann", token=roost_keys.token("ann", ttl=60), hb=300_000)
    await ann.send(Refresh(id=1, token=roost_keys.token("ann", ttl=3600)))
    assert isinstance(await reply(ann, 1), Ok)
    with trio.move_on_after(200):
        await ann.closed_code()
        pytest.fail("closed although the token was refreshed")


async def test_a_scoped_token_cannot_resume_a_session_into_a_room_outside_its_scope(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    bob, welcome = await peer(roost_engine, roost_keys, nursery, "bob")
    await bob.send(JoinOrCreate(id=1, code="ROOMA"))
    snap = (await reply(bob, 1)).result
    await bob.ws.aclose()
    again, back = await peer(roost_engine, roost_keys, nursery, "bob", session=welcome.session,
                             token=roost_keys.token("bob", room="ROOMB"))
    assert back.resumed and back.sid == welcome.sid
    await again.send(Resume(id=2, room=snap["room"], epoch=snap["epoch"], seq=snap["seq"]))
    answer = await reply(again, 2)
    assert isinstance(answer, ErrorReply) and answer.code == "forbidden", answer


# -- 2. role reaches room logic --------------------------------------------------------------------


async def test_the_role_claim_reaches_room_logic(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    ann, _ = await peer(roost_engine, roost_keys, nursery, "ann", token=roost_keys.token("ann", role="referee"))
    bob, _ = await peer(roost_engine, roost_keys, nursery, "bob")
    eve, _ = await peer(roost_engine, roost_keys, nursery, "eve", token=roost_keys.token("eve", role="banned"))
    await ann.send({"t": "create", "id": 1, "logic": "roles"})
    room = (await reply(ann, 1)).result["room"]
    await bob.send(Join(id=2, room=room))
    assert isinstance(await reply(bob, 2), Ok)
    await eve.send(Join(id=3, room=room))
    refused = await reply(eve, 3)
    assert isinstance(refused, ErrorReply) and refused.code == "forbidden"
    await ann.send({"t": "send", "id": 4, "room": room, "kind": "who"})
    assert (await reply(ann, 4)).result == {"role": "referee", "joined": [["ann", "referee"], ["bob", None]]}
    await bob.send({"t": "send", "id": 5, "room": room, "kind": "who"})
    assert (await reply(bob, 5)).result["role"] is None


# -- 3. last_seen ----------------------------------------------------------------------------------


async def test_last_seen_is_the_last_time_the_member_was_heard_from(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    ann, _ = await peer(roost_engine, roost_keys, nursery, "ann", hb=300_000)
    await ann.send(JoinOrCreate(id=1, code="SEEN"))
    room = (await reply(ann, 1)).result["room"]
    bob, _ = await peer(roost_engine, roost_keys, nursery, "bob", hb=2000)
    await bob.send(Join(id=1, room=room))
    await reply(bob, 1)

    async def bob_last_seen(request_id: int) -> int:
        await ann.send(Members(id=request_id, room=room))
        page = (await reply(ann, request_id)).result
        return next(m["last_seen"] for m in page["members"] if m["user"] == "bob")

    await trio.sleep(1.5)
    chatted = trio.current_time()
    await bob.send(ChatSend(id=2, room=room, cid="c1", text="hi"))
    await reply(bob, 2)
    await trio.sleep(1.0)
    assert await bob_last_seen(10) == pytest.approx((BASE + chatted) * 1000, abs=2)  # chat moves it
    # Bob goes silent: the heartbeat expiry drops him 5 s after he was last heard, and last_seen
    # stays the time he was heard from, not the drop time.
    assert await bob.closed_code() == CloseCode.HEARTBEAT_TIMEOUT
    assert trio.current_time() - chatted == pytest.approx(5.0, abs=0.01)
    await trio.sleep(1)
    assert await bob_last_seen(11) == pytest.approx((BASE + chatted) * 1000, abs=2)


# -- 4. kick ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["host", "ops", "admin"])
async def test_a_kicked_member_is_told_keeps_its_connection_and_cannot_rejoin_during_the_cooldown(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery, by: str
) -> None:
    ann, _ = await peer(roost_engine, roost_keys, nursery, "ann", hb=300_000)
    await ann.send(JoinOrCreate(id=1, code="KICK"))
    room = (await reply(ann, 1)).result["room"]
    bob, _ = await peer(roost_engine, roost_keys, nursery, "bob", hb=300_000)
    await bob.send(Join(id=1, room=room))
    await reply(bob, 1)
    kicked_at = trio.current_time()
    if by == "host":
        await ann.send({"t": "kick", "id": 2, "room": room, "user": "bob"})
        assert isinstance(await reply(ann, 2), Ok)
    elif by == "ops":
        await roost_engine.ops.kick(room, "bob")
    else:
        await ann.send({"t": "admin", "id": 2, "key": SERVICE_KEY, "op": "kick", "args": {"room": room, "user": "bob"}})
        assert isinstance(await reply(ann, 2), Ok)
    told = await bob.recv_until(PresenceDiff)
    while not told.leave:
        told = await bob.recv_until(PresenceDiff)
    assert (told.leave, told.reason) == (("bob",), "kicked")
    await bob.send(ChatSend(id=3, room=room, cid="c", text="still here?"))
    assert (await reply(bob, 3)).code == "not_member"
    await bob.send(Join(id=4, room=room))
    refused = await reply(bob, 4)
    assert isinstance(refused, ErrorReply) and refused.code == "forbidden"
    assert refused.retry_ms == pytest.approx(20_000, abs=50)
    await trio.sleep(20 - (trio.current_time() - kicked_at))
    await bob.send(Join(id=5, room=room))
    assert isinstance(await reply(bob, 5), Ok)  # the same connection rejoins after the cool-down


# -- 5. welcome.resumed ----------------------------------------------------------------------------


async def test_resumed_is_false_once_the_grace_removed_the_memberships(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    ann, _ = await peer(roost_engine, roost_keys, nursery, "ann", hb=300_000)
    await ann.send(JoinOrCreate(id=1, code="GRACE"))
    room = (await reply(ann, 1)).result["room"]
    bob, welcome = await peer(roost_engine, roost_keys, nursery, "bob")
    await bob.send(Join(id=1, room=room))
    await reply(bob, 1)
    await bob.ws.aclose()
    left = await ann.recv_until(PresenceDiff)
    while "bob" not in left.leave:  # offline first, then gone when the 30 s grace runs out
        left = await ann.recv_until(PresenceDiff)
    late, back = await peer(roost_engine, roost_keys, nursery, "bob", session=welcome.session)
    assert not back.resumed and back.sid != welcome.sid
    await late.send(Resume(id=2, room=room, epoch=1, seq=0))
    assert (await reply(late, 2)).code == "not_member"


async def test_resumed_is_true_within_the_grace(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    bob, welcome = await peer(roost_engine, roost_keys, nursery, "bob")
    await bob.ws.aclose()
    await trio.sleep(29)
    _, back = await peer(roost_engine, roost_keys, nursery, "bob", session=welcome.session)
    assert back.resumed and back.sid == welcome.sid


# -- 6. heartbeat ----------------------------------------------------------------------------------


async def test_heartbeat_expiry_is_two_and_a_half_hb_from_hello_even_below_five_seconds(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    silent, welcome = await peer(roost_engine, roost_keys, nursery, "bob", hb=1000)
    heard = trio.current_time()
    assert welcome.hb == 1000
    assert await silent.closed_code() == CloseCode.HEARTBEAT_TIMEOUT
    assert trio.current_time() - heard == pytest.approx(2.5, abs=0.01)


# -- 7. rooms nobody shared ------------------------------------------------------------------------


async def test_rooms_created_and_left_alone_are_reaped_after_the_short_ttl(
    autojump_clock, roost_engine, roost_keys: TestKeys, nursery: trio.Nursery
) -> None:
    ann, _ = await peer(roost_engine, roost_keys, nursery, "ann", hb=300_000)
    bob, _ = await peer(roost_engine, roost_keys, nursery, "bob", hb=300_000)
    await ann.send(JoinOrCreate(id=1, code="SHARED"))
    shared = (await reply(ann, 1)).result["room"]
    await bob.send(Join(id=1, room=shared))
    await reply(bob, 1)
    for who in (ann, bob):
        await who.send(Leave(id=2, room=shared))
        await reply(who, 2)
    for n in range(40):  # create + leave, as fast as the rate limit allows
        await ann.send({"t": "create", "id": 10 + n})
        room = (await reply(ann, 10 + n)).result["room"]
        await ann.send(Leave(id=100 + n, room=room))
        assert isinstance(await reply(ann, 100 + n), Ok)
    assert len(roost_engine.router.rooms) == 41
    await trio.sleep(10.5)
    assert set(roost_engine.router.rooms) == {shared}  # the one that had two members keeps room_ttl
    await trio.sleep(3600)
    assert not roost_engine.router.rooms


async def test_a_room_that_was_shared_keeps_room_ttl_across_a_restart(
    autojump_clock, roost_keys: TestKeys, roost_config: Config, nursery: trio.Nursery
) -> None:
    store = MemoryStore()
    async with trio.open_nursery() as first:
        engine = await start_engine(first, roost_config, store=store)
        ann, _ = await peer(engine, roost_keys, first, "ann", hb=300_000)
        bob, _ = await peer(engine, roost_keys, first, "bob", hb=300_000)
        await ann.send(JoinOrCreate(id=1, code="SHARED"))
        shared = (await reply(ann, 1)).result["room"]
        await bob.send(Join(id=1, room=shared))
        await reply(bob, 1)
        for who in (ann, bob):
            await who.send(Leave(id=2, room=shared))
            await reply(who, 2)
        first.cancel_scope.cancel()
    engine = await start_engine(nursery, roost_config, store=store)
    await trio.sleep(60)
    assert set(engine.router.rooms) == {shared}


async def test_across_a_restart_resumed_follows_the_fresh_grace_and_last_seen_is_the_stored_one(
    autojump_clock, roost_keys: TestKeys, roost_config: Config, nursery: trio.Nursery
) -> None:
    store, config = MemoryStore(), roost_config.replace(session_secret=b"k" * 32)
    async with trio.open_nursery() as first:
        engine = await start_engine(first, config, store=store)
        ann, ann_welcome = await peer(engine, roost_keys, first, "ann", hb=300_000)
        await ann.send(JoinOrCreate(id=1, code="KEPT"))
        room = (await reply(ann, 1)).result["room"]
        bob, bob_welcome = await peer(engine, roost_keys, first, "bob", hb=300_000)
        await bob.send(Join(id=1, room=room))
        await reply(bob, 1)
        await trio.sleep(5)
        await bob.send(ChatSend(id=2, room=room, cid="c", text="bye"))
        await reply(bob, 2)
        await trio.sleep(5)
        closed = trio.current_time()
        await bob.ws.aclose()  # bob is last heard from with his Close; the drop stores it
        while not (await ann.recv_until(PresenceDiff)).update:
            pass
        await trio.sleep(5)
        first.cancel_scope.cancel()
    await trio.sleep(100)  # down for longer than the grace: members get a fresh one from the restart
    engine = await start_engine(nursery, config, store=store)
    restarted = trio.current_time()
    snapshot = await engine.ops.snapshot(room)
    bob_entry = next(m for m in snapshot.members if m.user == "bob")
    assert bob_entry.last_seen == pytest.approx((BASE + closed) * 1000, abs=2)
    await trio.sleep(29)
    _, back = await peer(engine, roost_keys, nursery, "bob", session=bob_welcome.session)
    assert back.resumed and back.sid == bob_welcome.sid
    await trio.sleep(restarted + 30.5 - trio.current_time())  # the grace from the restart is over
    _, late = await peer(engine, roost_keys, nursery, "ann", session=ann_welcome.session)
    assert not late.resumed and late.sid != ann_welcome.sid
