"""The turn scheduler (engine/scheduler.py): the turns of one pass share one commit, nothing is released
before its commit, and a crash or a failed commit restarts only the rooms it concerns.

The property test drives several tasks sending in-process calls to a few rooms while the store's
commits take a drawn number of scheduler passes and some of them fail: every call is answered once,
an acknowledged write is in the store when its answer arrives, and no two acknowledged events of a
room share a seq (an output released for a turn whose commit failed would).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from unittest import mock

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.app import Engine
from roost.errors import RoomError
from roost.room import Call, RoomActor, RoomRuntime
from roost.state import RoomOptions
from roost.store import Write
from roost.store.memory import MemoryStore
from roost.testing import TestKeys, start_engine, test_config


class GatedStore(MemoryStore):
    """Every commit awaits (``commit_now`` refuses): it takes ``pauses[i]`` scheduler passes, or
    waits for ``gate`` when one is set, and fails when its index is in ``failing``."""

    def __init__(self, pauses: Sequence[int] = (0,), failing: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.pauses = list(pauses) or [0]
        self.failing = failing
        self.gate: trio.Event | None = None
        self.batches: list[list[Write]] = []
        self.began: list[float] = []
        """When each commit began (Trio clock)."""

    def commit_now(self, batch: Sequence[Write]) -> bool:
        return False

    async def commit(self, batch: Sequence[Write]) -> None:
        index = len(self.batches)
        self.batches.append(list(batch))
        self.began.append(trio.current_time())
        if self.gate is not None:
            await self.gate.wait()
        for _ in range(self.pauses[index % len(self.pauses)]):
            await trio.lowlevel.checkpoint()
        if index in self.failing:
            raise RuntimeError("the disk is gone")
        super().commit_now(batch)

    def stored_seq(self, room: str) -> int:
        record = self._rooms.get(room, {}).get("counters")
        return msgpack.unpackb(record)["seq"] if record is not None else 0


def publish(i: int) -> Call:
    """A call that broadcasts an event (a write) and answers with the event's seq."""
    def fn(actor: RoomActor) -> int:
        actor.publish("k", i)
        return actor.state.seq
    return Call(fn)


def peek() -> Call:
    """A call that writes nothing."""
    return Call(lambda actor: actor.state.seq)


def crash() -> Call:
    return Call(lambda actor: 1 / 0)


async def outcome(runtime: RoomRuntime, call: Call) -> Any:
    await runtime.inbox.send(call)
    try:
        return await call.wait()
    except RoomError as error:
        return error.code.value


async def engine_with(nursery: trio.Nursery, store: GatedStore, **overrides: Any) -> Engine:
    overrides.setdefault("commit_linger", 0.0)
    return await start_engine(nursery, test_config(TestKeys(), restart_intensity=10_000, **overrides), store=store)


async def test_the_turns_of_one_pass_share_one_commit(autojump_clock: trio.testing.MockClock,
                                                      nursery: trio.Nursery) -> None:
    store = GatedStore()
    engine = await engine_with(nursery, store)
    rooms = [await engine.router.create(RoomOptions()) for _ in range(5)]
    await trio.sleep(1)  # every room's first turn (its creation) committed
    before = len(store.batches)
    calls = [publish(i) for i in range(5)]
    for runtime, call in zip(rooms, calls):
        runtime.inbox.send_nowait(call)  # all queued in one step: one pass takes them
    assert [await call.wait() for call in calls] == [1] * 5
    assert len(store.batches) == before + 1
    assert {write.room for write in store.batches[-1]} == {runtime.room_id for runtime in rooms}


async def test_a_reply_waits_for_its_commit_but_a_turn_that_wrote_nothing_does_not(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store = GatedStore()
    engine = await engine_with(nursery, store)
    writer, reader = await engine.router.create(RoomOptions()), await engine.router.create(RoomOptions())
    await trio.sleep(1)
    store.gate = trio.Event()
    wrote, read = publish(0), peek()
    writer.inbox.send_nowait(wrote)
    reader.inbox.send_nowait(read)
    with trio.fail_after(5):
        assert await read.wait() == 0  # released in the same pass, before the held commit
    await trio.sleep(1)
    assert not wrote._done.is_set() and store.stored_seq(writer.room_id) == 0
    store.gate.set()
    assert await wrote.wait() == 1 and store.stored_seq(writer.room_id) == 1


async def test_a_turn_that_raises_restarts_its_room_only(autojump_clock: trio.testing.MockClock,
                                                         nursery: trio.Nursery) -> None:
    store = GatedStore()
    engine = await engine_with(nursery, store)
    bad, good = await engine.router.create(RoomOptions()), await engine.router.create(RoomOptions())
    await trio.sleep(1)
    boom, fine = crash(), publish(0)
    bad.inbox.send_nowait(boom)
    good.inbox.send_nowait(fine)
    with pytest.raises(RoomError) as refused:
        await boom.wait()
    assert refused.value.code.value == "internal"
    assert await fine.wait() == 1
    assert engine.statistics()["restarts"] == 1
    assert await outcome(bad, publish(1)) == 1  # rebuilt from its last commit, serving again


async def test_a_failed_commit_restarts_every_room_of_its_pass_and_sends_nothing(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store = GatedStore()
    engine = await engine_with(nursery, store)
    rooms = [await engine.router.create(RoomOptions()) for _ in range(3)]
    await trio.sleep(1)
    store.failing = frozenset({len(store.batches)})
    calls = [publish(i) for i in range(3)]
    for runtime, call in zip(rooms, calls):
        runtime.inbox.send_nowait(call)
    for call in calls:
        with pytest.raises(RoomError):
            await call.wait()
    assert engine.statistics()["restarts"] == 3
    for runtime in rooms:  # back at the last commit: the failed turn's seq is used again
        assert await outcome(runtime, publish(9)) == 1 and store.stored_seq(runtime.room_id) == 1


KINDS = st.sampled_from(["publish", "publish", "peek", "crash"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=st.lists(st.lists(st.tuples(st.integers(0, 2), KINDS), max_size=12), min_size=1, max_size=3),
       pauses=st.lists(st.integers(0, 3), min_size=1, max_size=6),
       failing=st.frozensets(st.integers(0, 30), max_size=4))
def test_every_call_is_answered_once_and_only_after_its_commit(
        plans: list[list[tuple[int, str]]], pauses: list[int], failing: frozenset[int]) -> None:
    async def main() -> None:
        store = GatedStore(pauses)
        async with trio.open_nursery() as nursery:
            engine = await engine_with(nursery, store)
            rooms = [await engine.router.create(RoomOptions()) for _ in range(3)]
            await trio.sleep(1)  # created (a room whose creation is not committed cannot come back)
            store.failing = frozenset(len(store.batches) + i for i in failing)
            acked: dict[str, list[int]] = {runtime.room_id: [] for runtime in rooms}

            async def run(plan: list[tuple[int, str]]) -> None:
                last: dict[str, int] = {}
                for index, kind in plan:
                    runtime = rooms[index]
                    call = {"publish": lambda: publish(0), "peek": peek, "crash": crash}[kind]()
                    result = await outcome(runtime, call)
                    if kind == "crash":
                        assert result == "internal"
                    elif kind == "publish" and result != "internal":
                        room = runtime.room_id
                        # acknowledged: durable at the moment the answer arrives
                        assert store.stored_seq(room) >= result
                        assert result > last.get(room, 0)
                        last[room] = result
                        acked[room].append(result)

            with trio.fail_after(60):
                async with trio.open_nursery() as tasks:
                    for plan in plans:
                        tasks.start_soon(run, plan)
            store.failing = frozenset()
            for runtime in rooms:
                seqs = acked[runtime.room_id]
                assert len(seqs) == len(set(seqs)), "two acknowledged events share a seq"
                # what the room serves is what is stored (a peek in a turn whose commit failed is
                # answered internal like any request of it: the next one sees the reloaded room)
                seen = await outcome(runtime, peek())
                if seen == "internal":
                    seen = await outcome(runtime, peek())
                assert seen == store.stored_seq(runtime.room_id) >= max(seqs, default=0)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_pass_takes_at_most_pass_max_rooms_and_yields_before_the_next(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    """More rooms ready than one pass takes, on a store that commits at once (no await in the pass):
    two passes, and the scheduler checkpoints between them, so the reader and every other task run."""
    from roost.scheduler import _PASS_MAX

    engine = await start_engine(nursery, test_config(TestKeys()), store=MemoryStore())
    rooms = [await engine.router.create(RoomOptions()) for _ in range(_PASS_MAX + 10)]
    await trio.sleep(1)
    assert engine._supervisor is not None
    scheduler = engine._supervisor.scheduler
    passes = scheduler.passes
    yielded_after: list[int] = []  # the scheduler's own checkpoints, by passes run so far
    checkpoint = trio.lowlevel.checkpoint

    async def counted() -> None:
        if trio.lowlevel.current_task().name.endswith("TurnScheduler.run"):
            yielded_after.append(scheduler.passes - passes)
        await checkpoint()

    calls = [peek() for _ in rooms]
    with mock.patch.object(trio.lowlevel, "checkpoint", counted):
        for runtime, call in zip(rooms, calls):
            runtime.inbox.send_nowait(call)
        for call in calls:
            await call.wait()
    assert scheduler.passes - passes == 2  # _PASS_MAX rooms, then the other ten
    assert 1 in yielded_after  # between the first pass and the second


async def test_under_load_a_commit_lingers_for_more_turns_and_a_lone_one_does_not(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store = GatedStore()
    engine = await engine_with(nursery, store, commit_linger=0.01)
    rooms = [await engine.router.create(RoomOptions()) for _ in range(3)]
    await trio.sleep(1)  # the creations committed long ago: the next commit has nothing to wait for
    first = len(store.batches)
    lone = publish(0)
    rooms[0].inbox.send_nowait(lone)
    await lone.wait()
    assert store.began[first] == trio.current_time()  # began at once: no wait at a low rate
    # A commit of one room's turn is not load: the next one, right behind it, does not wait either.
    alone = publish(1)
    rooms[1].inbox.send_nowait(alone)
    await alone.wait()
    assert store.began[first + 1] == trio.current_time()
    # Load: a commit of two rooms' turns. The turns made within the linger after it share the next
    # commit, which begins a linger after that one began.
    both = [publish(2), publish(3)]
    rooms[0].inbox.send_nowait(both[0])
    rooms[1].inbox.send_nowait(both[1])
    for call in both:
        await call.wait()
    calls = [publish(4), publish(5)]
    rooms[1].inbox.send_nowait(calls[0])
    await trio.sleep(0.004)
    rooms[2].inbox.send_nowait(calls[1])
    assert [await call.wait() for call in calls] == [3, 1]
    assert len(store.batches) == first + 4
    assert store.began[first + 3] == pytest.approx(store.began[first + 2] + 0.01)
    assert {write.room for write in store.batches[first + 3]} == {rooms[1].room_id, rooms[2].room_id}
