"""Rooms come back after a restart (LMDB), and the reaper disposes of empty rooms with every key."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from roost import Engine, MemoryStore
from roost.state import RoomOptions
from roost.store.lmdb import LmdbStore
from roost.testing import TestKeys, connect_client, start_engine, test_config
from roost.client import RequestError
from roost.protocol.codec import load_record
from roost.protocol.frames import Ok, PresenceStatus, Resume, ResumeResult
from tests.wire import raw_peer


async def test_rooms_chat_and_members_come_back_after_a_restart(tmp_path: Path, roost_keys: TestKeys) -> None:
    config = test_config(roost_keys)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            ann = await connect_client(nursery, engine.url, roost_keys.token("ann"), reconnect=False)
            bob = await connect_client(nursery, engine.url, roost_keys.token("bob"), reconnect=False)
            room = await ann.create(public=True, meta={"mode": "duel"})
            await bob.join(code=room.code)
            acks = [await ann.chat_send(room.room, f"line {i}") for i in range(3)]
            await bob.read(room.room, 2)
            version = await ann.set_state(room.room, room.version, state={"score": [1, 0]}, phase="playing")
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            back = await engine.ops.snapshot(room.room)
            assert (back.code, back.host, back.public, back.meta) == (room.code, "ann", True, {"mode": "duel"})
            assert (back.version, back.state, back.chat_n) == (version, {"score": [1, 0]}, 3)
            assert back.epoch == room.epoch  # events are stored: the epoch goes on
            assert {m.user: m.status for m in back.members} == {"ann": PresenceStatus.OFFLINE,
                                                                "bob": PresenceStatus.OFFLINE}
            bob = await connect_client(nursery, engine.url, roost_keys.token("bob"), reconnect=False)
            snap = await bob.join(code=room.code)
            assert (snap.read_n, snap.unread) == (2, 1)
            history = await bob.history(room.room)
            assert [m.id for m in history.messages] == [a.id for a in acks]
            assert (await bob.chat_send(room.room, "after the restart")).n == 4
            nursery.cancel_scope.cancel()


def _memory(engine: Engine) -> Callable[[], Awaitable[trio.abc.Stream]]:
    async def connect() -> trio.abc.Stream:
        return engine.connect_memory()

    return connect


def mock_wall() -> float:
    return 1_800_000_000.0 + trio.current_time()


async def test_the_reaper_disposes_of_a_room_empty_for_its_ttl(autojump_clock, nursery: trio.Nursery) -> None:
    keys = TestKeys(clock=mock_wall)
    store = MemoryStore()
    config = test_config(keys, wall_clock=mock_wall, room_ttl=600.0, solo_room_ttl=600.0, reconnect_grace=30.0)
    engine = Engine(config, store=store)
    await nursery.start(engine.serve)

    async def memory() -> trio.abc.Stream:
        return engine.connect_memory()

    ann = await connect_client(nursery, engine.url, keys.token("ann"), stream=memory)
    kept = await ann.create()
    doomed = await ann.create()
    await ann.leave(doomed.room)
    left_at = trio.current_time()
    assert doomed.room in await store.room_ids()
    await trio.sleep(599)
    assert engine.router.get(doomed.room) is not None  # not yet
    await trio.sleep(2)
    assert engine.router.get(doomed.room) is None
    assert doomed.room not in await store.room_ids()
    assert trio.current_time() - left_at == pytest.approx(601)
    assert engine.router.get(kept.room) is not None  # a room with a member is never reaped
    with pytest.raises(RequestError) as info:
        await ann.join(room=doomed.room)
    assert info.value.code == "not_found"


async def test_a_room_a_member_joined_waits_for_its_inbox_with_no_deadline(
    autojump_clock, nursery: trio.Nursery
) -> None:
    """A room is created empty (its reaper armed) and joined in the same request; the join disarms
    the reaper, so the actor waits on its inbox with no deadline (no cancel scope per turn)."""
    keys = TestKeys(clock=mock_wall)
    engine = Engine(test_config(keys, wall_clock=mock_wall), store=MemoryStore())
    await nursery.start(engine.serve)
    ann = await connect_client(nursery, engine.url, keys.token("ann"), stream=_memory(engine))
    for room in (await ann.create(), await ann.join_or_create("LOBBY")):
        await ann.chat_send(room.room, "hello")
        assert await engine.ops._call(room.room, lambda actor: actor._next_deadline()) == math.inf


async def test_a_room_emptied_again_after_a_join_is_reaped_a_ttl_after_the_last_leave(
    autojump_clock, nursery: trio.Nursery
) -> None:
    keys = TestKeys(clock=mock_wall)
    config = test_config(keys, wall_clock=mock_wall, room_ttl=600.0, solo_room_ttl=600.0)
    engine = Engine(config, store=MemoryStore())
    await nursery.start(engine.serve)
    ann = await connect_client(nursery, engine.url, keys.token("ann"), stream=_memory(engine))
    room = await ann.create()
    await ann.leave(room.room)  # reaper at +600
    await trio.sleep(100)
    await ann.join(room=room.room)  # disarmed
    await trio.sleep(100)
    await ann.leave(room.room)  # reaper at +800 from the start
    left_at = trio.current_time()
    await trio.sleep(599)
    assert engine.router.get(room.room) is not None
    await trio.sleep(2)
    assert engine.router.get(room.room) is None
    assert trio.current_time() - left_at == pytest.approx(601)


async def test_a_reaped_room_leaves_no_key_in_lmdb(tmp_path: Path, roost_keys: TestKeys, nursery) -> None:
    store = LmdbStore(tmp_path / "db")
    engine = await start_engine(nursery, test_config(roost_keys, room_ttl=0.2), store=store)
    with trio.fail_after(10):
        ann = await connect_client(nursery, engine.url, roost_keys.token("ann"))
        room = await ann.create()
        for i in range(3):
            await ann.chat_send(room.room, str(i))
        await ann.set_presence(room.room, data={"x": 1})
        assert any(r == room.room for r, _ in store.keys())
        await ann.leave(room.room)
        while engine.router.get(room.room) is not None:
            await trio.sleep(0.05)
        await trio.sleep(0.1)
        assert [key for key in store.keys() if key[0] == room.room] == []


class TestRestoredEmptyRooms:
    async def test_an_empty_room_restored_keeps_its_absolute_reap_deadline(
        self, autojump_clock, nursery: trio.Nursery
    ) -> None:
        keys = TestKeys(clock=mock_wall)
        store = MemoryStore()
        config = test_config(keys, wall_clock=mock_wall, room_ttl=100.0, solo_room_ttl=100.0)
        async with trio.open_nursery() as first:
            engine = Engine(config, store=store)
            await first.start(engine.serve)
            room = await engine.router.create(RoomOptions())
            await trio.sleep(60)
            first.cancel_scope.cancel()
        engine = Engine(config, store=store)
        await nursery.start(engine.serve)
        assert engine.router.get(room.room_id) is not None
        await trio.sleep(39)
        assert engine.router.get(room.room_id) is not None
        await trio.sleep(2)  # 60 + 41 > 100: gone, though this process only saw 41 s of it
        assert engine.router.get(room.room_id) is None


async def test_a_client_resumes_exactly_after_a_restart(tmp_path: Path, roost_keys: TestKeys) -> None:
    config = test_config(roost_keys)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            ann = await connect_client(nursery, engine.url, roost_keys.token("ann"), reconnect=False)
            room = await ann.create()
            seen = (await ann.chat_send(room.room, "seen by bob"), await engine.ops.snapshot(room.room))[1].seq
            for i in range(3):
                await ann.chat_send(room.room, f"missed {i}")
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            peer = await raw_peer(nursery, engine.url)
            await peer.hello(roost_keys.token("ann"))
            await peer.send(Resume(id=1, room=room.room, epoch=room.epoch, seq=seen))
            result = load_record(ResumeResult, (await peer.recv_until(Ok)).result)
            assert (result.replayed, result.resync) == (3, False)
            replayed = [await peer.recv() for _ in range(3)]
            assert [e.msg.text for e in replayed] == ["missed 0", "missed 1", "missed 2"]
            assert [e.seq for e in replayed] == [seen + 1, seen + 2, seen + 3]
            nursery.cancel_scope.cancel()


async def test_graceful_shutdown_closes_clients_with_a_resume_hint_and_loses_nothing(
    tmp_path: Path, roost_keys: TestKeys
) -> None:
    config = test_config(roost_keys)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            ann = await connect_client(nursery, engine.url, roost_keys.token("ann"), reconnect=False)
            room = await ann.create()
            acked = [await ann.chat_send(room.room, f"m{i}") for i in range(5)]
            engine.request_shutdown()
            closed = await ann.wait_closed()
            assert (closed.code, closed.reason) == (1001, "resume")
            while engine.address is not None:  # serve returns by itself
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            ann = await connect_client(nursery, engine.url, roost_keys.token("ann"), reconnect=False)
            snap = await ann.join(room=room.room)
            assert snap.chat_n == 5 and snap.host == "ann"
            history = await ann.history(room.room)
            assert [m.id for m in history.messages] == [a.id for a in acked]
            nursery.cancel_scope.cancel()


async def test_revocations_survive_a_restart(tmp_path: Path, roost_keys: TestKeys) -> None:
    config = test_config(roost_keys)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            await engine.ops.revoke_user("eve", int(time.time()) + 3600)
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            peer = await raw_peer(nursery, engine.url)
            await peer.send({"t": "hello", "v": 1, "token": roost_keys.token("eve", now=time.time() - 5)})
            assert await peer.closed_code() == 4501
            nursery.cancel_scope.cancel()


async def test_messages_past_the_history_limit_leave_the_store(roost_keys: TestKeys, nursery) -> None:
    store = MemoryStore()
    engine = await start_engine(nursery, test_config(roost_keys, history_limit=3), store=store)
    with trio.fail_after(10):
        ann = await connect_client(nursery, engine.url, roost_keys.token("ann"))
        room = await ann.create()
        for i in range(5):
            await ann.chat_send(room.room, str(i))
        chat_keys = sorted(k for k in await store.load_room(room.room) if k.startswith("chat:"))
        assert chat_keys == [f"chat:{n:016x}" for n in (3, 4, 5)]


async def test_a_data_directory_is_marked_with_its_layout_and_a_later_one_is_refused(
        tmp_path: Path, roost_keys: TestKeys) -> None:
    """A build marks the directory it reads with its data layout (state.LAYOUT) before any room writes
    to it; a directory marked by a later build (whose records this one would misread: seq taken from
    stale counters, event numbers reused) is refused at start, and nothing is written to it."""
    import msgpack

    from roost.state import LAYOUT, LAYOUT_KEY
    from roost.store import StoreError, Write

    config = test_config(roost_keys)
    async with trio.open_nursery() as nursery:  # a directory of a build before the mark: no key
        store = LmdbStore(tmp_path / "db")
        await nursery.start(store.run)
        assert LAYOUT_KEY not in await store.load_global()
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        store = LmdbStore(tmp_path / "db")
        await start_engine(nursery, config, store=store)
        assert msgpack.unpackb((await store.load_global())[LAYOUT_KEY]) == LAYOUT == 2
        await store.commit([Write(None, LAYOUT_KEY, msgpack.packb(LAYOUT + 1))])  # as a later build would
        nursery.cancel_scope.cancel()
    store = LmdbStore(tmp_path / "db")
    with pytest.raises(BaseExceptionGroup) as refused:
        async with trio.open_nursery() as nursery:
            await start_engine(nursery, config, store=store)
    errors, rest = refused.value.split(StoreError)
    assert rest is None and errors is not None

    def leaves(group: BaseException) -> list[BaseException]:
        if isinstance(group, BaseExceptionGroup):
            return [leaf for inner in group.exceptions for leaf in leaves(inner)]
        return [group]

    assert [str(error) for error in leaves(errors)] == [
        "the store was written by a later Roost (data layout 3; this build reads layouts up to 2): start that build,"
        " or a later one"]
    async with trio.open_nursery() as nursery:
        store = LmdbStore(tmp_path / "db")
        await nursery.start(store.run)
        assert msgpack.unpackb((await store.load_global())[LAYOUT_KEY]) == LAYOUT + 1  # left as it was
        nursery.cancel_scope.cancel()
