"""Delivery status (PROTOCOL.md §17): delivered cursors, ``receipts`` to authors, ``chat_status``;
and ending a session now (``bye``) as distinct from a drop."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from roost import Config
from roost.client import RequestError
from roost.protocol.codec import encode, load_record
from roost.protocol.errors import CloseCode
from roost.protocol.frames import (
    Bye,
    ChatEvent,
    ChatStatusPage,
    Delivered,
    ErrorReply,
    JoinOrCreate,
    Ok,
    PresenceDiff,
    Receipts,
)
from roost.receipts import Census, DeliveryCursors
from roost.store.lmdb import LmdbStore
from roost.testing import TestKeys, connect_client, start_engine, test_config
from tests.wire import client_frame, raw_peer


async def three_in_a_room(roost_connect, **options):
    ann, bob, cat = [await roost_connect(u, **options) for u in ("ann", "bob", "cat")]
    snap = await ann.create()
    await bob.join(room=snap.room)
    await cat.join(room=snap.room)
    return ann, bob, cat, snap.room


async def status_of(ann, n: int, *, delivered: int, read: int) -> Receipts:
    """Ann's ``receipts`` until message ``n`` shows the given counts (the last frame that did)."""
    while True:
        frame = await ann.next_event(Receipts)
        for status in frame.msgs:
            if status.n == n and (status.delivered, status.read) == (delivered, read):
                return frame


async def test_sent_delivered_read_with_three_members(roost_connect) -> None:
    with trio.fail_after(20):
        ann, bob, cat, room = await three_in_a_room(roost_connect)
        acks = [await ann.chat_send(room, f"line {i}") for i in range(3)]
        # bob and cat report delivery by themselves: ann sees every message delivered to both
        frame = await status_of(ann, 3, delivered=2, read=0)
        assert all(s.of == 2 for s in frame.msgs) and frame.room == room
        status = await ann.chat_status(room, 2)
        assert (status.delivered, status.read, status.of, status.users, status.next) == (2, 0, 2, (), None)
        await bob.read(room, 2)
        frame = await status_of(ann, 2, delivered=2, read=1)
        assert {s.n: (s.delivered, s.read) for s in frame.msgs}[1] == (2, 1)
        page = await ann.chat_status(room, 2, who="read")
        assert (page.read, page.users, page.next) == (1, ("bob",), None)
        first = await ann.chat_status(room, 3, who="delivered", limit=1)
        rest = await ann.chat_status(room, 3, who="delivered", cursor=first.next, limit=1)
        assert (first.users, first.next, rest.users, rest.next) == (("bob",), "bob", ("cat",), None)
        # bob's own view of ann's message: the author is not counted, bob is
        assert (await bob.chat_status(room, acks[0].n)).of == 2
        with pytest.raises(RequestError) as info:
            await ann.chat_status(room, 99)
        assert info.value.code == "not_found"


async def test_receipts_go_to_authors_only(roost_connect) -> None:
    """The O(N²) trap: a cursor move is not broadcast; only the author of a changed message hears."""
    with trio.fail_after(20):
        ann, bob, cat, room = await three_in_a_room(roost_connect)
        await ann.chat_send(room, "from ann")
        await status_of(ann, 1, delivered=2, read=0)
        await cat.read(room, 1)
        await status_of(ann, 1, delivered=2, read=1)
        await bob.chat_send(room, "marker")  # bob's stream, in order: no receipts about ann's message
        while True:
            event = await bob.next_event()
            assert not isinstance(event, Receipts)
            if isinstance(event, ChatEvent) and event.msg.text == "marker":
                break


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    return test_config(roost_keys, receipt_window=0.5, rate=1000.0, burst=1000)


async def test_a_burst_is_few_delivered_frames_and_one_receipts_frame_per_window(
    autojump_clock: trio.testing.MockClock, roost_connect
) -> None:
    ann, bob, cat, room = await three_in_a_room(roost_connect, memory=True)
    async with trio.open_nursery() as nursery:  # 100 events back to back for bob and cat
        for i in range(100):
            nursery.start_soon(ann.chat_send, room, f"burst {i}")
    start = trio.current_time()
    frames: list[Receipts] = []
    latest: dict[int, tuple[int, int]] = {}
    while latest.get(100) != (2, 0):
        frames.append(await ann.next_event(Receipts))
        latest.update({s.n: (s.delivered, s.read) for s in frames[-1].msgs})
    # one in flight per room, its ok held to the window's end: a handful of frames, not 100
    assert 1 <= bob.statistics().delivered_sent <= 3 and 1 <= cat.statistics().delivered_sent <= 3
    assert len(frames) <= 3 and trio.current_time() - start <= 3 * 0.5  # one per window at most
    assert all(len(f.msgs) <= 100 for f in frames) and sorted(latest) == list(range(1, 101))
    assert set(latest.values()) == {(2, 0)}


async def test_cursors_never_move_back_nor_past_the_last_message(
    autojump_clock: trio.testing.MockClock, roost_connect, roost_engine, roost_keys: TestKeys, nursery
) -> None:
    ann = await roost_connect("ann", memory=True)
    snap = await ann.create()
    for i in range(3):
        await ann.chat_send(snap.room, f"m{i}")
    bob = await raw_peer(nursery, stream=roost_engine.connect_memory())
    await bob.hello(roost_keys.token("bob"))
    await bob.send(JoinOrCreate(id=1, code=snap.code))
    await bob.recv_until(Ok)
    for request_id, n in enumerate((2**53 - 1, 1, 0, 2), start=2):  # far past the end, then backwards
        await bob.send(Delivered(id=request_id, room=snap.room, n=n))
    got = [await bob.recv_until(Ok) for _ in range(4)]
    assert sorted(o.id for o in got) == [2, 3, 4, 5]
    status = await ann.chat_status(snap.room, 3)
    assert (status.delivered, status.of) == (1, 1)  # capped at message 3: delivered up to 3, not beyond
    await ann.chat_send(snap.room, "m3")
    assert (await ann.chat_status(snap.room, 4)).delivered == 0  # the cap held: 4 is not delivered
    for bad in (-1, 2**53, "3"):
        await bob.send({"t": "delivered", "id": 9, "room": snap.room, "n": bad})
        error = await bob.recv_until(ErrorReply)
        assert error.id == 9 and error.code in ("bad_field", "bad_type")
    await bob.send(Delivered(id=10, room="no-such-room", n=1))
    assert (await bob.recv_until(ErrorReply)).code == "not_found"


def test_census_counts_other_members_only() -> None:
    from roost.protocol.frames import ChatMessage

    delivered = DeliveryCursors()
    read = {"ann": 5, "bob": 2}
    assert delivered.mark("bob", 9, last_n=5, read=2) == 5
    assert delivered.mark("bob", 4, last_n=5, read=2) is None
    assert delivered.mark("cat", 1, last_n=5, read=0) == 1
    census = Census(["ann", "bob", "cat"], read, delivered)
    message = ChatMessage(id="m3", n=3, user="ann", name="Ann", text="x", ts=0)
    status = census.status(message)
    assert (status.delivered, status.read, status.of) == (1, 0, 2)
    by_bob = ChatMessage(id="m1", n=1, user="bob", name="Bob", text="x", ts=0)
    assert (census.status(by_bob).delivered, census.status(by_bob).read, census.status(by_bob).of) == (2, 1, 2)
    left = ChatMessage(id="m2", n=2, user="gone", name="", text="x", ts=0)
    assert census.status(left).of == 3
    assert census.users(left, read=False, after=None, limit=1) == (["ann"], "ann")
    assert census.users(left, read=False, after="ann", limit=5) == (["bob"], None)


async def test_delivered_cursors_are_durable_across_a_restart(tmp_path: Path, roost_keys: TestKeys) -> None:
    config = test_config(roost_keys)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            ann = await connect_client(nursery, engine.url, roost_keys.token("ann"), reconnect=False)
            bob = await connect_client(nursery, engine.url, roost_keys.token("bob"), reconnect=False,
                                       deliver=False)
            room = await ann.create()
            await bob.join(room=room.room)
            for i in range(3):
                await ann.chat_send(room.room, f"line {i}")
            await bob.delivered(room.room, 2)  # its ok comes after the commit that stored it
            nursery.cancel_scope.cancel()  # no graceful stop: only what was committed survives

        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            bob = await connect_client(nursery, engine.url, roost_keys.token("bob"), reconnect=False,
                                       deliver=False)
            await bob.join(room=room.room)
            ann = await connect_client(nursery, engine.url, roost_keys.token("ann"), reconnect=False)
            await ann.join(room=room.room)
            assert [(await ann.chat_status(room.room, n)).delivered for n in (1, 2, 3)] == [1, 1, 0]
            await bob.delivered(room.room, 1)  # behind the restored cursor: no move
            assert (await ann.chat_status(room.room, 2)).delivered == 1
            nursery.cancel_scope.cancel()


# -- ending a session now (bye) ---------------------------------------------------------------


async def test_end_leaves_at_once_with_its_own_reason_and_cannot_resume(
    autojump_clock: trio.testing.MockClock, roost_keys: TestKeys, nursery
) -> None:
    engine = await start_engine(nursery, test_config(roost_keys, reconnect_grace=30.0))

    async def memory() -> trio.abc.Stream:
        return engine.connect_memory()

    ann = await connect_client(nursery, engine.url, roost_keys.token("ann"), stream=memory)
    bob = await connect_client(nursery, engine.url, roost_keys.token("bob"), stream=memory)
    cat = await connect_client(nursery, engine.url, roost_keys.token("cat"), stream=memory)
    snap = await ann.create()
    await bob.join(room=snap.room)
    await cat.join(room=snap.room)
    session = bob.welcome.session
    start = trio.current_time()
    await bob.end()
    closed = await bob.wait_closed()
    assert getattr(closed, "code", None) == CloseCode.NORMAL
    while True:
        diff = await ann.next_event(PresenceDiff)
        if "bob" in diff.leave:
            break
    assert diff.reason == "ended" and trio.current_time() - start < 1.0  # not after the 30 s grace
    assert [m.user for m in (await ann.members(snap.room)).members] == ["ann", "cat"]

    # the ended session's token does not resume: a new session, and the room no longer has bob
    peer = await raw_peer(nursery, stream=engine.connect_memory())
    welcome = await peer.hello(roost_keys.token("bob"), session=session)
    assert welcome.resumed is False and welcome.sid != bob.sid

    # a drop, by contrast: offline now, leave (without a reason) only after the grace
    start = trio.current_time()
    await cat.aclose()
    while True:
        diff = await ann.next_event(PresenceDiff)
        if "cat" in diff.leave:
            break
    assert diff.reason is None and trio.current_time() - start >= 30.0


async def test_end_of_one_session_keeps_the_member_with_another_live_session(
    autojump_clock: trio.testing.MockClock, roost_keys: TestKeys, nursery
) -> None:
    engine = await start_engine(nursery, test_config(roost_keys))
    ann = await raw_peer(nursery, stream=engine.connect_memory())
    await ann.hello(roost_keys.token("ann"))
    await ann.send(JoinOrCreate(id=1, code="den"))
    await ann.recv_until(Ok)
    phone, laptop = [await raw_peer(nursery, stream=engine.connect_memory()) for _ in range(2)]
    for device in (phone, laptop):
        await device.hello(roost_keys.token("bob"))
        await device.send(JoinOrCreate(id=1, code="den"))
        await device.recv_until(Ok)
    await phone.send(Bye())
    assert await phone.closed_code() == CloseCode.NORMAL
    while True:
        diff = await ann.recv_until(PresenceDiff)
        assert "bob" not in diff.leave
        if [m.sessions for m in diff.update if m.user == "bob"] == [1]:
            break
    await laptop.send(Bye())
    diff = await ann.recv_until(PresenceDiff)
    assert (diff.leave, diff.reason) == (("bob",), "ended")


def test_chat_status_page_record_is_bounded() -> None:
    users = tuple(f"{i:0128d}" for i in range(100))
    page = ChatStatusPage(n=1, delivered=100, read=100, of=100, users=users, next=users[-1])
    from roost.protocol.codec import SERVER_LIMITS, dump_record

    assert load_record(ChatStatusPage, dump_record(page)) == page
    assert len(encode(Ok(id=1, result=dump_record(page)), SERVER_LIMITS)) < SERVER_LIMITS.max_frame_bytes // 4


# -- the Python client's own delivered cursors, against the fake server of test_client_unit --------


async def test_the_client_reports_the_latest_number_one_in_flight_per_room(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    import functools

    from roost.client import open_client
    from roost.protocol.codec import dump_record
    from tests.test_client_unit import MEMORY_URL, TOKEN, MemoryServer, chat, served, snapshot

    server = MemoryServer(nursery)
    async with open_client(MEMORY_URL, TOKEN, stream=server.connect) as client:
        conn = await server.accept()
        await served(conn, functools.partial(client.join, room="r1"), result=dump_record(snapshot(seq=5)))
        await conn.send(*[chat("r1", 1, seq) for seq in range(6, 106)])  # a burst: chat 6..105
        first = await conn.recv()
        assert isinstance(first, Delivered) and first.room == "r1" and 6 <= first.n <= 105
        for _ in range(100):
            await client.next_event(ChatEvent)
        with trio.move_on_after(30) as waited:  # no second cursor while the first is unanswered
            await conn.recv()
        assert waited.cancelled_caught
        await conn.send(Ok(id=first.id))
        if first.n < 105:
            second = await conn.recv()
            assert isinstance(second, Delivered) and (second.room, second.n) == ("r1", 105)
            await conn.send(ErrorReply(id=second.id, code="rate_limited", retry_ms=10))
        with trio.move_on_after(30) as waited:  # an error is not retried in a loop
            await conn.recv()
        assert waited.cancelled_caught
        await conn.send(chat("r1", 1, 106))  # the next event sends the latest number again
        third = await conn.recv()
        assert isinstance(third, Delivered) and third.n == 106
        assert client.statistics().delivered_sent == (2 if first.n == 105 else 3)


async def test_a_held_delivered_is_answered_internal_when_the_room_crashes_before_its_commit(
    autojump_clock: trio.testing.MockClock, roost_keys: TestKeys, nursery
) -> None:
    from roost.protocol.frames import Send
    from tests.logics import Fragile

    engine = await start_engine(nursery, test_config(roost_keys, logics={"fragile": Fragile}))
    ann = await connect_client(nursery, engine.url, roost_keys.token("ann"), stream=_memory(engine))
    snap = await ann.create(logic="fragile")
    for i in range(3):
        await ann.chat_send(snap.room, f"m{i}")
    bob = await raw_peer(nursery, stream=engine.connect_memory())
    await bob.hello(roost_keys.token("bob"))
    await bob.send(JoinOrCreate(id=1, code=snap.code))
    await bob.recv_until(Ok)
    # One write: the three requests reach the room in one turn, so the held cursors are also in the
    # turn that crashes (answered once, not twice). Written under trio-websocket, which only reads here.
    frames = (Delivered(id=2, room=snap.room, n=2), Delivered(id=3, room=snap.room, n=3),
              Send(id=4, room=snap.room, kind="boom"))
    await bob.ws._stream.send_all(b"".join(client_frame(encode(f)) for f in frames))
    replies: dict[int, list[str]] = {}
    while len(replies) < 3:
        frame = await bob.recv()
        if isinstance(frame, ErrorReply | Ok) and frame.id in (2, 3, 4):
            replies.setdefault(frame.id, []).append(getattr(frame, "code", "ok"))
    assert replies == {2: ["internal"], 3: ["internal"], 4: ["internal"]}  # each answered once
    status = await ann.chat_status(snap.room, 2)  # the moves died with the turn: nothing stored
    assert status.delivered == 0
    await bob.send(Delivered(id=5, room=snap.room, n=3))  # the next report carries it again
    while True:  # nothing answered twice before it
        frame = await bob.recv()
        assert not (isinstance(frame, ErrorReply | Ok) and frame.id in (2, 3, 4))
        if isinstance(frame, Ok) and frame.id == 5:
            break
    assert (await ann.chat_status(snap.room, 3)).delivered == 1


def _memory(engine):
    async def connect() -> trio.abc.Stream:
        return engine.connect_memory()

    return connect


def test_the_receipts_bench_counts_frames_per_message(capsys: pytest.CaptureFixture[str]) -> None:
    from roost.bench.__main__ import BENCHES, main
    from roost.bench import receipts as receipts_bench

    assert BENCHES["receipts"] is receipts_bench
    assert main(["receipts", "--members", "4", "--messages", "10"]) == 0
    row = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["members"] == 4 and row["all_delivered_seen"] is True
    # one in flight per member and room: a few delivered frames per member, not one per message
    assert 3 <= row["delivered_frames_in"] <= 3 * 3 and row["receipts_frames_out"] <= 4
    assert row["broadcast_design_frames"] == 3 * 4 * 10
