"""The turn scheduler: one task runs every awake room's turns, a pass at a time, one commit per pass.

Each room used to be a task of its own that awaited its inbox, ran a turn and awaited its own commit.
At the rates where rooms see one message at a time (inbound-path.md §1.3 and §5.6) that was paid per
message: a task wake to hand the command over (~53 k instructions), a commit window and a follower's
wake to get the commit back (~80 k more), and at low rates a transaction and its two fsyncs of its own
for every turn. Here one task does the same work for every room:

1. it parks until some room is *ready*: its inbox or control queue got something (the put pokes
   the actor, which queues itself once), or its earliest timer came due (the timer task pokes it);
2. a *pass* takes the ready list as it stands, and runs each room's turn (``RoomActor.step``):
   synchronously, one room after another, so each room still has exactly one writer;
3. it commits the writes of every turn of the pass as **one** store batch (one transaction, one
   fsync pair with LMDB; a synchronous apply with the memory store), and only then releases every
   turn's replies and events (``after_commit``): nothing is acknowledged before it is durable;
4. a room whose turn wrote nothing is released before the commit: its output depends only on
   state already committed (an earlier pass's commit completed before this pass began);
5. under load, a pass begins no sooner than ``linger`` (``Config.commit_linger``, 1 ms) after the
   last commit began, so the turns of everything that arrived meanwhile share the next commit.
   *Under load* means the last commit carried the turns of ``_LINGER_ROOMS`` rooms or more: a
   commit then costs an fsync, a thread hop and two wakes of this loop for a handful of messages
   (measured at 6 k msgs/s in one-member rooms, before the store's log: 660 commits/s, half the
   server's CPU in the kernel). The trap: lingering whenever the last commit is recent taxes moderate rates with the
   whole linger (1,000 msgs/s in 100 rooms of 5: p50 0.54 -> 1.9 ms), where each commit carries one
   room's turn anyway and a wait gathers little. A store that applies commits at once
   (``commit_now``) never lingers;
6. a pass with one room's turns offers its commit to the store's ``commit_now`` first: the LMDB
   store then writes and syncs its log record on this thread, when its syncs are quick (a lone
   message: one task step fewer, no thread hand-off; ``bench inbound --rooms 1 --members 5
   --senders 1``: 558 k -> 446 k instructions). A pass of several rooms' turns is ``busy``: the
   store declines, the commit goes through its writer thread while the loop goes on, and the next
   pass lingers (inline commits of busy passes made 10x10@40 cost 1.6x the CPU per delivery).

Rooms that receive more while a pass commits are ready again at once and run in the next pass: a
busy engine commits rarely and in large groups, an idle one pays one wake and one commit for a lone
message, never a task per room. A turn that raises, or whose commit fails, hands its room to the
supervisor (``on_done(actor, "crashed")``), which rebuilds it from the last commit; other rooms of
the same pass are not affected by a turn that raised (only by a commit that failed, which none of
them got). Everything asynchronous about a room (its first load, a wake from hibernation, a restart,
disposing a closed room) stays with the supervisor, which registers the actor here when it is ready.

Timers (each room's earliest, and the linger) are kept by a second task, :meth:`_timer`, which
sleeps in one cancel scope until the first of them and pokes the rooms that are due (the run loop
itself, parked or lingering, waits with no cancel scope at all). The trap it avoids: a park inside
``trio.move_on_at(deadline)`` builds, registers and tears down a cancel scope (and its deadline in
Trio's heap) on every park, i.e. on every lone message of a room that has any timer (a member in
its reconnect grace, someone typing, a receipt window): ~60 k instructions of ~560 k measured
(``bench inbound --grace``). The timer task's scope lives until its deadline comes: a message
whose room keeps its earliest timer costs it nothing, and an earlier timer only moves the scope's
deadline (the reader's timer does the same, engine/reader.py).

The trap: a turn must never await. Everything a turn does is synchronous (the handlers of
engine/room.py); a turn that needs I/O returns a step to its caller or posts work elsewhere (the
inbox service's notices), so the scheduler never holds other rooms behind one room's wait.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable

import trio

from .metrics import RoomStats
from .room import RoomActor
from .store import Store, Write

__all__ = ["TurnScheduler"]

log = logging.getLogger("roost.supervisor")

_LINGER_ROOMS = 2
"""A commit carrying the turns of this many rooms or more makes the next pass linger (see 5. above)."""

_PASS_MAX = 512
"""Rooms whose turns one pass runs at most: the rest stay ready, in order, for the next pass. Bounds
the time from a pass's first turn to its commit (a broadcast to every room, or the first pass after
a restart, readies thousands at once), and lets the reader run between passes."""


class TurnScheduler:
    """Runs the turns of every registered room actor (see the module docstring)."""

    def __init__(self, store: Store, stats: RoomStats, on_done: Callable[[RoomActor, str], None],
                 *, linger: float = 0.0) -> None:
        self._store = store
        self._linger = linger
        self._last_commit = -math.inf
        """When the last awaited commit began (Trio clock), or ``-inf`` when it carried too few rooms'
        turns for the next pass to linger."""
        self._stats = stats
        self._on_done = on_done
        """Told when an actor leaves the scheduler: ``asleep``, ``closed``, ``stopped`` or ``crashed``
        (the supervisor takes it from there; for ``crashed`` it is called inside the ``except``)."""
        self._ready: list[RoomActor] = []
        self._timers: list[tuple[float, int, RoomActor]] = []
        """(deadline, tie-breaker, actor): each registered actor's earliest timer; an entry whose
        actor's ``timer_at`` differs is stale (the actor ran since, or left) and is dropped."""
        self._seq = 0
        self._parked: trio.lowlevel.Task | None = None
        """The run loop, while it waits for a poke (woken by :meth:`ready`, :meth:`stop` and timers)."""
        self._lingering: trio.lowlevel.Task | None = None
        """The run loop, while it lingers until ``_linger_until`` (woken by the timer task only)."""
        self._linger_until = -math.inf
        self._wait: trio.CancelScope | None = None
        """The timer task's sleep, while it sleeps: its deadline is never later than the first live
        timer nor the linger (:meth:`_wake_by` moves it earlier)."""
        self.actors = 0
        """Actors registered now (awake rooms)."""
        self.passes = 0
        """Passes run (a pass: the turns of every room ready at its start, and one commit)."""
        self._stopping = False
        self._ended = False
        self._holding = 0
        """Callers between :meth:`hold` and :meth:`release`: pokes meanwhile only queue the room."""
        self._handed: tuple[list[Write], list[RoomActor]] | None = None
        """A pass run inline (:meth:`release`) whose commit must be awaited: the run loop commits it
        and releases its turns before it runs the next pass."""
        self.inline_passes = 0
        """Passes run by :meth:`release` in its caller's step (for tests and benchmarks)."""

    # -- what the supervisor and the actors call ---------------------------------------------------

    def register(self, actor: RoomActor) -> None:
        """Run ``actor``'s turns from now on; its first turn (its start) runs in the next pass.
        After the scheduler ended (engine shutdown), the room is stopped instead: everything queued
        is refused, as by an actor told to stop."""
        if self._ended:
            self._on_done(actor, "stopped")
            return
        actor.scheduler = self
        actor.registered = True
        actor.runtime.attach_actor(actor)
        self.actors += 1
        actor.poke()

    def ready(self, actor: RoomActor) -> None:
        """``actor`` has something to do (``RoomActor.poke``): run it in the next pass."""
        self._ready.append(actor)
        task = self._parked
        if task is not None and not self._holding:
            self._parked = None
            trio.lowlevel.reschedule(task)

    def hold(self) -> None:
        """Until :meth:`release`, a poke only queues its room: the caller (the socket reader, around
        one pass over every ready socket) is about to make more rooms ready."""
        self._holding += 1

    def release(self) -> None:
        """End a :meth:`hold`. If the run loop is parked, run the pass of the rooms made ready right
        here, in the caller's task step, instead of waking the loop for it.

        Why: the loop's wake was a task step of its own for every lone message (a reschedule, a run
        queue pass, the coroutine resumed through its awaits): with the store's inline commit
        (``Store.commit_now``) a lone message is now read, turned, committed and flushed in the
        reader's one step. Measured: ``bench inbound --rooms 1 --members 5 --senders 1 --layers``.
        Only a pass of one room runs here. With several rooms ready the loop is woken as before: it
        runs in Trio's next batch, by which time the reader may have read more sockets (measured,
        ``bench inbound --shapes 200x1,10x10 --layers``: inline passes of every reader pass made
        passes half the size, +4-5 % instructions per message). The loop is also woken when the pass
        must linger (under load), when its commit must be awaited (the store declined: a slow disk,
        a group under way; the loop commits it, see ``_handed``), and when rooms are left ready
        (made ready by the pass itself). The traps: the loop is claimed (``_parked`` cleared) before
        the pass runs, or a poke the pass makes (a room with more than ``_TURN_MAX`` commands queued
        pokes itself again) would reschedule it, and the wake after the pass would reschedule it a
        second time (Trio asserts, and the reader dies with its gateway: found by a hostile review);
        and whatever a pass runs must stay synchronous and contained, as in the loop: a turn that
        raises crashes its room only (``_turns``), a failed commit its pass's rooms only.
        """
        self._holding -= 1
        if self._holding or not self._ready:
            return
        task = self._parked
        if task is None:
            return  # the loop is busy (a pass, a commit, a linger): it takes the ready rooms next
        self._parked = None  # claimed first: a poke made by the pass itself only queues its room
        now = trio.current_time()
        if (len(self._ready) == 1 and self._handed is None and not self._stopping
                and self._last_commit + self._linger <= now):
            try:
                self._inline_pass(now)
            finally:  # whether the pass ended or raised: the loop is woken, or given its park back
                if self._handed is None and not self._ready:
                    self._parked = task  # nothing left for it: still parked (no checkpoint since)
                else:
                    trio.lowlevel.reschedule(task)
            return
        trio.lowlevel.reschedule(task)

    def _inline_pass(self, now: float) -> None:
        """A pass run by :meth:`release`: its turns, and its commit if the store takes it now, else
        handed to the loop (``_handed``)."""
        writes, waiting = self._turns(now)
        self.inline_passes += 1
        if not writes:
            return
        started = time.perf_counter()
        try:
            done = self._store.commit_now(writes)
        except Exception:
            for actor in waiting:
                self._crashed(actor)
            return
        if not done:
            self._handed = (writes, waiting)
            return
        self._stats.commits.observe(time.perf_counter() - started)
        for actor in waiting:
            self._release(actor)

    def stop(self) -> None:
        """Graceful shutdown: end once no actor is registered (each stops after its current turn,
        as its room's ``stop`` asks)."""
        self._stopping = True
        if self._parked is not None:
            task, self._parked = self._parked, None
            trio.lowlevel.reschedule(task)

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run passes until stopped with no actor left (or cancelled); the timer task runs alongside
        and ends with it.

        One coroutine for the whole loop, the park and the commit inline (a pass's turns are
        :meth:`_turns`, synchronous): every level of ``await`` between a task's step and its wait is
        walked on each resume, and a lone message resumes this task twice (its poke, its commit);
        a helper coroutine per park and per pass cost ~6 k instructions per lone message. The park
        is a bare ``wait_task_rescheduled`` (no cancel scope: a poke ends it, a timer pokes through
        the timer task)."""
        me = trio.lowlevel.current_task()
        clock = trio.current_time
        park = trio.lowlevel.wait_task_rescheduled
        try:
            async with trio.open_nursery(strict_exception_groups=True) as timer:
                timer.start_soon(self._timer)
                try:
                    while True:
                        if not self._ready:
                            if self._stopping and not self.actors:
                                return
                            self._parked = me  # until a poke (ready, stop, a timer's), see _unpark
                            await park(self._unpark)
                        handed, self._handed = self._handed, None
                        if handed is not None:  # a pass run inline whose commit must be awaited
                            writes, waiting = handed
                        else:
                            now = clock()  # once per pass, unless it lingers
                            linger_until = self._last_commit + self._linger
                            if linger_until > now:
                                await self._linger_till(linger_until)  # more turns for the next commit (see 5. above)
                                now = clock()
                            writes, waiting = self._turns(now)
                        awaited = False
                        if writes:  # the pass's one commit, then every waiting turn released
                            started = time.perf_counter()
                            store = self._store
                            try:
                                if not store.commit_now(writes, busy=len(waiting) >= _LINGER_ROOMS):
                                    awaited = True
                                    self._last_commit = clock() if len(waiting) >= _LINGER_ROOMS else -math.inf
                                    await store.commit(writes)
                            except Exception:
                                # The group failed (logged by the store): no turn of it took effect.
                                # Each room restarts from its last commit, its requests answered
                                # ``internal``, as after a turn that raised.
                                for actor in waiting:
                                    self._crashed(actor)
                            else:
                                self._stats.commits.observe(time.perf_counter() - started)
                                for actor in waiting:
                                    self._release(actor)
                        if not awaited and self._ready:
                            # Nothing awaited and more is ready: yield before the next pass, or rooms
                            # that keep getting ready (a deep inbox, a store that commits at once, more
                            # rooms than one pass takes) would hold the reader and every other task off.
                            await trio.lowlevel.checkpoint()
                finally:
                    timer.cancel_scope.cancel()
        finally:
            self._ended = True

    def _unpark(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        """The park's abort (cancelled while parked): no poke may reschedule this task any more."""
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _unlinger(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._lingering = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _linger_till(self, deadline: float) -> None:
        """Sleep until ``deadline`` whatever gets ready meanwhile (that is the point of lingering):
        only the timer task wakes it (or a cancellation), as ``trio.sleep_until`` would."""
        self._linger_until = deadline
        self._lingering = trio.lowlevel.current_task()
        self._wake_by(deadline)
        await trio.lowlevel.wait_task_rescheduled(self._unlinger)

    # -- timers ------------------------------------------------------------------------------------

    def _wake_by(self, deadline: float) -> None:
        """Make sure the timer task is awake at ``deadline``: move its sleep's deadline earlier if
        it is later (while it is not asleep it reads the heap and the linger before it sleeps)."""
        wait = self._wait
        if wait is not None and deadline < wait.deadline:
            wait.deadline = deadline

    def _first_timer(self) -> float:
        """The earliest live timer (stale entries at the top dropped), or the linger's end if it is
        earlier; ``inf`` when there is neither."""
        timers = self._timers
        while timers and timers[0][2].timer_at != timers[0][0]:
            heapq.heappop(timers)
        first = timers[0][0] if timers else math.inf
        if self._lingering is not None and self._linger_until < first:
            return self._linger_until
        return first

    def _due(self, now: float) -> None:
        """Poke every actor whose timer is due at ``now`` (each once: its entry is spent)."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _seq, actor = heapq.heappop(timers)
            if actor.timer_at == deadline:
                actor.timer_at = None
                if not actor.queued:
                    actor.poke()

    async def _timer(self) -> None:
        """Sleep until the first timer (or the linger's end), poke what is due, end a linger that is
        over, again. One scope per sleep, not per park: a deadline armed meanwhile only moves it
        (:meth:`_wake_by`); a stale first entry costs one wake of this task, never of the run loop."""
        try:
            while True:
                with trio.CancelScope(deadline=self._first_timer()) as wait:
                    self._wait = wait
                    await trio.sleep_forever()
                self._wait = None
                now = trio.current_time()
                self._due(now)
                lingering = self._lingering
                if lingering is not None and self._linger_until <= now:
                    self._lingering = None
                    trio.lowlevel.reschedule(lingering)
        finally:
            self._wait = None  # ended with the run loop: nothing to move any more

    def _turns(self, now: float) -> tuple[list[Write], list[RoomActor]]:
        """A pass up to its commit: run the turns of the rooms ready now (at most ``_PASS_MAX``),
        release each turn that wrote nothing. Returns the pass's writes and the actors whose turns
        wait for their commit (:meth:`run` commits, then releases them)."""
        timers = self._timers
        if timers and timers[0][0] <= now:  # due while this task was busy: fire now, not at the timer's wake
            self._due(now)
        if len(self._ready) <= _PASS_MAX:
            batch, self._ready = self._ready, []
        else:
            batch, self._ready = self._ready[:_PASS_MAX], self._ready[_PASS_MAX:]
        writes: list[Write] = []
        waiting: list[RoomActor] = []
        if not batch:
            return writes, waiting
        self.passes += 1
        for actor in batch:
            if not actor.registered:  # it crashed or left after it was queued
                continue
            try:
                turn_writes = actor.step(now)
            except Exception:
                self._crashed(actor)
                continue
            if turn_writes:
                writes.extend(turn_writes)
                waiting.append(actor)
            else:
                self._release(actor)
        return writes, waiting

    def _release(self, actor: RoomActor) -> None:
        """After the turn's commit: its output out, then what the room does next."""
        try:
            actor.after_commit()
        except Exception:
            self._crashed(actor)
            return
        runtime = actor.runtime
        if runtime.closed:
            self._leave(actor, "closed")
        elif runtime.stopping:
            self._leave(actor, "stopped")
        elif runtime.queued() or runtime.control:
            if not actor.queued:
                actor.poke()
        else:
            deadline = actor.next_deadline()
            if actor.may_sleep(deadline):
                runtime.sleep(deadline)  # in the step that saw its inbox empty: no command can be lost
                self._leave(actor, "asleep")
            elif deadline != math.inf and deadline != actor.timer_at:
                actor.timer_at = deadline
                self._seq += 1
                heapq.heappush(self._timers, (deadline, self._seq, actor))
                self._wake_by(deadline)

    def _crashed(self, actor: RoomActor) -> None:
        room = actor.runtime.room_id
        log.exception("room %s crashed", room, extra={"room": room, "event": "room_crashed"})
        self._leave(actor, "crashed")

    def _leave(self, actor: RoomActor, outcome: str) -> None:
        actor.registered = False
        actor.timer_at = None
        if actor.runtime.inbox_owner() is actor:
            actor.runtime.attach_actor(None)
        self.actors -= 1
        self._on_done(actor, outcome)
