"""Review: a slow Redis stalls every room of a connection that asked for a room (head-of-line).

A connection's requests are handled in order, so a chat sent after a join that waits on the
directory waits for it (the review measured 1.55 s behind a paused Redis). The directory's answer is
now bounded (``DIRECTORY_DEADLINE``): the join is answered ``unavailable`` and the chat goes on.
"""

from __future__ import annotations

import coredis
import trio

from roost.client import RequestError, start_client
from roost.placement import DIRECTORY_DEADLINE
from roost.testing import TestKeys, start_engine, test_config

from .redis_server import OwnRedis, own_redis, unique_prefix  # noqa: F401


async def test_chat_in_a_joined_room_is_not_held_up_by_a_join_or_create_waiting_on_redis(
        nursery, own_redis: OwnRedis) -> None:
    keys = TestKeys()
    config = test_config(keys, cluster=own_redis.url, cluster_prefix=unique_prefix(), lease_period=30.0)
    a = await start_engine(nursery, config)
    with trio.fail_after(30):
        ann = await start_client(nursery, a.url, keys.token("ann"))
        room = (await ann.create()).room
        async with own_redis.client() as admin:
            await admin.client_pause(1500, coredis.PureToken.WRITE)  # Redis slow for 1.5 s

        refused: list[str] = []

        async def other_room() -> None:
            try:
                await ann.join_or_create("ELSEWHERE")
            except RequestError as error:
                refused.append(error.code.value)

        nursery.start_soon(other_room)
        await trio.sleep(0.05)
        started = trio.current_time()
        await ann.chat_send(room, "in a room this node serves")
        took = trio.current_time() - started
        assert took < DIRECTORY_DEADLINE + 0.5, f"chat in a live local room waited {took:.2f} s behind the directory"
        assert refused == ["unavailable"]
