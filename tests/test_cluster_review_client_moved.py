"""Review: the Python client follows 'moved' to any ws:// or wss:// URL and sends its bearer token there.

Client._move (engine/client.py:876-881) accepts error.url if it parses as ws/wss with a host: another
host, another domain, or a wss:// -> ws:// downgrade. The url comes from the lease value in Redis
(Lease.address), so anyone who can write the directory (an unauthenticated Redis on the network, a
misconfigured node, a buggy proxy) redirects every joining client and collects its user token
(sent in hello right after the handshake), which is valid on every node of the cluster.
"""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from roost.client import ClientError, start_client
from roost.testing import TestKeys, start_engine, test_config

from .redis_server import MACHINE_REDIS, machine_redis, unique_prefix


async def test_a_moved_to_another_host_does_not_get_the_clients_token(nursery) -> None:
    prefix = unique_prefix()
    keys = TestKeys()
    received: list[bytes] = []

    async def collector(request) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                received.append(message if isinstance(message, bytes) else message.encode())
        except trio_websocket.ConnectionClosed:
            pass

    async with machine_redis(prefix) as redis:
        config = test_config(keys, cluster=f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0",
                             cluster_prefix=prefix, lease_period=5.0)
        a = await start_engine(nursery, config)
        b = await start_engine(nursery, config)
        evil = await nursery.start(trio_websocket.serve_websocket, collector, "127.0.0.1", 0, None)
        evil_url = f"ws://localhost:{evil.port}/"  # another host name than the client was given
        with trio.fail_after(20):
            ann = await start_client(nursery, a.url, keys.token("ann"))
            room = (await ann.create()).room
            lease = a.cluster.lease
            await redis.set(a.cluster.placement._lease_key(lease.shard), f"{lease.token} {evil_url}")  # someone writes Redis
            token = keys.token("bob")
            bob = await start_client(nursery, b.url, token)
            with trio.move_on_after(3):
                try:
                    await bob.join(room)
                except ClientError:
                    pass
            leaked = any(token.encode() in message for message in received)
            assert not leaked and bob.url == b.url, (
                f"the client followed 'moved' to {bob.url} and sent it its token")
