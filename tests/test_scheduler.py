"""The turn scheduler (engine/scheduler.py): the turns of one pass share one commit, nothing is released
before its commit, and a crash or a failed commit restarts only the rooms it concerns.

The property test drives several tasks sending in-process calls to a few rooms while the store's
commits take a drawn number of scheduler passes and some of them fail: every call is answered once,
an acknowledged write is in the store when its answer arrives, and no two acknowledged events of a
room share a seq (an output released for a turn whose commit failed would).

The timer tests drive the scheduler itself with :class:`Alarm` actors (a room actor's interface to
the scheduler, with timers set by the test) on MockClock: the run loop parks with no cancel scope,
so a timer fires only because the timer task woke on time (one armed earlier than the one it sleeps
toward, or later); a linger lasts its whole length whatever comes due meanwhile; the timer task ends
with the run loop, whether it stops or is cancelled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost import Config
from roost.app import Engine
from roost.errors import RoomError
from roost.metrics import RoomStats
from roost.protocol.frames import JoinOrCreate, PresenceDiff, PresenceStatus
from roost.room import Call, RoomActor, RoomRuntime
from roost.scheduler import TurnScheduler
from roost.state import RoomOptions, stored_position
from roost.store import Write
from roost.store.memory import MemoryStore
from roost.testing import Connect, TestKeys, start_engine, test_config
from tests.wire import raw_peer


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

    def commit_now(self, batch: Sequence[Write], *, busy: bool = False) -> bool:
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
        return stored_position(self._rooms.get(room, {}))[0]


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


@pytest.mark.parametrize("inline", [False, True], ids=["loop", "inline-pass"])
async def test_a_turn_that_raises_restarts_its_room_only(autojump_clock: trio.testing.MockClock,
                                                         nursery: trio.Nursery, inline: bool) -> None:
    """In the run loop's pass, and in one run inline by ``release`` (nothing may escape into its
    caller, the reader, whose other connections would pay)."""
    store = InlineStore() if inline else GatedStore()
    engine = await engine_with(nursery, store)
    bad, good = await engine.router.create(RoomOptions()), await engine.router.create(RoomOptions())
    await trio.sleep(1)
    passes = engine.router.passes
    boom, fine = crash(), publish(0)
    if inline:  # a pass of one room runs inside release()
        passes.hold()
        bad.inbox.send_nowait(boom)
        inline_before = passes.inline_passes
        passes.release()
        assert passes.inline_passes == inline_before + 1 and boom._done.is_set()
    else:
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


# -- timers and the linger (the timer task) ------------------------------------------------------------


class _AlarmRuntime:
    """The part of a RoomRuntime the scheduler reads: never closed nor stopping (unless the test says),
    nothing queued but what :meth:`Alarm.send` counts."""

    def __init__(self, name: str) -> None:
        self.room_id = name
        self.closed = False
        self.stopping = False
        self.control: tuple[()] = ()
        self.pending = 0
        self._owner: object = None

    def attach_actor(self, actor: object) -> None:
        self._owner = actor

    def inbox_owner(self) -> object:
        return self._owner

    def queued(self) -> int:
        return self.pending

    def sleep(self, deadline: float) -> None:
        raise AssertionError("an Alarm never hibernates")


class Alarm:
    """A stand-in for a RoomActor: ``deadlines`` are its timers (the test sets them), each turn
    records when it ran and which timers it found due; a command (:meth:`send`) makes its turn write."""

    def __init__(self, name: str, deadlines: Sequence[float] = ()) -> None:
        self.runtime = _AlarmRuntime(name)
        self.deadlines = sorted(deadlines)
        self.scheduler: TurnScheduler | None = None
        self.queued = False
        self.registered = False
        self.timer_at: float | None = None
        self.turns: list[float] = []
        """The scheduler's ``now`` of each turn."""
        self.fired: list[tuple[float, float]] = []
        """(deadline, when its turn ran) of every timer found due."""

    def poke(self) -> None:
        self.queued = True
        assert self.scheduler is not None
        self.scheduler.ready(self)  # type: ignore[arg-type]

    def send(self) -> None:
        self.runtime.pending += 1
        if not self.queued:
            self.poke()

    def arm(self, deadline: float) -> None:
        """A command that arms a timer: its turn runs in the next pass, then the scheduler reads it."""
        self.deadlines = sorted([*self.deadlines, deadline])
        if not self.queued:
            self.poke()

    def step(self, now: float) -> list[Write]:
        self.queued = False
        self.turns.append(now)
        while self.deadlines and self.deadlines[0] <= now:
            self.fired.append((self.deadlines.pop(0), now))
        pending, self.runtime.pending = self.runtime.pending, 0
        return [Write(self.runtime.room_id, "n", str(len(self.turns)).encode())] if pending else []

    def after_commit(self) -> None:
        pass

    def next_deadline(self) -> float:
        return self.deadlines[0] if self.deadlines else math.inf

    def may_sleep(self, deadline: float) -> bool:
        return False


def scheduler_tasks(nursery: trio.Nursery) -> list[str]:
    """The names of every task in ``nursery``, and in their nurseries, depth first."""
    names = []
    for task in nursery.child_tasks:
        names.append(task.name.rpartition(".")[2])
        for inner in task.child_nurseries:
            names += scheduler_tasks(inner)
    return sorted(names)


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run (no clock time passes) until ``condition`` holds."""
    for _ in range(1000):
        if condition():
            return
        await trio.sleep(0)
    raise AssertionError("still not, after 1000 checkpoints")


def scheduler_with(store: MemoryStore | None = None, linger: float = 0.0) -> tuple[TurnScheduler, list[str]]:
    outcomes: list[str] = []
    scheduler = TurnScheduler(store if store is not None else MemoryStore(), RoomStats(),
                              lambda actor, outcome: outcomes.append(f"{actor.runtime.room_id} {outcome}"),
                              linger=linger)
    return scheduler, outcomes


async def test_a_timer_fires_on_time_whether_armed_before_or_after_the_one_the_timer_sleeps_toward(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    scheduler, _ = scheduler_with()
    nursery.start_soon(scheduler.run)
    t0 = trio.current_time()
    late, early, later = Alarm("late", [t0 + 10]), Alarm("early"), Alarm("later")
    for alarm in (late, early, later):
        scheduler.register(alarm)  # type: ignore[arg-type]
    await trio.sleep(1)  # every first turn ran; parked, the timer task sleeping toward t0 + 10
    passes = scheduler.passes
    early.arm(t0 + 3)  # earlier than the timer's sleep: it must wake sooner
    later.arm(t0 + 20)  # later: it must still wake for it after t0 + 10
    await trio.sleep(1)
    assert scheduler.passes == passes + 1  # the arming pass; no timer is due yet and nothing woke the loop
    await trio.sleep(25)
    assert early.fired == [(pytest.approx(t0 + 3), pytest.approx(t0 + 3))]
    assert late.fired == [(pytest.approx(t0 + 10), pytest.approx(t0 + 10))]
    assert later.fired == [(pytest.approx(t0 + 20), pytest.approx(t0 + 20))]
    assert scheduler.passes == passes + 4  # one pass per timer: nothing woke the loop in between


async def test_a_timer_that_moved_later_wakes_the_loop_only_when_due(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    """The room's earliest timer moves later (typing refreshed): the heap's first entry is stale and the
    timer task sleeps toward it; when it wakes it re-sleeps toward the live one, the loop stays parked."""
    scheduler, _ = scheduler_with()
    nursery.start_soon(scheduler.run)
    t0 = trio.current_time()
    alarm = Alarm("typing", [t0 + 5])
    scheduler.register(alarm)  # type: ignore[arg-type]
    await trio.sleep(1)
    alarm.deadlines = []
    alarm.arm(t0 + 8)
    await trio.sleep(1)
    turns = len(alarm.turns)
    await trio.sleep(5)  # past the stale t0 + 5
    assert len(alarm.turns) == turns
    await trio.sleep(5)
    assert alarm.fired == [(pytest.approx(t0 + 8), pytest.approx(t0 + 8))]


async def test_a_linger_lasts_its_length_whatever_comes_due_meanwhile(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store = GatedStore()
    scheduler, _ = scheduler_with(store, linger=0.01)
    nursery.start_soon(scheduler.run)
    t0 = trio.current_time()
    a, b, c = Alarm("a", [t0 + 100]), Alarm("b"), Alarm("c")  # a far timer: the timer task sleeps toward it
    for alarm in (a, b, c):
        scheduler.register(alarm)  # type: ignore[arg-type]
    await trio.sleep(1)
    for _ in range(2):
        # A commit of two rooms' turns: the next pass begins a linger after it began, and takes what
        # arrived meanwhile (a poke does not end the linger, nor does a timer that falls due in it).
        commits = len(store.batches)
        a.send()
        b.send()
        await until(lambda: len(store.batches) > commits)
        began = store.began[-1]
        await trio.sleep(0.001)
        a.send()
        c.arm(trio.current_time() + 0.003)
        await trio.sleep(0.004)  # c's timer is due, in the linger
        b.send()
        await trio.sleep(1)
        assert store.began[-1] == pytest.approx(began + 0.01)
        assert {write.room for write in store.batches[-1]} == {"a", "b"}
        assert c.fired[-1][1] == pytest.approx(began + 0.01)  # its turn ran in the lingered pass
    assert a.fired == [] and len(c.fired) == 2


async def test_a_stopped_scheduler_ends_its_timer_task(autojump_clock: trio.testing.MockClock) -> None:
    scheduler, outcomes = scheduler_with()
    alarm = Alarm("a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run)
        t0 = trio.current_time()
        alarm.deadlines = [t0 + 100]
        scheduler.register(alarm)  # type: ignore[arg-type]
        await trio.sleep(1)
        assert scheduler_tasks(nursery) == ["_timer", "run"]
        alarm.runtime.stopping = True  # its room was told to stop: it leaves after its next turn
        alarm.poke()
        scheduler.stop()
        with trio.fail_after(1):
            while nursery.child_tasks:
                await trio.sleep(0.01)
    assert trio.current_time() - t0 < 2  # ended without waiting for the timer at t0 + 100
    assert outcomes == ["a stopped"]
    assert scheduler._wait is None


@pytest.mark.parametrize("where", ["parked", "lingering", "committing"])
async def test_a_cancelled_scheduler_leaves_no_task_behind(autojump_clock: trio.testing.MockClock, where: str) -> None:
    store = GatedStore()
    scheduler, _ = scheduler_with(store, linger=0.01)
    a, b = Alarm("a"), Alarm("b")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.run)
            a.deadlines = [trio.current_time() + 100]
            scheduler.register(a)  # type: ignore[arg-type]
            scheduler.register(b)  # type: ignore[arg-type]
            await trio.sleep(1)
            if where == "lingering":
                a.send()
                b.send()
                await until(lambda: len(store.batches) == 1)  # one commit of two rooms' turns
                a.send()
                await trio.sleep(0.005)
                assert scheduler._lingering is not None
            elif where == "committing":
                store.gate = trio.Event()
                a.send()
                await trio.sleep(1)
                assert store.batches[-1][0].room == "a" and a.runtime.pending == 0
            else:
                assert scheduler._parked is not None
            assert scheduler_tasks(nursery) == ["_timer", "run"]
            nursery.cancel_scope.cancel()
    assert not nursery.child_tasks
    assert scheduler._parked is None and scheduler._lingering is None and scheduler._wait is None
    outcomes: list[str] = []
    scheduler._on_done = lambda actor, outcome: outcomes.append(outcome)
    scheduler.register(Alarm("late"))  # type: ignore[arg-type]  # after the end: stopped at once
    assert outcomes == ["stopped"]


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    return test_config(roost_keys, reconnect_grace=30.0)


async def _next_update(client: object, user: str) -> object:
    while True:
        diff = await client.next_event(PresenceDiff)  # type: ignore[attr-defined]
        for member in diff.join + diff.update:
            if member.user == user:
                return member
        if user in diff.leave:
            return None


async def test_typing_expires_on_time_while_another_rooms_member_is_in_grace(
        autojump_clock: trio.testing.MockClock, roost_connect: Connect, roost_engine: Engine,
        roost_keys: TestKeys, nursery: trio.Nursery) -> None:
    """Over the engine: room 1's reconnect grace (30 s) is the timer the timer task sleeps toward when
    room 2's typing timer (5 s) is armed; both expire on time."""
    ann = await roost_connect("ann", memory=True)
    carl = await roost_connect("carl", memory=True)
    first = await ann.create()
    bob = await raw_peer(nursery, stream=roost_engine.connect_memory())
    await bob.hello(roost_keys.token("bob"), hb=300_000)
    await bob.send(JoinOrCreate(id=1, code=first.code))
    assert (await _next_update(ann, "bob")).status is PresenceStatus.ONLINE  # type: ignore[attr-defined]
    await bob.ws.aclose()
    assert (await _next_update(ann, "bob")).status is PresenceStatus.OFFLINE  # type: ignore[attr-defined]
    dropped = trio.current_time()
    second = await carl.create()
    await ann.join(room=second.room)
    await trio.sleep(1)
    typed = trio.current_time()
    await carl.typing(second.room, True)
    assert (await _next_update(ann, "carl")).typing is True  # type: ignore[attr-defined]
    assert (await _next_update(ann, "carl")).typing is False  # type: ignore[attr-defined]
    assert trio.current_time() - typed == pytest.approx(5.0)
    assert await _next_update(ann, "bob") is None  # left when its grace ran out
    assert trio.current_time() - dropped == pytest.approx(30.0)


class InlineStore(GatedStore):
    """Commits a batch at once when the caller is not ``busy`` (as the LMDB store does while its syncs
    are quick), else awaits like GatedStore; records every offer."""

    def __init__(self) -> None:
        super().__init__()
        self.offers: list[bool] = []

    def commit_now(self, batch: Sequence[Write], *, busy: bool = False) -> bool:
        self.offers.append(busy)
        if busy or self.gate is not None:
            return False
        self.batches.append(list(batch))
        return MemoryStore.commit_now(self, batch)


async def inline_engine(nursery: trio.Nursery, rooms: int) -> tuple[InlineStore, Engine, TurnScheduler, list[RoomRuntime]]:
    """An engine on an :class:`InlineStore` with ``rooms`` rooms created and committed."""
    store = InlineStore()
    engine = await engine_with(nursery, store)
    made = [await engine.router.create(RoomOptions()) for _ in range(rooms)]
    await trio.sleep(1)
    return store, engine, engine.router.passes, made


async def test_a_pass_made_ready_under_hold_runs_in_the_releasers_step(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    """``hold``/``release`` (the socket reader's pass): the rooms it readies run in one pass when it
    releases; with the loop parked and one room ready the pass, its commit and its replies happen
    inside ``release`` itself (no task step); with several rooms ready the loop is woken and runs
    their pass (its commit offered as ``busy``, declined, awaited: one batch for both)."""
    store, engine, passes, (one, two) = await inline_engine(nursery, 2)
    before, inline = len(store.batches), passes.inline_passes
    passes.hold()
    lone = publish(1)
    one.inbox.send_nowait(lone)
    assert not lone._done.is_set()
    passes.release()  # no checkpoint in between: all of it ran here
    assert lone._done.is_set() and passes.inline_passes == inline + 1 and len(store.batches) == before + 1
    assert store.offers[-1] is False and store.stored_seq(one.room_id) == 1
    assert await lone.wait() == 1

    # two rooms still awake (a new room sleeps only after its first request's turn)
    three, four = await engine.router.create(RoomOptions()), await engine.router.create(RoomOptions())
    await trio.sleep(1)
    before = len(store.batches)
    passes.hold()
    both = [publish(2), publish(3)]
    three.inbox.send_nowait(both[0])
    four.inbox.send_nowait(both[1])
    passes.release()
    assert not any(call._done.is_set() for call in both) and passes.inline_passes == inline + 1  # the loop's
    assert [await call.wait() for call in both] == [1, 1]
    assert store.offers[-1] is True
    assert len(store.batches) == before + 1 and {w.room for w in store.batches[-1]} == {three.room_id, four.room_id}

    # a lone pass whose commit the store declines (here: a gate, as for a slow disk) is handed to the loop
    five = await engine.router.create(RoomOptions())
    await trio.sleep(1)
    store.gate = trio.Event()
    passes.hold()
    slow = publish(9)
    five.inbox.send_nowait(slow)
    passes.release()
    assert passes.inline_passes == inline + 2 and not slow._done.is_set()
    store.gate.set()
    store.gate = None
    assert await slow.wait() == 1 and store.stored_seq(five.room_id) == 1


async def test_a_release_while_the_loop_commits_leaves_the_rooms_to_it(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store, engine, passes, (one, two) = await inline_engine(nursery, 2)
    store.gate = trio.Event()
    first = publish(1)
    one.inbox.send_nowait(first)
    await trio.sleep(1)  # the loop's commit of it waits for the gate
    inline = passes.inline_passes
    passes.hold()
    second = publish(2)
    two.inbox.send_nowait(second)
    passes.release()
    assert passes.inline_passes == inline and not second._done.is_set()
    store.gate.set()
    store.gate = None
    assert await first.wait() == 1 and await second.wait() == 1


@pytest.mark.parametrize("writes", [False, True], ids=["reads", "writes"])
async def test_an_inline_pass_whose_room_pokes_itself_again_wakes_the_loop_once(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, writes: bool) -> None:
    """A room with more commands queued than one turn takes (``_TURN_MAX``) pokes itself again
    during the inline pass: the loop, claimed before the pass, is woken once (twice made Trio assert
    in the reader's step and took the gateway down: found by a hostile review)."""
    store, engine, passes, (room,) = await inline_engine(nursery, 1)
    passes.hold()
    calls = [publish(i) if writes else peek() for i in range(130)]  # more than one turn takes (128)
    for call in calls:
        room.inbox.send_nowait(call)
    passes.release()  # must not raise into the caller (the reader's step)
    assert [await call.wait() for call in calls] == (list(range(1, 131)) if writes else [0] * 130)
