"""Review 2: the directory's epoch/recovery scheme and its scripts' answers.

1. The recovery period is one lease period *of whichever process noticed first*, and ends on time
   alone: an owner that does not reach Redis within it (down, restarting, restoring many rooms, or
   simply configured with a longer lease period) has its codes claimed afresh -> two live rooms.
2. A corrupted epoch value makes every epoch script answer [1] (Lua drops the nil id): _seen raises
   IndexError, which escapes ShardOwner._keep (only PlacementUnavailable/Superseded/ShardHeld are
   caught) and kills the keeper task, i.e. the store nursery, i.e. the engine.
"""

from __future__ import annotations

import pytest
import trio

from roost.placement import ClusterMismatch, Superseded, Placement, PlacementUnavailable, ShardOwner

from .redis_server import machine_redis, unique_prefix


async def _wipe(redis, prefix: str) -> None:
    """What a Redis restart (nothing on disk) does to this cluster's keys."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(keys)


async def _claim_when_ready(placement: Placement, code: str, room_id: str, shard: str):
    deadline = trio.current_time() + 10
    while True:
        try:
            return await placement.claim(code, room_id, shard)
        except PlacementUnavailable:
            assert trio.current_time() < deadline
            await trio.sleep(0.02)


async def test_an_owner_with_another_lease_period_than_the_clusters_is_refused() -> None:
    """The review's case: a node with a 0.3 s lease period noticed the Redis restart first, its
    recovery ended before a live node with 3 s renewed, and the live node's code was claimed again.
    The recovery lasts one lease period, which holds only if every process has the same: a process
    with another is refused at its first acquisition (engine start: one line, StoreError)."""
    prefix = unique_prefix()
    async with machine_redis(prefix) as redis:
        fast = Placement(redis, prefix, lease_ms=300)
        slow = Placement(redis, prefix, lease_ms=3000)
        await fast.acquire("sA", "ws://a/")
        with pytest.raises(ClusterMismatch, match="lease_period is 0.3 s"):
            await slow.acquire("sB", "ws://b/")


async def test_a_shard_whose_owner_restarts_during_the_recovery_keeps_its_codes() -> None:
    """An owner restarting when Redis restarted (its store knows the old epoch and its token) comes back
    during the recovery: it may take its lease once half a period has passed (a live owner would have
    put its own back by then), which keeps the recovery going while it registers its rooms; a claim
    of its code elsewhere, waiting for the recovery to end, finds its room. (An owner still down when
    the recovery ends is not waited for: the README says so.)"""
    prefix = unique_prefix()
    async with machine_redis(prefix) as redis:
        a = Placement(redis, prefix, lease_ms=300)
        b = Placement(redis, prefix, lease_ms=300)
        lease_a = await a.acquire("sA", "ws://a/")
        await b.acquire("sB", "ws://b/")
        assert await b.claim("LOBBY", "rB", "sB") == ("rB", "sB")
        epoch_b = b.epoch                                # kept in b's store; b now stops (restart)
        await _wipe(redis, prefix)                       # ...and Redis restarts with it
        await a.renew(lease_a)                           # recovery starts
        b2 = Placement(redis, prefix, lease_ms=300, epoch=epoch_b)
        owner = ShardOwner(b2, "sB", "ws://b/", floor=1, rooms=lambda: [("rB", "LOBBY")],
                           record=_record, on_lost=lambda reason: None)
        won: list[tuple[str, str]] = []
        with trio.fail_after(5):
            async with trio.open_nursery() as both:
                both.start_soon(owner.start)             # b is back while the directory recovers
                both.start_soon(lambda: _claim_into(won, a, "LOBBY", "rA", "sA"))
        assert won == [("rB", "sB")], f"two live rooms for LOBBY: {won} on a, rB in b's store"


async def _claim_into(out: list, placement: Placement, code: str, room_id: str, shard: str) -> None:
    out.append(await _claim_when_ready(placement, code, room_id, shard))


async def _record(token: int, epoch: str) -> None:
    pass


async def test_a_corrupt_epoch_value_does_not_kill_the_shards_keeper() -> None:
    prefix = unique_prefix()
    async with machine_redis(prefix) as redis:
        placement = Placement(redis, prefix, lease_ms=300)
        lost: list[str] = []
        owner = ShardOwner(placement, "sA", "ws://a/", floor=0, rooms=lambda: [], record=_record,
                           on_lost=lost.append)
        await owner.start()
        await redis.set(f"{prefix}{{dir}}:epoch", "garbage")  # any value not "kind id [until]"
        await owner._keep()  # IndexError on the current code: the keeper task (and the engine) dies
        assert owner.lost is None


async def test_a_recovering_epoch_without_an_end_is_not_a_permanent_outage() -> None:
    prefix = unique_prefix()
    async with machine_redis(prefix) as redis:
        placement = Placement(redis, prefix, lease_ms=300)
        await placement.acquire("sA", "ws://a/")
        await redis.set(f"{prefix}{{dir}}:epoch", "recovering abc")  # no end: tonumber('') is nil
        deadline = trio.current_time() + 3
        while True:
            try:
                await placement.by_code("LOBBY")
                break
            except PlacementUnavailable as exc:
                assert trio.current_time() < deadline, f"the directory never recovers: {exc}"
                await trio.sleep(0.1)


async def test_claims_refused_while_the_directory_recovers_leave_no_keys_behind() -> None:
    """Placement.claim writes room:<id> before the script checks the epoch: every join_or_create retried
    during a recovery (every client after a Redis restart) leaves a key that never expires."""
    prefix = unique_prefix()
    async with machine_redis(prefix) as redis:
        placement = Placement(redis, prefix, lease_ms=2000)
        lease = await placement.acquire("sA", "ws://a/")
        await _wipe(redis, prefix)
        await placement.renew(lease)  # recovery for 2 s
        refused = 0
        for index in range(20):  # clients retrying their join_or_create
            try:
                await placement.claim("LOBBY", f"r{index}", "sA")
            except PlacementUnavailable:
                refused += 1
        assert refused == 20  # every one of them during the recovery
        leaked = [key async for key in redis.scan_iter(match=f"{prefix}{{dir}}:room:*")]
        assert not leaked, f"{len(leaked)} room keys of claims that were refused"


async def test_a_stale_lease_with_a_lower_token_does_not_depose_the_live_owner() -> None:
    """Tokens only grow: a lease value with a lower token than the live owner's (a Redis restored from
    a snapshot, a replica promoted with lag) is stale, yet _RENEW answers superseded and the live
    owner stops (ShardOwner._keep -> on_lost -> request_shutdown)."""
    prefix = unique_prefix()
    async with machine_redis(prefix) as redis:
        placement = Placement(redis, prefix, lease_ms=1000)
        await placement.acquire("sA", "ws://a/")
        lease = await placement.acquire("sA", "ws://a/", takeover=True)  # a restarted worker: token 2
        assert lease.token == 2
        # the snapshot from before the takeover comes back
        await redis.set(f"{prefix}{{dir}}:lease:sA", "1 ws://a/", px=1000)
        await redis.set(f"{prefix}{{dir}}:fence:sA", "1")
        await placement.renew(lease)  # Superseded on the current code


async def test_after_a_redis_restart_the_older_token_does_not_win_the_shard_back() -> None:
    """Fence counters die with Redis, so _RENEW's put-back accepts any token: an owner that was already
    superseded (token 1, not yet told: partitioned) renews first after the restart and gets the shard
    back; the newer owner (token 2) is then the one told 'superseded'. The token went backwards."""
    prefix = unique_prefix()
    async with machine_redis(prefix) as redis:
        old = Placement(redis, prefix, lease_ms=1000)
        new = Placement(redis, prefix, lease_ms=1000)
        stale = await old.acquire("sA", "ws://old/")                 # token 1
        await redis.delete([f"{prefix}{{dir}}:lease:sA"])           # its lease lapses (partition)
        current = await new.acquire("sA", "ws://new/", floor=1)      # token 2: the owner now
        assert current.token == 2
        await _wipe(redis, prefix)                                   # Redis restarts empty
        await old.renew(stale)                                       # the superseded one renews first:
        # Redis cannot know token 2 existed; the current owner's renewal then finds a lower token and
        # takes the lease back (only a higher one supersedes), and the stale one learns it next.
        assert await new.renew(current)
        assert await redis.get(new._lease_key("sA")) == b"2 ws://new/"
        with pytest.raises(Superseded):
            await old.renew(stale)


async def test_a_registration_that_failed_after_the_lease_was_put_back_is_retried() -> None:
    """ShardOwner._keep registers the rooms only when renew answers 'put back'. If that registration
    fails (a timeout or reset on one of its round trips: Redis has just restarted and every owner is
    registering), the next renewal finds the lease in place and registers nothing: the remaining
    codes stay unclaimed until the next Redis restart, free for any node to make a second room."""
    prefix = unique_prefix()
    async with machine_redis(prefix) as redis:
        placement = Placement(redis, prefix, lease_ms=300)
        owner = ShardOwner(placement, "sA", "ws://a/", floor=0, rooms=lambda: [("rA", "LOBBY")],
                           record=_record, on_lost=lambda reason: None)
        await owner.start()
        await _wipe(redis, prefix)
        real = placement.register
        failures = [PlacementUnavailable("the cluster directory is unavailable (register: timeout)")]

        async def flaky(shard, rooms):
            if failures:
                raise failures.pop()
            return await real(shard, rooms)

        placement.register = flaky
        await owner._keep()  # lease put back; its registration fails
        await owner._keep()  # the next renewal: the lease is there
        await owner._keep()
        assert await redis.get(f"{prefix}{{dir}}:code:LOBBY") == b"rA sA", "LOBBY was never registered again"
