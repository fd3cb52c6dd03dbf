"""The cluster directory on a real Redis (engine/placement.py): leases with fencing tokens, exactly-once
room claims, a second claimant for every lease, and Redis lost and restarted under a live owner."""

from __future__ import annotations

import pytest
import trio

from roost.placement import (
    Lease, Placement, PlacementUnavailable, Recovering, ShardHeld, ShardOwner, Superseded,
)

from .redis_server import OwnRedis, machine_client, machine_redis, own_redis, unique_prefix  # noqa: F401 (fixture)


@pytest.fixture
async def placement():
    prefix = unique_prefix()
    async with machine_redis(prefix) as client:
        yield Placement(client, prefix, lease_ms=5_000)


async def test_a_second_claimant_of_a_live_lease_is_refused_and_told_who_holds_it(placement: Placement) -> None:
    first = await placement.acquire("node-a/0", "ws://127.0.0.1:7001/")
    with pytest.raises(ShardHeld) as refused:
        await placement.acquire("node-a/0", "ws://127.0.0.1:7002/")
    assert refused.value.holder == first
    assert await placement.owner("node-a/0") == first


async def test_the_replacement_at_the_same_address_takes_over_at_once_with_a_later_token(placement: Placement) -> None:
    """A worker SIGKILLed and restarted by its supervisor (same address, the flock proving the first
    dead) must not wait out the dead one's TTL; the dead one's token is then superseded."""
    first = await placement.acquire("node-a/0", "ws://127.0.0.1:7001/")
    with pytest.raises(ShardHeld):  # the same address alone proves nothing: a copy may use it too
        await placement.acquire("node-a/0", "ws://127.0.0.1:7001/")
    second = await placement.acquire("node-a/0", "ws://127.0.0.1:7001/", takeover=True)
    assert second.token > first.token
    with pytest.raises(Superseded):
        await placement.renew(first)
    assert not await placement.renew(second)  # renewed in place, not put back
    assert await placement.owner("node-a/0") == second


async def test_tokens_stay_above_the_floor_the_environment_recorded(placement: Placement) -> None:
    """Redis here keeps nothing on disk: after a restart its counters start again. The environment's
    own record of its last token keeps the next one above every token ever used."""
    lease = await placement.acquire("node-a/1", "ws://127.0.0.1:7001/", floor=41)
    assert lease.token == 42
    again = await placement.acquire("node-a/1", "ws://127.0.0.1:7001/", floor=10, takeover=True)
    assert again.token == 43


async def test_a_lapsed_lease_is_put_back_by_its_owner_unless_a_later_owner_took_a_token(placement: Placement) -> None:
    shard = "node-b/0"
    lease = await placement.acquire(shard, "ws://127.0.0.1:7001/")
    await placement._client.delete([placement._lease_key(shard)])  # what its TTL does, deterministically
    assert await placement.owner(shard) is None
    assert await placement.renew(lease)  # nobody took it: the owner was only late (a pause, a slow Redis)
    assert await placement.owner(shard) == lease
    later = await placement.acquire(shard, "ws://127.0.0.1:7001/", takeover=True)
    await placement._client.delete([placement._lease_key(shard)])  # the later owner lapses too
    with pytest.raises(Superseded):
        await placement.renew(lease)  # the first may not come back over it
    await placement.renew(later)


async def test_a_lease_lapses_by_its_ttl_when_nobody_renews_it() -> None:
    prefix = unique_prefix()
    async with machine_redis(prefix) as client:
        placement = Placement(client, prefix, lease_ms=150)
        await placement.acquire("node-c/0", "ws://127.0.0.1:7001/")
        with trio.fail_after(5):
            while await placement.owner("node-c/0") is not None:
                await trio.sleep(0.05)


async def test_a_stale_release_does_not_free_the_later_owners_lease(placement: Placement) -> None:
    first = await placement.acquire("node-d/0", "ws://127.0.0.1:7001/")
    second = await placement.acquire("node-d/0", "ws://127.0.0.1:7001/", takeover=True)
    await placement.release(first)
    assert await placement.owner("node-d/0") == second
    await placement.release(second)
    assert await placement.owner("node-d/0") is None


async def test_fifty_racing_claims_of_one_code_make_one_room() -> None:
    """Fifty claimants on five connections, each with a room id of its own, released together: one
    wins, every one of them is told the winner's room, and no loser's id key is left behind."""
    prefix = unique_prefix()
    results: list[tuple[str, str]] = []
    async with machine_redis(prefix) as cleanup:
        clients = [machine_client() for _ in range(5)]
        entered = [await client.__aenter__() for client in clients]
        try:
            placements = [Placement(client, prefix) for client in entered]
            go = trio.Event()

            async def claimant(index: int) -> None:
                await go.wait()
                results.append(await placements[index % 5].claim("LOBBY-1", f"r{index:03}", f"node-{index % 3}/0"))

            async with trio.open_nursery() as nursery:
                for index in range(50):
                    nursery.start_soon(claimant, index)
                await trio.sleep(0.05)
                go.set()
        finally:
            for client in reversed(clients):
                await client.__aexit__(None, None, None)
        assert len(results) == 50 and len(set(results)) == 1
        winner, shard = results[0]
        placement = Placement(cleanup, prefix)
        room_keys = [key async for key in cleanup.scan_iter(match=placement._room_key("*"))]
        assert room_keys == [placement._room_key(winner).encode()]
        location = await placement.locate(code="LOBBY-1")
        assert location is not None and (location.room_id, location.shard, location.code) == (winner, shard, "LOBBY-1")
        assert await placement.locate(room_id=winner) == location
        assert location.owner is None  # nobody serves that shard in this test: the room is unavailable


async def test_forgetting_a_room_frees_its_code_only_while_the_code_still_names_it(placement: Placement) -> None:
    assert await placement.claim("TABLE", "r1", "node-a/0") == ("r1", "node-a/0")
    await placement.forget("r1", "TABLE", "node-a/0")
    assert await placement.locate(code="TABLE") is None and await placement.locate(room_id="r1") is None
    assert await placement.claim("TABLE", "r2", "node-b/0") == ("r2", "node-b/0")
    await placement.forget("r1", "TABLE", "node-a/0")  # late, for the old room: the new one keeps the code
    assert await placement.by_code("TABLE") == ("r2", "node-b/0")


async def test_with_redis_gone_calls_fail_clearly_and_the_owner_keeps_its_shard_when_redis_returns(
        own_redis: OwnRedis) -> None:
    """Redis killed under a live owner: every directory call raises PlacementUnavailable (quickly, no
    hang), the owner says the directory is down but does not give the shard up; Redis restarted
    empty: the owner puts its lease back with the fence raised to its token (a claimant after it gets a
    later token, not a reused 1) and registers its rooms again, so their codes are not claimed twice."""
    prefix = unique_prefix()
    lost: list[str] = []
    tokens: list[int] = []

    async def record(token: int, epoch: str) -> None:
        tokens.append(token)

    async with own_redis.client() as client:
        placement = Placement(client, prefix, lease_ms=300)
        for _ in range(3):  # tokens 1-3 taken earlier: a fence that restarted at 0 would show
            await placement.acquire("node-a/0", "ws://127.0.0.1:7001/", takeover=True)
        owner = ShardOwner(placement, "node-a/0", "ws://127.0.0.1:7001/", floor=0,
                           rooms=lambda: [("r1", "TABLE-1"), ("r2", "TABLE-2")],
                           record=record, on_lost=lost.append)
        await owner.start()
        assert tokens == [4] and owner.directory_up
        assert await owner.claim("TABLE-1", "r9") == ("r1", "node-a/0")  # registered at the start
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            own_redis.stop()
            with trio.fail_after(5):
                with pytest.raises(PlacementUnavailable, match="unavailable"):
                    await placement.locate(code="X")
                while owner.directory_up:
                    await trio.sleep(0.05)
            with pytest.raises(PlacementUnavailable):
                await owner.claim("TABLE-3", "r3")  # refused at once, without a round trip
            await trio.sleep(0.4)  # past a lease period with Redis down: the owner goes on trying
            assert not lost
            own_redis.start()
            with trio.fail_after(5):
                while not owner.directory_up:
                    await trio.sleep(0.05)
            assert await placement.owner("node-a/0") == owner.lease
            with pytest.raises(Recovering):  # for a lease period: its owners come back meanwhile
                await owner.claim("TABLE-2", "r8")
            await trio.sleep(0.35)
            assert await owner.claim("TABLE-2", "r8") == ("r2", "node-a/0")  # registered again, not made twice
            with pytest.raises(ShardHeld):
                await placement.acquire("node-a/0", "ws://127.0.0.1:9999/")
            replacement = await placement.acquire("node-a/0", "ws://127.0.0.1:7001/", takeover=True)
            assert replacement.token == 5
            with trio.fail_after(5):
                while not lost:
                    await trio.sleep(0.05)
            assert owner.lost is not None and len(lost) == 1
            with pytest.raises(PlacementUnavailable, match="no longer owns"):
                await owner.claim("TABLE-4", "r4")
            nursery.cancel_scope.cancel()


def test_a_lease_value_round_trips() -> None:
    lease = Lease("node-a/0", 7, "ws://[::1]:7001/")
    assert Lease._parse("node-a/0", lease._value()) == lease


def test_a_lease_period_too_short_to_renew_in_is_refused() -> None:
    with pytest.raises(ValueError):
        Placement(None, lease_ms=50)  # type: ignore[arg-type]


async def test_registering_rooms_again_reports_the_codes_another_room_claimed_meanwhile(placement: Placement) -> None:
    """After Redis lost its keys, a claim from another node may beat the owner's re-registration of a
    code: that room keeps the code; the owner is told, and its room stays reachable by id."""
    assert await placement.claim("SEAT-1", "r-other", "node-b/0") == ("r-other", "node-b/0")
    taken = await placement.register("node-a/0", [("r1", "SEAT-1"), ("r2", "SEAT-2")])
    assert taken == [("r1", "SEAT-1")]
    assert await placement.by_code("SEAT-2") == ("r2", "node-a/0")
    assert await placement.by_id("r1") == ("node-a/0", "SEAT-1")
    assert await placement.register("node-a/0", [("r2", "SEAT-2")]) == []  # idempotent


async def test_a_directory_that_lost_its_keys_recovers_before_anything_is_claimed(own_redis: OwnRedis) -> None:
    """Redis restarted empty: the first process that knew the directory's epoch finds none and starts a
    recovery period, for every process: nothing is claimed or found meanwhile, while owners register
    their rooms again (else a room whose owner had not yet would be made twice). A new cluster (no
    process knew an epoch) claims at once."""
    prefix = unique_prefix()
    async with own_redis.client() as client:
        fresh = Placement(client, prefix, lease_ms=300)
        assert await fresh.claim("ARENA", "r1", "s1") == ("r1", "s1")  # a new cluster: no wait
        known = fresh.epoch
        assert known
    own_redis.stop()
    own_redis.start()
    async with own_redis.client() as client:
        old = Placement(client, prefix, lease_ms=300, epoch=known)  # its store saw the epoch
        with pytest.raises(Recovering):
            await old.claim("ARENA", "r2", "s2")
        newcomer = Placement(client, prefix, lease_ms=300)  # never saw this cluster: waits all the same
        with pytest.raises(Recovering):
            await newcomer.claim("ARENA", "r3", "s3")
        with pytest.raises(Recovering):
            await newcomer.by_code("ARENA")
        assert await old.register("s1", [("r1", "ARENA")]) == []  # the owner comes back meanwhile
        await trio.sleep(0.35)
        assert await newcomer.claim("ARENA", "r3", "s3") == ("r1", "s1")
        assert old.epoch == newcomer.epoch != known
