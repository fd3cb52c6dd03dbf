"""Review: two live rooms for one code across nodes.

1. Redis restarts (empty): until the room's owner renews (up to lease_period/3 later) and registers
   its rooms again, any other node's join_or_create claims the code afresh and makes a second room.
2. A room closes; its code is freed in the background (forget_soon). A join_or_create on the same
   node in that window re-creates a room under the OLD id (the stale claim "is the authority"), and
   then the background forget deletes the code key that now names the live room: the next
   join_or_create on another node makes a second room for the code.
"""

from __future__ import annotations

import trio

from roost.client import RequestError, start_client
from roost.testing import TestKeys, start_engine, test_config

from .redis_server import MACHINE_REDIS, OwnRedis, machine_redis, own_redis, unique_prefix  # noqa: F401


async def _retry_join_or_create(client, code: str):
    deadline = trio.current_time() + 10
    while True:
        try:
            return await client.join_or_create(code)
        except RequestError as error:
            assert error.code.value in ("unavailable", "not_found"), error
            assert trio.current_time() < deadline
            await trio.sleep(0.02)


def _homes(engines, code: str):
    return [e for e in engines if (r := e.router.by_code(code)) is not None and not r.closed]


async def test_redis_restart_lets_another_node_create_a_second_room_for_a_live_code(
        nursery, own_redis: OwnRedis) -> None:
    keys = TestKeys()
    config = test_config(keys, cluster=own_redis.url, cluster_prefix=unique_prefix(), lease_period=3.0)
    a = await start_engine(nursery, config)
    b = await start_engine(nursery, config)
    with trio.fail_after(30):
        ann = await start_client(nursery, a.url, keys.token("ann"))
        first = await ann.join_or_create("LOBBY")
        own_redis.stop()
        own_redis.start()  # empty; node a re-registers LOBBY only at its next renewal (<= 1 s)
        bob = await start_client(nursery, b.url, keys.token("bob"))
        second = await _retry_join_or_create(bob, "LOBBY")
        await trio.sleep(1.5)  # a has renewed and registered by now
        assert second.room == first.room, (
            f"two live rooms for code LOBBY: {first.room} on a, {second.room} on "
            f"{'b' if b.router.get(second.room) else 'a'}")
        assert len(_homes([a, b], "LOBBY")) == 1


async def test_join_or_create_while_a_closed_rooms_code_is_being_freed_leaves_a_live_room_unclaimed(
        nursery) -> None:
    prefix = unique_prefix()
    keys = TestKeys()
    async with machine_redis(prefix) as redis:
        config = test_config(keys, cluster=f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0",
                             cluster_prefix=prefix, lease_period=1.0)
        a = await start_engine(nursery, config)
        b = await start_engine(nursery, config)
        # Redis a little slow to answer the background forget (or the task scheduled a little late).
        placement = a.cluster.placement
        original_forget = placement.forget

        async def slow_forget(room_id, code, shard):
            await trio.sleep(0.3)
            await original_forget(room_id, code, shard)

        placement.forget = slow_forget
        with trio.fail_after(20):
            ann = await start_client(nursery, a.url, keys.token("ann"))
            old = await ann.join_or_create("TABLE")
            await a.ops.close_room(old.room)
            while a.router.get(old.room) is not None:  # disposed here; its code not yet freed
                await trio.sleep(0.01)
            cat = await start_client(nursery, a.url, keys.token("cat"))
            again = await _retry_join_or_create(cat, "TABLE")
            await trio.sleep(0.6)  # the background forget has run
            claimed = await redis.get(a.cluster.placement._code_key("TAB1E"))
            assert claimed is not None, (
                f"room {again.room} is live on a with code TABLE but the directory has no claim for it")
            bob = await start_client(nursery, b.url, keys.token("bob"))
            other = await _retry_join_or_create(bob, "TABLE")
            assert other.room == again.room, "a second live room for code TABLE"
