"""Review: join_or_create claims the code in Redis before the room can fail to be made.

Router.get_or_create (engine/router.py:201) claims (two keys: code:<c> and room:<id>) before
Router.create refuses an unknown logic name (router.py:76) or anything else fails; nothing frees the
claim. Any authenticated client can loop join_or_create(<fresh code>, logic="nope") and grow the
shared Redis without bound (2 keys per request, never expiring), and the codes stay claimed for
rooms that never existed.
"""

from __future__ import annotations

import trio

from roost.client import RequestError, start_client
from roost.testing import TestKeys, start_engine, test_config

from .redis_server import MACHINE_REDIS, machine_redis, unique_prefix


async def test_a_refused_join_or_create_leaves_nothing_in_the_directory(nursery) -> None:
    prefix = unique_prefix()
    keys = TestKeys()
    async with machine_redis(prefix) as redis:
        config = test_config(keys, cluster=f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0",
                             cluster_prefix=prefix, lease_period=5.0)
        a = await start_engine(nursery, config)
        with trio.fail_after(20):
            mallory = await start_client(nursery, a.url, keys.token("mallory"))
            for index in range(50):
                try:
                    await mallory.join_or_create(f"SQUAT{index}", logic="no-such-logic")
                except RequestError:
                    pass
            placement = a.cluster.placement
            leaked = [key async for key in redis.scan_iter(match=placement._code_key("*"))]
            leaked += [key async for key in redis.scan_iter(match=placement._room_key("*"))]
            assert not leaked, f"{len(leaked)} directory keys left by 50 refused join_or_create"
            assert not a.router.rooms
