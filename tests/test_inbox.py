"""The personal inbox per user (engine/inbox.py, PROTOCOL.md §16): notify, delivery to every attached
device, durable and bounded storage, exact resume or resync, the read cursor on every device, and what
``welcome`` tells about the user (unread inbox count, the user's rooms with unread chat counts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from roost import Engine
from roost.client import RequestError
from roost.logic import RoomContext, RoomLogic
from roost.protocol.codec import CLIENT_LIMITS, SERVER_LIMITS, Sender, decode, encode
from roost.protocol.frames import (
    AdminOp,
    AdminRequest,
    ErrorReply,
    InboxEvent,
    InboxResume,
    InboxResumeResult,
    InboxUnread,
    Ok,
    Welcome,
)
from roost.inbox import InboxService, _Head, _Notify, entry_key, head_key
from roost.store.lmdb import LmdbStore
from roost.store.memory import MemoryStore
from roost.testing import SERVICE_KEY, TestKeys, start_engine, test_config

from .wire import RawPeer, raw_peer



def largest_body(limit: int) -> dict[str, str]:
    """A body whose msgpack encoding is exactly ``limit`` bytes."""
    body = {"b": ""}
    overhead = len(msgpack.packb(body, use_bin_type=True))
    body["b"] = "x" * (limit - overhead - 2)  # str 8 → str 16 header: two more bytes
    while len(msgpack.packb(body, use_bin_type=True)) < limit:
        body["b"] += "x"
    assert len(msgpack.packb(body, use_bin_type=True)) == limit
    return body


async def drain_inbox(client: Any, count: int) -> list[InboxEvent]:
    events = []
    while len(events) < count:
        events.append(await client.next_event(InboxEvent))
    return events


# -- delivery ------------------------------------------------------------------------------------


async def test_notify_reaches_every_live_device_of_the_user_and_no_one_else(roost_connect) -> None:
    with trio.fail_after(10):
        phone, laptop, bob, ops = (await roost_connect("ann"), await roost_connect("ann"),
                                   await roost_connect("bob"), await roost_connect("ops"))
        for client in (phone, laptop, bob):
            await client.inbox_ready()
        result = await ops.notify(SERVICE_KEY, "ann", "invite", {"room": "r1", "from": "bob"})
        assert result["seq"] == 1 and result["epoch"] == 1 and result["id"] == "i1"
        for device in (phone, laptop):
            event = await device.next_event(InboxEvent)
            assert (event.seq, event.kind, event.body, event.id) == (1, "invite", {"room": "r1", "from": "bob"}, "i1")
            assert device.inbox == (1, 1)
        await ops.notify(SERVICE_KEY, "bob", "friend_request", {"from": "ann"})
        event = await bob.next_event(InboxEvent)
        assert (event.seq, event.kind) == (1, "friend_request")  # bob's inbox has its own numbering
        assert phone.statistics().buffered_events == laptop.statistics().buffered_events == 0


async def test_ops_notify_in_process_and_room_logic_notify(roost_keys: TestKeys, nursery) -> None:
    class Matchmaker(RoomLogic):
        def on_join(self, room: RoomContext, user: str, name: str) -> None:
            for member in room.members():
                room.notify(member.user, "joined", {"room": room.room_id, "user": user})

    config = test_config(roost_keys, logics={"match": Matchmaker})
    engine = await start_engine(nursery, config)
    from roost.testing import connect_client
    with trio.fail_after(10):
        ann = await connect_client(nursery, engine.url, roost_keys.token("ann"))
        await ann.inbox_ready()
        entry = await engine.ops.notify("ann", "match_found", {"queue": "duel"})
        assert (entry.seq, entry.kind) == (1, "match_found")
        assert (await ann.next_event(InboxEvent)).body == {"queue": "duel"}
        snap = await ann.create(logic="match")
        bob = await connect_client(nursery, engine.url, roost_keys.token("bob"))
        await bob.join(room=snap.room)
        event = await ann.next_event(InboxEvent)  # posted after the join's commit
        assert (event.seq, event.kind, event.body) == (2, "joined", {"room": snap.room, "user": "bob"})
        with pytest.raises(Exception) as info:
            await engine.ops.notify("ann", "", None)
        assert getattr(info.value, "code", None) is not None and info.value.code.value == "bad_field"


async def test_room_logic_notifies_past_the_queue_bound_are_refused_not_dropped(roost_keys: TestKeys, nursery) -> None:
    class Spammer(RoomLogic):
        def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
            for k in range(body):
                room.notify(user, "spam", k)
            return "sent"

    engine = await start_engine(nursery, test_config(roost_keys, inbox_queue=2, logics={"spam": Spammer}))
    from roost.testing import connect_client
    with trio.fail_after(10):
        ann = await connect_client(nursery, engine.url, roost_keys.token("ann"))
        await ann.inbox_ready()
        snap = await ann.create(logic="spam")
        await ann.send(snap.room, "go", 2)
        assert [e.body for e in await drain_inbox(ann, 2)] == [0, 1]
        with pytest.raises(RequestError) as info:
            await ann.send(snap.room, "go", 3)  # the third one of the turn is refused at once
        assert info.value.code == "rate_limited" and info.value.retry_ms
        assert [e.body for e in await drain_inbox(ann, 2)] == [0, 1]  # the two checked ones were posted
        head = await engine.inbox.head("ann")
        assert head.seq == 4 and engine.inbox.stats.notifies == 4


async def test_notify_without_the_service_credential_is_refused_over_ws_and_http(roost_connect, roost_engine) -> None:
    with trio.fail_after(10):
        eve = await roost_connect("eve")
        await eve.inbox_ready()
        with pytest.raises(RequestError) as info:
            await eve.notify("not-the-key", "ann", "phish", {"url": "x"})
        assert info.value.code == "unauthorized"
        host, port = roost_engine.address
        for headers in ({}, {"authorization": "Bearer wrong"}):
            status, body = await http_post(host, port, "/api/notify", {"user": "eve", "kind": "x"}, headers)
            assert status == 401 and body["error"]["code"] == "unauthorized"
        status, body = await http_post(host, port, "/api/notify", {"user": "eve", "kind": "hi", "body": [1]},
                                       {"authorization": f"Bearer {SERVICE_KEY}"})
        assert status == 200 and body["result"]["seq"] == 1
        event = await eve.next_event(InboxEvent)
        assert (event.kind, event.body) == ("hi", [1])  # nothing of the refused calls got in
        assert (await eve.inbox_history()).entries[0].seq == 1


async def http_post(host: str, port: int, path: str, payload: Any, headers: dict[str, str]) -> tuple[int, Any]:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        body = json.dumps(payload).encode()
        head = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", "content-type: application/json",
                f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(rest)


async def test_a_body_at_the_largest_size_passes_and_one_byte_more_is_refused(roost_connect) -> None:
    with trio.fail_after(10):
        ann, ops = await roost_connect("ann"), await roost_connect("ops")
        await ann.inbox_ready()
        limit = 8 * 1024  # Config.max_inbox_body_bytes
        body = largest_body(limit)
        await ops.notify(SERVICE_KEY, "ann", "k" * 64, body)  # the longest kind too
        event = await ann.next_event(InboxEvent)
        assert event.body == body and event.kind == "k" * 64
        with pytest.raises(RequestError) as info:
            await ops.notify(SERVICE_KEY, "ann", "k", largest_body(limit + 1))
        assert info.value.code == "too_large"
        with pytest.raises(RequestError) as info:
            await ops.notify(SERVICE_KEY, "ann", "k" * 65, None)
        assert info.value.code == "too_long"
        page = await ann.inbox_history()
        assert [e.seq for e in page.entries] == [1] and page.entries[0].body == body


# -- ordering under races ----------------------------------------------------------------------------


async def test_racing_notifies_keep_the_seq_dense_and_in_acknowledgement_order(roost_connect, roost_engine) -> None:
    with trio.fail_after(30):
        ann = await roost_connect("ann")
        await ann.inbox_ready()
        senders = [await roost_connect(f"ops{i}") for i in range(4)]
        acked: list[tuple[int, str]] = []

        async def send(index: int, client: Any) -> None:
            for j in range(25):
                result = await client.notify(SERVICE_KEY, "ann", "n", {"from": index, "j": j})
                acked.append((result["seq"], f"{index}.{j}"))

        async def in_process(j: int) -> None:
            entry = await roost_engine.ops.notify("ann", "n", {"from": "ops", "j": j})
            acked.append((entry.seq, f"p.{j}"))

        async with trio.open_nursery() as nursery:
            for index, client in enumerate(senders):
                nursery.start_soon(send, index, client)
            for j in range(50):
                nursery.start_soon(in_process, j)
        seqs = sorted(seq for seq, _ in acked)
        assert seqs == list(range(1, 151))  # dense: no number lost, none used twice
        events = await drain_inbox(ann, 150)
        assert [e.seq for e in events] == list(range(1, 151))  # delivered in seq order
        by_seq = dict(acked)
        for event in events:
            origin = event.body["from"]
            assert by_seq[event.seq] == f"{'p' if origin == 'ops' else origin}.{event.body['j']}"
        # each sender's own notifies were acknowledged in the order it sent them
        for index in range(4):
            mine = [seq for seq, tag in sorted(acked) if tag.startswith(f"{index}.")]
            assert [by_seq[s] for s in mine] == [f"{index}.{j}" for j in range(25)]


# -- resume ----------------------------------------------------------------------------------------


async def raw_session(nursery: trio.Nursery, engine: Engine, keys: TestKeys, user: str) -> tuple[RawPeer, Welcome]:
    raw = await raw_peer(nursery, engine.url)
    return raw, await raw.hello(keys.token(user))


async def test_resume_replays_exactly_what_was_missed_then_goes_live(roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
    with trio.fail_after(10):
        for k in range(5):
            await roost_engine.ops.notify("ann", "n", k)
        raw, welcome = await raw_session(nursery, roost_engine, roost_keys, "ann")
        assert welcome.inbox is not None and (welcome.inbox.seq, welcome.inbox.unread) == (5, 5)
        await raw.send(InboxResume(id=1, epoch=1, seq=2))
        ok = await raw.recv()
        assert isinstance(ok, Ok) and ok.id == 1
        result = InboxResumeResult.load_fields(ok.result, SERVER_LIMITS)
        assert (result.replayed, result.resync, result.head.seq) == (3, False, 5)
        replay = [await raw.recv() for _ in range(3)]
        assert [(e.seq, e.body) for e in replay] == [(3, 2), (4, 3), (5, 4)]
        await roost_engine.ops.notify("ann", "n", 5)
        live = await raw.recv()
        assert isinstance(live, InboxEvent) and live.seq == 6
        # resuming at the head replays nothing; a position past the head (another epoch's) resyncs
        await raw.send(InboxResume(id=2, epoch=1, seq=6))
        result = InboxResumeResult.load_fields((await raw.recv()).result, SERVER_LIMITS)
        assert (result.replayed, result.resync) == (0, False)
        await raw.send(InboxResume(id=3, epoch=1, seq=99))
        result = InboxResumeResult.load_fields((await raw.recv()).result, SERVER_LIMITS)
        assert result.resync and result.head.seq == 6
        await raw.send(InboxResume(id=4, epoch=2, seq=6))
        assert InboxResumeResult.load_fields((await raw.recv()).result, SERVER_LIMITS).resync
        assert roost_engine.inbox.stats.resumes == {"replay": 2, "resync": 2}
        metrics = roost_engine.metrics.exposition()[0].decode()
        assert 'roost_inbox_resumes_total{outcome="resync"} 2.0' in metrics


async def test_a_gap_past_the_bound_answers_resync(roost_keys: TestKeys, nursery) -> None:
    engine = await start_engine(nursery, test_config(roost_keys, inbox_max_entries=3))
    with trio.fail_after(10):
        for k in range(6):
            await engine.ops.notify("ann", "n", k)
        raw, welcome = await raw_session(nursery, engine, roost_keys, "ann")
        assert welcome.inbox is not None
        assert (welcome.inbox.seq, welcome.inbox.first, welcome.inbox.unread) == (6, 4, 3)
        await raw.send(InboxResume(id=1, epoch=1, seq=2))  # 3 was dropped: a replay would have a hole
        result = InboxResumeResult.load_fields((await raw.recv()).result, SERVER_LIMITS)
        assert result.resync and result.replayed == 0 and result.head.first == 4
        await raw.send(InboxResume(id=2, epoch=1, seq=3))  # 4..6 are all kept: replayed
        result = InboxResumeResult.load_fields((await raw.recv()).result, SERVER_LIMITS)
        assert (result.resync, result.replayed) == (False, 3)
        assert [(await raw.recv()).seq for _ in range(3)] == [4, 5, 6]


async def test_the_python_client_resumes_its_inbox_on_reconnect(roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
    from roost.testing import connect_client
    streams: list[trio.abc.Stream] = []

    async def stream() -> trio.abc.Stream:
        streams.append(roost_engine.connect_memory())
        return streams[-1]

    with trio.fail_after(10):
        ann = await connect_client(nursery, roost_engine.url, roost_keys.token("ann"), stream=stream,
                                   backoff_base=0.01, max_backoff=0.05)
        await ann.inbox_ready()
        await roost_engine.ops.notify("ann", "n", 1)
        assert (await ann.next_event(InboxEvent)).seq == 1
        await streams[-1].aclose()  # the link drops
        for k in range(2, 5):  # meanwhile three entries arrive
            await roost_engine.ops.notify("ann", "n", k)
        events = await drain_inbox(ann, 3)
        assert [e.seq for e in events] == [2, 3, 4]
        assert await ann.inbox_ready() == (1, 4)
        await roost_engine.ops.notify("ann", "n", 5)
        assert (await ann.next_event(InboxEvent)).seq == 5
        assert ann.statistics().connections == 2 and ann.statistics().inbox_resyncs == 0


# -- the bound ---------------------------------------------------------------------------------------


async def test_the_bound_by_count_drops_the_oldest_first(roost_keys: TestKeys, nursery) -> None:
    engine = await start_engine(nursery, test_config(roost_keys, inbox_max_entries=5))
    with trio.fail_after(10):
        for k in range(12):
            await engine.ops.notify("ann", "n", k)
        head = await engine.inbox.head("ann")
        assert (head.seq, head.first, head.unread) == (12, 8, 5)
        metrics = engine.metrics.exposition()[0].decode()
        assert "roost_inbox_notifies_total 12.0" in metrics and "roost_inbox_dropped_total 7.0" in metrics
        page = await engine.inbox.history("ann", None, 100)
        assert [e.seq for e in page.entries] == [8, 9, 10, 11, 12] and page.next is None
        assert engine.inbox.stats.dropped == 7
        stored = await engine.store.scan("inbox", limit=100)
        assert len([key for key, _ in stored if "/e/" in key]) == 5  # dropped entries leave the store


async def test_the_bound_by_bytes_with_the_largest_bodies(roost_keys: TestKeys, nursery) -> None:
    limit = 32 * 1024
    config = test_config(roost_keys, max_inbox_body_bytes=limit, inbox_max_bytes=100 * 1024)
    engine = await start_engine(nursery, config)
    body = largest_body(limit)
    with trio.fail_after(10):
        for k in range(5):
            await engine.ops.notify("ann", f"k{k}", body)
        head = await engine.inbox.head("ann")
        assert (head.seq, head.first) == (5, 3)  # 3 × 32 KiB + envelopes is past 100 KiB: 3 are kept
        stored = [(key, value) for key, value in await engine.store.scan("inbox", limit=100) if "/e/" in key]
        assert len(stored) == 3 and sum(len(v) for _, v in stored) <= 100 * 1024
        page = await engine.inbox.history("ann", None, 100)
        assert [e.kind for e in page.entries] == ["k2", "k3", "k4"] and page.entries[0].body == body
        await engine.ops.notify("ann", "small", None)  # a small one fits beside them
        assert (await engine.inbox.head("ann")).first == 3


async def test_history_pages_backwards_cut_by_count_and_bytes(roost_keys: TestKeys, nursery) -> None:
    limit = 32 * 1024
    config = test_config(roost_keys, max_inbox_body_bytes=limit, inbox_max_bytes=1024 * 1024)
    engine = await start_engine(nursery, config)
    with trio.fail_after(20):
        for k in range(20):
            await engine.ops.notify("ann", "big", largest_body(limit))
        seen: list[int] = []
        before = None
        pages = 0
        while True:
            page = await engine.inbox.history("ann", before, 100)
            pages += 1
            assert sum(len(encode(Ok(id=1, result=e.plain_fields()), SERVER_LIMITS)) for e in page.entries) <= 300_000
            seen[:0] = [e.seq for e in page.entries]
            if page.next is None:
                break
            before = page.next
        assert seen == list(range(1, 21)) and pages >= 3  # 256 KiB a page: about 7 such entries
        small = await engine.inbox.history("ann", 10, 4)
        assert [e.seq for e in small.entries] == [6, 7, 8, 9] and small.next == 6


# -- the read cursor -----------------------------------------------------------------------------------


async def test_the_read_cursor_moves_on_every_device_and_welcome_counts_unread(roost_connect) -> None:
    with trio.fail_after(10):
        phone, laptop, ops = await roost_connect("ann"), await roost_connect("ann"), await roost_connect("ops")
        await phone.inbox_ready()
        await laptop.inbox_ready()
        for k in range(4):
            await ops.notify(SERVICE_KEY, "ann", "n", k)
        await drain_inbox(laptop, 4)
        assert await phone.inbox_read(3) == {"read": 3, "unread": 1}
        moved = await laptop.next_event(InboxUnread)
        assert (moved.read, moved.unread) == (3, 1)
        assert await laptop.inbox_read(2) == {"read": 3, "unread": 1}  # never moves back
        assert await laptop.inbox_read(999) == {"read": 4, "unread": 0}  # capped at the newest
        tablet = await roost_connect("ann")
        assert tablet.welcome.inbox is not None
        assert (tablet.welcome.inbox.read, tablet.welcome.inbox.unread, tablet.welcome.inbox.seq) == (4, 0, 4)


# -- welcome: the user's rooms -------------------------------------------------------------------------


async def test_welcome_lists_three_rooms_with_their_unread_chat_counts(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, ops = await roost_connect("ann"), await roost_connect("bob"), await roost_connect("ops")
        rooms = [await ann.create() for _ in range(3)]
        for snapshot in rooms:
            await bob.join(room=snapshot.room)
        for index, snapshot in enumerate(rooms):
            for k in range(index + 1):
                await bob.chat_send(snapshot.room, f"hello {k}")
        await ann.read(rooms[2].room, 1)  # ann has read one of the three in the last room
        await ops.notify(SERVICE_KEY, "ann", "invite", {"room": rooms[0].room})
        fresh = await roost_connect("ann")  # a new device
        welcome = fresh.welcome
        listed = {r.room: r for r in welcome.rooms}
        assert set(listed) == {s.room for s in rooms} and welcome.rooms_next is None
        assert [listed[s.room].unread for s in rooms] == [1, 2, 2]
        assert [listed[s.room].chat_n for s in rooms] == [1, 2, 3]
        assert listed[rooms[2].room].read_n == 1 and listed[rooms[0].room].code == rooms[0].code
        assert welcome.inbox is not None and welcome.inbox.unread == 1
        # the fresh device rejoins where the user was (resume is for sessions; a join reattaches)
        for entry in welcome.rooms:
            snapshot = await fresh.join(room=entry.room)
            assert snapshot.unread == entry.unread
        # leaving and being kicked take the rooms out of the index (in the same commit)
        await ann.leave(rooms[0].room)
        await ops.admin(SERVICE_KEY, AdminOp.KICK, {"room": rooms[1].room, "user": "ann"})
        await ops.admin(SERVICE_KEY, AdminOp.CLOSE, {"room": rooms[2].room})
        assert (await ann.my_rooms()).rooms == ()
        assert {r.room for r in (await bob.my_rooms()).rooms} == {rooms[0].room, rooms[1].room}


async def test_my_rooms_pages_past_the_welcome_cap(roost_keys: TestKeys, nursery) -> None:
    from roost.testing import connect_client
    engine = await start_engine(nursery, test_config(roost_keys, welcome_rooms=2, max_rooms_per_connection=16))
    with trio.fail_after(10):
        ann = await connect_client(nursery, engine.url, roost_keys.token("ann"))
        created = sorted([(await ann.create()).room for _ in range(5)])
        fresh = await connect_client(nursery, engine.url, roost_keys.token("ann"))
        assert [r.room for r in fresh.welcome.rooms] == created[:2] and fresh.welcome.rooms_next == created[1]
        seen = [r.room for r in fresh.welcome.rooms]
        cursor = fresh.welcome.rooms_next
        while cursor is not None:
            page = await fresh.my_rooms(cursor, 2)
            seen += [r.room for r in page.rooms]
            cursor = page.next
        assert seen == created
        raw, _welcome = await raw_session(nursery, engine, roost_keys, "ann")
        await raw.send({"t": "my_rooms", "id": 7, "limit": 101})  # the server checks it too
        refused = await raw.recv()
        assert isinstance(refused, ErrorReply) and (refused.id, refused.code) == (7, "bad_field")
        empty = await engine.inbox.my_rooms("nobody", None, 100)
        assert empty.rooms == () and empty.next is None


# -- durability ----------------------------------------------------------------------------------------


async def test_offline_entries_and_the_room_index_survive_a_restart(tmp_path: Path, roost_keys: TestKeys) -> None:
    config = test_config(roost_keys)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            from roost.testing import connect_client
            ann = await connect_client(nursery, engine.url, roost_keys.token("ann"))
            room = (await ann.create()).room
            await ann.aclose()
            for k in range(3):
                await engine.ops.notify("ann", "offline", k)
            nursery.cancel_scope.cancel()  # acknowledged means committed: no graceful stop needed
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            raw, welcome = await raw_session(nursery, engine, roost_keys, "ann")
            assert welcome.inbox is not None and (welcome.inbox.seq, welcome.inbox.unread) == (3, 3)
            assert [r.room for r in welcome.rooms] == [room]
            await raw.send(InboxResume(id=1, epoch=1, seq=0))
            result = InboxResumeResult.load_fields((await raw.recv()).result, SERVER_LIMITS)
            assert (result.replayed, result.resync) == (3, False)
            assert [(await raw.recv()).body for _ in range(3)] == [0, 1, 2]
            await engine.ops.notify("ann", "after", None)  # the numbering goes on, no seq reused
            assert (await raw.recv()).seq == 4
            nursery.cancel_scope.cancel()


async def test_inbox_events_decode_as_frames_a_client_accepts(roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
    """The event bytes are encoded without validation (validated when queued): check that what goes
    out decodes as a valid ``inbox`` frame under the client's limits, body at its largest."""
    with trio.fail_after(10):
        raw, _welcome = await raw_session(nursery, roost_engine, roost_keys, "ann")
        await raw.send(InboxResume(id=1, epoch=1, seq=0))
        await raw.recv()
        body = largest_body(8 * 1024)
        await roost_engine.ops.notify("ann", "k", body)
        event = await raw.recv()
        assert isinstance(event, InboxEvent) and event.body == body
        frame = decode(encode(event, SERVER_LIMITS), Sender.SERVER, SERVER_LIMITS)
        assert frame == event
        admin = AdminRequest(id=9, key=SERVICE_KEY, op=AdminOp.NOTIFY, args={"user": "ann", "kind": "k"})
        assert decode(encode(admin, CLIENT_LIMITS), Sender.CLIENT, CLIENT_LIMITS) == admin


# -- the bound as a property ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 4096), min_size=1, max_size=60), max_entries=st.integers(1, 10),
       max_bytes=st.integers(5 * 1024, 20 * 1024))
def test_the_bound_holds_after_every_notify_and_drops_exactly_the_oldest(sizes: list[int], max_entries: int,
                                                                          max_bytes: int) -> None:
    config = test_config(TestKeys(), inbox_max_entries=max_entries, inbox_max_bytes=max_bytes,
                         max_inbox_body_bytes=4 * 1024)
    inbox = InboxService(MemoryStore(), config)
    head = _Head()
    kept: list[int] = []
    for size in sizes:
        writes: list[Any] = []
        inbox._apply_notify(_Notify("ann", "k", "x" * size, waited=False), head, writes)
        kept.append(head.seq)
        deleted = [w.key for w in writes if w.value is None]
        while len(kept) > len(head.sizes):
            assert entry_key("ann", kept.pop(0)) in deleted  # oldest first, each one deleted
        assert len(deleted) == len([k for k in deleted if k.startswith(entry_key("ann", 0)[:-16])])
        assert len(head.sizes) <= max_entries and head.total <= max_bytes and head.total == sum(head.sizes)
        assert head.first == kept[0] and head.seq == kept[-1] and writes[-1].key == head_key("ann")
        assert _Head.unpack(writes[-1].value) == head  # what is stored is what is kept
