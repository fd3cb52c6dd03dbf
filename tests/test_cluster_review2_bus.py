"""Review 2: the revocation bus.

1. A revocation made while this process cannot reach Redis (a partition, a Redis failover: anything
   but a restart that loses the epoch) is stored here and answered ``unavailable``; when Redis is
   reachable again the version and epoch are what this process last saw, so nothing is
   synchronised: the other processes never hear it (the module docstring says "the next
   reconnection tells the others anyway").
2. A key under ``{prefix}rev:`` whose name is not UTF-8 raises UnicodeDecodeError outside _apply's
   checks: it escapes RevocationBus.run and takes the whole engine down (store nursery).
3. An admin revoke with an ``exp`` Redis refuses as EXAT (0, negative, > ~9.2e15) is kept in every
   store that has it; each refill then raises from the pipeline, so ``seen`` never advances and the
   process SCANs, rewrites every entry and INCRs the version four times a second, forever (and
   every other process re-reads the whole list as often).
4. revoke_jti shortens an existing entry (no max, unlike revoke_user and apply).
"""

from __future__ import annotations

import time

import msgpack
import pytest
import trio

from roost.client import start_client
from roost.errors import RoomError
from roost.protocol.errors import CloseCode
from roost.testing import TestKeys, start_engine, test_config

from .redis_server import MACHINE_REDIS, OwnRedis, machine_redis, own_redis, unique_prefix  # noqa: F401


class Proxy:
    """A TCP relay to the machine's Redis that can be cut (a partition: Redis keeps its keys)."""

    def __init__(self) -> None:
        self.port = 0
        self.cut = False
        self._scopes: set[trio.CancelScope] = set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def partition(self) -> None:
        self.cut = True
        for scope in list(self._scopes):
            scope.cancel()

    async def _handle(self, downstream: trio.SocketStream) -> None:
        if self.cut:
            await downstream.aclose()
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream(*MACHINE_REDIS)
            except OSError:
                upstream = None
            try:
                if upstream is None:
                    return

                async def pump(source, sink) -> None:
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump, downstream, upstream)
                    nursery.start_soon(pump, upstream, downstream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self._scopes.discard(scope)
                if upstream is not None:
                    await trio.aclose_forcefully(upstream)
        await trio.aclose_forcefully(downstream)


async def test_a_revocation_made_during_a_partition_reaches_the_other_nodes_when_redis_returns(nursery) -> None:
    prefix = unique_prefix()
    keys = TestKeys()
    proxy = Proxy()
    await nursery.start(proxy.run)
    async with machine_redis(prefix):
        direct = test_config(keys, cluster=f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0", cluster_prefix=prefix,
                             lease_period=1.0)
        a = await start_engine(nursery, direct)
        b = await start_engine(nursery, direct.replace(cluster=f"redis://127.0.0.1:{proxy.port}/0"))
        with trio.fail_after(30):
            on_a = await start_client(nursery, a.url, keys.token("bob"))
            proxy.partition()
            with pytest.raises(RoomError) as refused:
                await b.ops.revoke_user("bob", int(time.time()) + 3600)
            assert refused.value.code.value == "unavailable"  # "to retry" -- but see below
            proxy.cut = False  # Redis reachable again, with every key it had
        with trio.move_on_after(5):
            closed = await on_a.wait_closed()
            assert closed.code == CloseCode.TOKEN_REVOKED
            return
        assert b.cluster is not None and b.cluster.directory_up  # b reaches Redis again (renewing)
        pytest.fail("bob's revocation on b was never heard on a after the partition healed")


async def test_a_non_utf8_revocation_key_does_not_take_the_engine_down() -> None:
    prefix = unique_prefix()
    keys = TestKeys()
    async with machine_redis(prefix) as redis:
        config = test_config(keys, cluster=f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0", cluster_prefix=prefix,
                             lease_period=1.0)
        crashed: list[BaseException] = []

        async def serve(engine, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                await engine.serve(task_status=task_status)
            except Exception as exc:  # a crash (the cancellation at the end is not one)
                crashed.append(exc)

        with trio.move_on_after(10):
            async with trio.open_nursery() as nursery:
                engine = await start_engine_guarded(nursery, serve, config)
                await redis.set(prefix.encode() + b"rev:\xff\xfe", msgpack.packb([int(time.time()) + 60]))
                await redis.incr(f"{prefix}revocations")
                await trio.sleep(1.5)
                nursery.cancel_scope.cancel()
        assert not crashed, f"the engine died: {crashed!r}"
        del engine


async def start_engine_guarded(nursery, serve, config):
    from roost.app import Engine
    engine = Engine(config)
    await nursery.start(serve, engine)
    return engine


async def test_an_unrepresentable_exp_does_not_make_the_bus_refill_forever(nursery, own_redis: OwnRedis) -> None:
    keys = TestKeys()
    prefix = unique_prefix()
    config = test_config(keys, cluster=own_redis.url, cluster_prefix=prefix, lease_period=1.0)
    a = await start_engine(nursery, config)
    with trio.fail_after(30):
        with pytest.raises(RoomError):
            await a.ops.revoke_token("forever", 10 ** 16)  # the admin API takes any int as exp
        own_redis.stop()
        own_redis.start()  # a refills Redis... and fails on that entry, every poll
        await trio.sleep(1.5)
        async with own_redis.client() as check:
            first = int(await check.get(f"{prefix}revocations") or 0)
            await trio.sleep(1.0)
            second = int(await check.get(f"{prefix}revocations") or 0)
        assert second - first <= 1, f"the list's version went {first} -> {second} in 1 s (a refill every poll)"


async def test_revoking_a_jti_again_never_shortens_it(nursery) -> None:
    from roost.revocations import Revocations
    from roost.store.memory import MemoryStore

    store = MemoryStore()
    await nursery.start(store.run)
    now = time.time()
    revocations = Revocations(store, lambda: now)
    await revocations.revoke_jti("t1", int(now) + 3600)
    await revocations.revoke_jti("t1", int(now) + 10)
    assert dict((key, values) for _kind, key, values in revocations.entries()) == {"t1": [int(now) + 3600]}
