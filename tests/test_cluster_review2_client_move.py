"""Review 2: Client._move (engine/client.py:873-905) aborts the connection under every other request
in flight on it. A request sent after the moved join, answered after it (the node handles a
connection's requests in order), fails with ConnectionLost although the node executed it: a
``lobby`` is lost, and a concurrent ``join_or_create`` made the client a member of a room on the old
node and then reports failure.

Fixed by not moving while another request is in flight: the join is answered ``moved`` to the
application then (its ``url`` says where), and nothing else is lost."""

from __future__ import annotations

import trio

from roost.client import RequestError, start_client
from roost.testing import TestKeys, start_engine, test_config

from .redis_server import MACHINE_REDIS, machine_redis, unique_prefix


async def test_a_request_in_flight_is_not_lost_when_another_one_follows_moved(nursery) -> None:
    prefix = unique_prefix()
    keys = TestKeys()
    async with machine_redis(prefix):
        config = test_config(keys, cluster=f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0",
                             cluster_prefix=prefix, lease_period=5.0)
        a = await start_engine(nursery, config)
        b = await start_engine(nursery, config)
        with trio.fail_after(20):
            bob = await start_client(nursery, b.url, keys.token("bob"))
            room = (await bob.create()).room  # lives on b
            lost = []
            for attempt in range(10):
                ann = await start_client(nursery, a.url, keys.token(f"ann{attempt}"))
                outcomes: dict[str, object] = {}

                async def run(name, call, outcomes=outcomes) -> None:
                    try:
                        outcomes[name] = await call()
                    except Exception as exc:  # noqa: BLE001
                        outcomes[name] = exc

                async with trio.open_nursery() as calls:
                    calls.start_soon(run, "join", lambda ann=ann: ann.join(room))
                    for _ in range(attempt):
                        await trio.lowlevel.checkpoint()  # join is sent first...
                    calls.start_soon(run, "lobby", ann.lobby)  # ...then the lobby, on the same connection
                join = outcomes["join"]
                assert not isinstance(join, Exception) or (isinstance(join, RequestError) and join.code.value == "moved"
                                                           and join.url == b.url), outcomes
                if isinstance(outcomes["lobby"], Exception):
                    lost.append(outcomes["lobby"])
                await ann.aclose()
        assert not lost, f"{len(lost)} of 10 lobby requests were lost to another request's move: {lost[0]!r}"
