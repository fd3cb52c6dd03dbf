"""Review: lease takeover and release holes.

1. "Same address = my dead predecessor" is trusted without proof: a copy of a LIVE node's data
   directory started with the same advertise_url (every node behind one DNS name / a restored volume
   snapshot on a new pod with the same --advertise-url) takes the shard over at once instead of being
   refused; the original keeps serving (and acknowledging writes into an environment that is about to
   be abandoned) until its next renewal finds itself superseded.
2. A graceful stop's release is undone by the still-running renew loop: cluster.run lives in the
   store nursery and keeps renewing after cluster.release(); _RENEW finds the lease gone with the
   fence == its token and puts it back, so other nodes see a live owner (answer 'moved' to a dead
   address) for a whole lease period instead of 'unavailable' at once.
"""

from __future__ import annotations

import shutil

import pytest
import trio

from roost import Engine
from roost.store import StoreError
from roost.store.lmdb import LmdbStore
from roost.testing import TestKeys, start_engine, test_config

from .redis_server import MACHINE_REDIS, machine_redis, unique_prefix


@pytest.fixture
async def prefix():
    prefix = unique_prefix()
    async with machine_redis(prefix):
        yield prefix


def _config(keys, prefix, **more):
    return test_config(keys, cluster=f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0", cluster_prefix=prefix,
                       lease_period=1.0, **more)


async def test_a_copy_of_a_live_nodes_data_directory_with_the_same_advertise_url_is_refused(
        prefix, nursery, tmp_path) -> None:
    keys = TestKeys()
    config = _config(keys, prefix, advertise_url="ws://game.example:8765/")
    with trio.fail_after(30):
        async with trio.open_nursery() as first:
            a = await start_engine(first, config, store=LmdbStore(tmp_path / "a"))
            a.request_shutdown()
        shutil.copytree(tmp_path / "a", tmp_path / "copy")
        a = await start_engine(nursery, config, store=LmdbStore(tmp_path / "a"))
        token = a.cluster.lease.token
        copy = Engine(config, store=LmdbStore(tmp_path / "copy"))
        try:
            with trio.fail_after(5):
                await nursery.start(copy.serve)
        except BaseExceptionGroup as refused:
            errors, _rest = refused.split(StoreError)
            assert errors is not None
            return  # refused: what the README promises
        pytest.fail(f"the copy took the live node's shard over at once (token {copy.cluster.lease.token} "
                    f"over the live owner's {token}); the live node is still serving: {not a.shutdown_requested}")


async def test_a_graceful_stop_leaves_the_lease_released(prefix, nursery, tmp_path) -> None:
    keys = TestKeys()
    config = _config(keys, prefix)
    async with machine_redis(prefix) as redis:
        with trio.fail_after(30):
            async with trio.open_nursery() as first:
                a = await start_engine(first, config, store=LmdbStore(tmp_path / "a"))
                shard = a.cluster.shard
                placement = a.cluster.placement
                original = placement.release

                async def release_then_flush(lease):  # the inbox/directory flush after release takes a while
                    await original(lease)
                    await trio.sleep(0.5)

                placement.release = release_then_flush
                a.request_shutdown()
            held = await redis.get(placement._lease_key(shard))
            assert held is None, f"the stopped node's lease was put back after its release: {held!r}"


from .redis_server import OwnRedis, own_redis  # noqa: E402,F401


async def test_a_copy_started_while_redis_is_down_does_not_depose_the_live_owner(
        nursery, own_redis: OwnRedis, tmp_path) -> None:
    """A copy of a live node's data directory started while Redis is down does not serve (a process
    that never held the lease cannot know whether another does); when Redis returns empty, the
    directory recovers while the original puts its lease back, and the copy, finding it held, is
    refused. The original is never deposed. (The review's case: the copy served without a lease and
    its keeper, running first, took the shard.)"""
    from roost import Engine
    from roost.store import StoreError

    keys = TestKeys()
    config = test_config(keys, cluster=own_redis.url, cluster_prefix=unique_prefix(), lease_period=1.0)
    with trio.fail_after(30):
        async with trio.open_nursery() as first:
            a = await start_engine(first, config, store=LmdbStore(tmp_path / "a"))
            a.request_shutdown()
        shutil.copytree(tmp_path / "a", tmp_path / "copy")
        a = await start_engine(nursery, config, store=LmdbStore(tmp_path / "a"))
        own_redis.stop()
        copy = Engine(config, store=LmdbStore(tmp_path / "copy"))
        refused: list[BaseException] = []

        async def run_copy() -> None:
            try:
                await copy.serve()
            except BaseExceptionGroup as group:
                refused.append(group)

        nursery.start_soon(run_copy)
        await trio.sleep(1.0)
        with pytest.raises(RuntimeError):
            copy.ops  # not serving: it waits for Redis
        own_redis.start()
        while not refused:
            await trio.sleep(0.1)
        errors, rest = refused[0].split(StoreError)
        assert errors is not None and rest is None
        assert not a.shutdown_requested and a.cluster.lost is None, (
            f"the live original was deposed by a copy of its data directory: {a.cluster.lost}")
