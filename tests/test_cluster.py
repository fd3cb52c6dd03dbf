"""Several engines as one cluster through a real Redis (engine/placement.py, router, client): each room on
one node, requests for it elsewhere answered ``moved`` and followed by the client, creation exactly
once across nodes, a node gone or Redis gone answered ``unavailable``, a copied data directory refused.

The engines run in one Trio run here (real sockets, real Redis); tests/test_cluster_processes.py runs
them as processes and kills them."""

from __future__ import annotations

import collections
import shutil
import time
from pathlib import Path

import pytest
import trio

from roost import Engine
from roost.client import ClientError, ConnectionClosedError, RequestError, start_client
from roost.errors import RoomError
from roost.protocol.errors import CloseCode
from roost.protocol.frames import ChatEvent
from roost.store import StoreError
from roost.store.lmdb import LmdbStore
from roost.testing import TestKeys, start_engine, test_config

from .redis_server import MACHINE_REDIS, OwnRedis, machine_redis, own_redis, unique_prefix  # noqa: F401 (fixture)

LEASE = 1.0


@pytest.fixture
async def prefix():
    prefix = unique_prefix()
    async with machine_redis(prefix):  # deletes the test's keys afterwards
        yield prefix


def node_config(keys: TestKeys, prefix: str, url: str = f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0", **more):
    return test_config(keys, cluster=url, cluster_prefix=prefix, lease_period=LEASE, **more)


async def nodes(nursery: trio.Nursery, keys: TestKeys, prefix: str, count: int, **more) -> list[Engine]:
    return [await start_engine(nursery, node_config(keys, prefix, **more)) for _ in range(count)]


async def test_a_room_is_joined_from_any_node_and_its_members_chat_on_its_own(prefix, nursery) -> None:
    keys = TestKeys()
    a, b, c = await nodes(nursery, keys, prefix, 3)
    with trio.fail_after(20):
        ann = await start_client(nursery, a.url, keys.token("ann"))
        snap = await ann.create(public=True)
        bob = await start_client(nursery, b.url, keys.token("bob"))
        cat = await start_client(nursery, c.url, keys.token("cat"))
        joined_bob = await bob.join(code=snap.code.lower())
        joined_cat = await cat.join_or_create(snap.code)
        assert joined_bob.room == joined_cat.room == snap.room
        assert bob.url == cat.url == a.url and bob.moves == cat.moves == 1
        await cat.chat_send(snap.room, "from a client that connected to c")
        for client in (ann, bob, cat):
            while not isinstance(event := await client.next_event(), ChatEvent):
                pass
            assert event.msg.text == "from a client that connected to c" and event.msg.user == "cat"
        assert b.router.get(snap.room) is None and c.router.get(snap.room) is None


async def test_fifty_clients_racing_join_or_create_across_three_nodes_make_one_room_without_overshoot(
        prefix, nursery) -> None:
    keys = TestKeys()
    engines = await nodes(nursery, keys, prefix, 3)
    outcomes: list[str] = []  # the room joined, or the error code
    with trio.fail_after(60):
        clients = [await start_client(nursery, engines[index % 3].url, keys.token(f"u{index}")) for index in range(50)]
        go = trio.Event()

        async def racer(client) -> None:
            await go.wait()
            try:
                outcomes.append((await client.join_or_create("FINALS", max=40)).room)
            except RequestError as error:
                outcomes.append(f"error {error.code.value}")

        async with trio.open_nursery() as racers:
            for client in clients:
                racers.start_soon(racer, client)
            await trio.sleep(0.1)
            go.set()
    rooms = {outcome for outcome in outcomes if not outcome.startswith("error ")}
    assert len(rooms) == 1, collections.Counter(outcomes)
    assert outcomes.count(rooms.pop()) == 40 and outcomes.count("error room_full") == 10, collections.Counter(outcomes)
    homes = [engine for engine in engines if engine.router.by_code("FINALS") is not None]
    assert len(homes) == 1 and homes[0].router.by_code("FINALS").info.members == 40


async def test_a_client_in_a_room_is_not_moved_away_from_it_but_told_where_the_other_room_is(prefix, nursery) -> None:
    keys = TestKeys()
    a, b = await nodes(nursery, keys, prefix, 2)
    with trio.fail_after(20):
        ann = await start_client(nursery, a.url, keys.token("ann"))
        there = await ann.create()
        bob = await start_client(nursery, b.url, keys.token("bob"))
        here = await bob.create()
        with pytest.raises(RequestError) as moved:
            await bob.join(there.room)
        assert moved.value.code.value == "moved" and moved.value.url == a.url
        assert bob.url == b.url and set(bob.rooms) == {here.room}
        other = await start_client(nursery, moved.value.url, keys.token("bob"))  # one client per node
        assert (await other.join(there.room)).room == there.room


async def test_a_node_that_stopped_makes_its_rooms_unavailable_until_it_is_back(prefix, nursery, tmp_path) -> None:
    """A graceful stop releases the lease at once: other nodes answer ``unavailable`` with a retry hint
    (not ``not_found``: the room exists, its node is down). The node restarted on its own data
    takes the shard back with a later token and serves the same room."""
    keys = TestKeys()
    (b,) = await nodes(nursery, keys, prefix, 1)
    config = node_config(keys, prefix)
    with trio.fail_after(30):
        async with trio.open_nursery() as first:
            a = await start_engine(first, config, store=LmdbStore(tmp_path / "a"))
            token = a.cluster.lease.token
            ann = await start_client(nursery, a.url, keys.token("ann"), reconnect=False)
            room = (await ann.create()).room
            await ann.aclose()
            a.request_shutdown()
        bob = await start_client(nursery, b.url, keys.token("bob"))
        with pytest.raises(RequestError) as down:
            await bob.join(room)
        assert down.value.code.value == "unavailable" and down.value.retry_ms
        again = await start_engine(nursery, config.replace(port=0), store=LmdbStore(tmp_path / "a"))
        assert again.cluster.shard == a.cluster.shard and again.cluster.lease.token > token
        assert (await bob.join(room)).room == room and bob.url == again.url


async def test_a_copy_of_a_nodes_data_directory_is_refused_while_the_node_serves(prefix, nursery, tmp_path) -> None:
    keys = TestKeys()
    config = node_config(keys, prefix)
    with trio.fail_after(30):
        async with trio.open_nursery() as first:
            a = await start_engine(first, config, store=LmdbStore(tmp_path / "a"))
            a.request_shutdown()
        shutil.copytree(tmp_path / "a", tmp_path / "copy")
        await start_engine(nursery, config, store=LmdbStore(tmp_path / "a"))
        copy = Engine(config, store=LmdbStore(tmp_path / "copy"))
        with pytest.raises(BaseExceptionGroup) as refused:
            await nursery.start(copy.serve)
        errors, rest = refused.value.split(StoreError)
        assert errors is not None and rest is None
        while isinstance(errors, BaseExceptionGroup):
            errors = errors.exceptions[0]
        assert "copy of another node's data directory" in str(errors)


async def test_with_redis_down_a_node_serves_its_rooms_and_refuses_what_needs_the_directory(
        nursery, own_redis: OwnRedis) -> None:
    keys = TestKeys()
    config = node_config(keys, unique_prefix(), url=own_redis.url)
    a = await start_engine(nursery, config)
    b = await start_engine(nursery, config)
    with trio.fail_after(30):
        ann = await start_client(nursery, a.url, keys.token("ann"))
        room = await ann.create()
        own_redis.stop()
        await ann.chat_send(room.room, "still here")  # the room's own node goes on
        with pytest.raises(RequestError) as refused:
            await ann.create()
        assert refused.value.code.value == "unavailable" and refused.value.retry_ms
        bob = await start_client(nursery, b.url, keys.token("bob"))
        with pytest.raises(RequestError) as refused:
            await bob.join(code=room.code)
        assert refused.value.code.value == "unavailable"
        own_redis.start()  # empty: node a puts its lease back and registers its room again
        while True:
            try:
                joined = await bob.join(code=room.code)
                break
            except RequestError as error:
                assert error.code.value in ("unavailable", "not_found")
                await trio.sleep(0.1)
        assert joined.room == room.room and bob.url == a.url
        async with own_redis.client() as check:  # the session counts were written again too
            while b"1" not in (await check.hgetall(a.cluster.placement._key("sessions:ann"))).values():
                await trio.sleep(0.05)


async def test_cluster_settings_are_checked(tmp_path: Path) -> None:
    keys = TestKeys()
    with pytest.raises(ValueError, match="redis://"):
        test_config(keys, cluster="http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="advertise_url"):
        test_config(keys, cluster="redis://127.0.0.1:6379", host="0.0.0.0")
    assert test_config(keys, cluster="redis://127.0.0.1:6379", host="0.0.0.0",
                       advertise_url="ws://game-3.example:8765/").advertise_url == "ws://game-3.example:8765/"


async def test_a_revocation_on_one_node_closes_the_users_connections_on_every_node_and_outlives_redis(
        nursery, own_redis: OwnRedis) -> None:
    """Revoked through node b: ann's sessions on a and b end with 4501 and her token is refused on
    both; a node started afterwards refuses it too (it reads the list from Redis). Redis restarted
    empty: the nodes give the list back, so a node started after that refuses it as well."""
    keys = TestKeys()
    config = node_config(keys, unique_prefix(), url=own_redis.url)
    a, b = await start_engine(nursery, config), await start_engine(nursery, config)
    with trio.fail_after(30):
        token = keys.token("ann")
        on_a = await start_client(nursery, a.url, token)
        on_b = await start_client(nursery, b.url, token)
        until = int(time.time()) + 3600
        await b.ops.revoke_user("ann", until)
        for client in (on_a, on_b):
            closed = await client.wait_closed()
            assert isinstance(closed, ConnectionClosedError) and closed.code == CloseCode.TOKEN_REVOKED
        c = await start_engine(nursery, config)
        for engine in (a, c):
            with pytest.raises(ClientError):
                await start_client(nursery, engine.url, token, reconnect=False)
        later = keys.token("ann", now=time.time() + 2)  # minted after the revocation: accepted
        assert (await start_client(nursery, c.url, later, reconnect=False)).user == "ann"
        own_redis.stop()
        own_redis.start()
        async with own_redis.client() as check:
            while not [key async for key in check.scan_iter(match=f"{config.cluster_prefix}rev:*")]:
                await trio.sleep(0.1)  # a node resubscribed and gave its list back
        d = await start_engine(nursery, config)
        with pytest.raises(ClientError):
            await start_client(nursery, d.url, token, reconnect=False)


async def test_a_revocation_the_cluster_cannot_hear_is_refused_unavailable_and_heard_when_redis_returns(
        nursery, own_redis: OwnRedis) -> None:
    keys = TestKeys()
    config = node_config(keys, unique_prefix(), url=own_redis.url)
    a, b = await start_engine(nursery, config), await start_engine(nursery, config)
    with trio.fail_after(30):
        on_a = await start_client(nursery, a.url, keys.token("bob"))
        own_redis.stop()
        with pytest.raises(RoomError) as refused:
            await b.ops.revoke_user("bob", int(time.time()) + 3600)
        assert refused.value.code.value == "unavailable"
        assert on_a.connected  # not heard yet
        own_redis.start()  # b resubscribes, gives its list to Redis; a resubscribes and reads it
        closed = await on_a.wait_closed()
        assert isinstance(closed, ConnectionClosedError) and closed.code == CloseCode.TOKEN_REVOKED


async def test_a_revocation_heard_twice_or_out_of_order_changes_nothing_and_never_shortens_one(nursery) -> None:
    """What the bus applies merges with what a process holds: the later values win, so a repeat, an
    older entry, or an expired one changes nothing (and sweeps nobody)."""
    from roost.revocations import Revocations
    from roost.store.memory import MemoryStore

    store = MemoryStore()
    await nursery.start(store.run)
    now = time.time()
    revocations = Revocations(store, lambda: now)
    sweeps: list[bool] = []
    revocations.listeners.append(lambda: sweeps.append(True))
    assert await revocations.apply("user", "ann", [int(now), int(now) + 100])
    assert not await revocations.apply("user", "ann", [int(now), int(now) + 100])  # a repeat
    assert not await revocations.apply("user", "ann", [int(now) - 50, int(now) + 10])  # older
    assert await revocations.apply("user", "ann", [int(now) - 50, int(now) + 500])  # a later end: kept
    assert dict((key, values) for _kind, key, values in revocations.entries()) == {"ann": [int(now), int(now) + 500]}
    assert not await revocations.apply("jti", "t1", [int(now) - 1])  # expired already
    assert await revocations.apply("jti", "t1", [int(now) + 60]) and len(sweeps) == 3
    reloaded = Revocations(store, lambda: now)
    await reloaded.load()
    assert sorted(reloaded.entries()) == sorted(revocations.entries())
    with pytest.raises(ValueError):
        await revocations.apply("room", "r1", [1])


async def test_the_per_user_session_cap_counts_the_users_sessions_on_every_node(prefix, nursery) -> None:
    """max_sessions_per_user 2: two sessions on node a, then a third on node b is refused with 4506;
    once one on a ends, b admits it. A node SIGKILLed leaves counts behind: they are ignored (their
    lease is not live with that token) — the node's own restart is covered by the token in each field."""
    keys = TestKeys()
    a, b = await nodes(nursery, keys, prefix, 2, max_sessions_per_user=2)
    with trio.fail_after(20):
        first = await start_client(nursery, a.url, keys.token("ann"), reconnect=False)
        second = await start_client(nursery, a.url, keys.token("ann"), reconnect=False)
        counts_key = a.cluster.placement._key("sessions:ann")
        async with machine_redis(unique_prefix()) as redis:
            while (await redis.hgetall(counts_key)) != {f"{a.cluster.shard} {a.cluster.lease.token}".encode(): b"2"}:
                await trio.sleep(0.02)  # a has told the cluster
            with pytest.raises(ClientError) as refused:
                await start_client(nursery, b.url, keys.token("ann"), reconnect=False)
            assert isinstance(refused.value, ConnectionClosedError) and refused.value.code == CloseCode.TOO_MANY_SESSIONS
            await second.aclose()
            while (await redis.hgetall(counts_key)) != {f"{a.cluster.shard} {a.cluster.lease.token}".encode(): b"1"}:
                await trio.sleep(0.02)
            third = await start_client(nursery, b.url, keys.token("ann"), reconnect=False)
            assert third.connected and first.connected
            # A dead incarnation's field (a token that is not its shard's lease) is ignored and deleted.
            await redis.hset(counts_key, {f"{a.cluster.shard} 999": "5"})
            assert await b._gateway.sessions_elsewhere("ann") == 1
            assert f"{a.cluster.shard} 999".encode() not in await redis.hgetall(counts_key)


async def test_the_service_api_of_one_node_answers_moved_for_a_room_another_serves(prefix, nursery) -> None:
    keys = TestKeys()
    a, b = await nodes(nursery, keys, prefix, 2)
    with trio.fail_after(20):
        ann = await start_client(nursery, a.url, keys.token("ann"))
        room = (await ann.create()).room
        with pytest.raises(RoomError) as moved:
            await b.ops.publish(room, "notice", {"text": "hello"})
        assert moved.value.code.value == "moved" and moved.value.url == a.url
        with pytest.raises(RoomError) as missing:
            await b.ops.publish("rnosuchroom", "notice")
        assert missing.value.code.value == "not_found"
        await a.ops.publish(room, "notice", {"text": "hello"})  # its own node does it


async def test_the_lobby_of_any_node_lists_the_public_rooms_of_every_node(prefix, nursery) -> None:
    """Public rooms of a and b in the lobby of either (within half a second), private ones never;
    a closed room leaves it; a stopped node's rooms leave it at once (its lease is released)."""
    keys = TestKeys()
    (b,) = await nodes(nursery, keys, prefix, 1)
    config = node_config(keys, prefix)
    with trio.fail_after(30):
        async with trio.open_nursery() as first:
            a = await start_engine(first, config)
            ann = await start_client(nursery, a.url, keys.token("ann"), reconnect=False)
            on_a = (await ann.create(public=True, meta={"map": "dust"})).room
            await ann.create(public=False)
            bob = await start_client(nursery, b.url, keys.token("bob"))
            on_b = (await bob.create(public=True)).room
            closing = (await bob.create(public=True)).room

            async def lobby_of(client) -> set[str]:
                return {info.room for info in (await client.lobby()).rooms}

            while await lobby_of(ann) != {on_a, on_b, closing} or await lobby_of(bob) != {on_a, on_b, closing}:
                await trio.sleep(0.1)
            page = await bob.lobby(limit=1)
            assert len(page.rooms) == 1 and page.next is not None
            rest = await bob.lobby(cursor=page.next, limit=10)
            assert {info.room for info in (*page.rooms, *rest.rooms)} == {on_a, on_b, closing} and rest.next is None
            assert [info.meta for info in rest.rooms + page.rooms if info.room == on_a] == [{"map": "dust"}]
            await b.ops.close_room(closing)
            while await lobby_of(ann) != {on_a, on_b}:
                await trio.sleep(0.1)
            await ann.aclose()
            a.request_shutdown()
        assert await lobby_of(bob) == {on_b}  # a's lease released: its rooms cannot be joined now
