"""Supervision of room actors: one_for_one, transient, with a restart-intensity window (as OTP).

Every awake room's turns are run by one :class:`~roost.scheduler.TurnScheduler` (no task per room);
the supervisor does everything asynchronous about a room around it, each in a short task of its own
in the rooms' nursery: loading a woken room, rebuilding a crashed one, disposing a closed one. A room
actor whose turn raises is rebuilt from the last committed state (its members stay connected and get
a ``sync``); the requests of the turn that crashed are answered ``internal`` (their effects were never
committed nor sent). More than ``restart_intensity`` crashes within ``restart_period`` seconds close
the room with a ``room_closed`` event; other rooms never notice. A room that closed is not restarted.

A room with nothing to do hibernates (see :class:`~roost.room.RoomRuntime`): the scheduler lets its
actor go, and the supervisor keeps its reap deadline in one heap served by one task (no task per
sleeping room); when a deadline comes the room is woken, and its actor reaps it as before.

Restart recovery puts a restored room without logic straight to sleep when its actor's first pass
would do nothing but wait (see :meth:`Supervisor.start_soon`): an empty room until its reaper, a room
with members (every session dropped) until the first reconnect grace ends, its state kept in memory
for that wake. 10 k restored rooms then build no actor and run no first turn
(a third of a restart); a command or the deadline starts the actor, which arms the same timers at
the same absolute times as it would have at the restart.
"""

from __future__ import annotations

import collections
import heapq
import logging
from collections.abc import Awaitable, Callable

import trio

from roost.protocol.codec import SERVER_LIMITS, encode
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import ErrorReply

from .config import Config
from .errors import RoomError
from .logic import Notifier, RoomLogic
from .metrics import RoomStats
from .outbox import ws_frame
from .room import Request, RoomActor, RoomRuntime, empty_ttl
from .scheduler import TurnScheduler
from .state import RoomState
from .store import Store

__all__ = ["Supervisor"]

log = logging.getLogger("roost.supervisor")


class Supervisor:
    """Starts and supervises room actors in a nursery it is given (the engine's)."""

    def __init__(
        self, nursery: trio.Nursery, store: Store, config: Config, on_gone: Callable[[RoomRuntime], None],
        *, stats: RoomStats | None = None, notifier: Notifier | None = None,
        on_disposed: Callable[[RoomRuntime], Awaitable[None]] | None = None,
    ) -> None:
        self._nursery = nursery
        self.notifier = notifier
        """Where room logic's ``notify`` goes (the engine's inbox service)."""
        self._store = store
        self._config = config
        self._on_gone = on_gone
        self._on_disposed = on_disposed
        """Awaited once a closed room's keys are deleted, before the room leaves the router (a cluster
        frees its code in the directory: engine/placement.py ShardOwner.forget says why before)."""
        self.stats = stats or RoomStats()
        """Shared by every room of this supervisor (the router hands it to each RoomRuntime)."""
        self.restarts = 0
        """Room actor crashes (each one restarted or, past the intensity, closed)."""
        self.created = 0
        self.restored = 0
        self.closed: collections.Counter[str] = collections.Counter()
        """Rooms closed for good, by the ``room_closed`` code (``expired``: reaped; ``internal``: crashed
        too often), and ``failed`` for a room that could not be recovered."""
        self.hibernations = 0
        """Times a room went to sleep (its actor returned idle)."""
        self.wakes = 0
        """Times a sleeping room was given an actor again."""
        self.asleep = 0
        """Rooms asleep now."""
        self._sleepers: list[tuple[float, int, RoomRuntime]] = []
        """(reap deadline, tie-breaker, room) of sleeping rooms: a heap; an entry whose room woke,
        or whose deadline moved, is stale (its room's ``reap_queued`` differs) and skipped."""
        self._sleeper_seq = 0
        self._reaper: trio.CancelScope | None = None
        """The sleeper reaper's wait while it runs (its deadline is the heap's first)."""
        self._reaper_running = False
        self._stopping = False
        self.scheduler = TurnScheduler(store, self.stats, self._actor_done, linger=config.commit_linger)
        """Runs every awake room's turns (started here, in the rooms' nursery)."""
        nursery.start_soon(self.scheduler.run)

    def make_logic(self, name: str | None) -> RoomLogic | None:
        """A fresh logic instance for a room (a restart gets a new one: the old may be corrupt)."""
        if name is None:
            return None
        factory = self._config.logics.get(name)
        if factory is None:
            raise RoomError(ErrorCode.UNSUPPORTED, f"no room logic named {name!r}")
        logic: RoomLogic = factory()
        return logic

    def start(self, runtime: RoomRuntime, state: RoomState, *, created: bool) -> None:
        """Start supervising a new room: its actor takes commands from now on (its first turn runs
        in the scheduler's next pass; commands sent meanwhile wait in its inbox)."""
        self.created += 1
        self._register(runtime, state, created)

    def start_soon(self, runtime: RoomRuntime, state: RoomState) -> None:
        """Start supervising a restored room (restart recovery): no task, no await, so thousands of
        rooms come back in one go; each actor's first turn runs in the scheduler's next pass.
        A room whose actor would only wait is restored asleep instead."""
        self.restored += 1
        if self._restores_asleep(runtime, state) or self._restores_waiting(runtime, state):
            return
        runtime.open_inbox()  # the router restores rooms without one (most need none: asleep)
        try:
            self._register(runtime, state, False)
        except Exception:
            self._fail(runtime)

    def _register(self, runtime: RoomRuntime, state: RoomState, created: bool) -> None:
        """Build the room's actor (with the logic kept through its sleep, or a fresh instance) and
        hand it to the scheduler."""
        logic, runtime.kept_logic = runtime.kept_logic, None
        if logic is None:
            logic = self.make_logic(state.options.logic)
        actor = RoomActor(runtime, state, self._store, self._config, logic, created=created, notifier=self.notifier)
        self.scheduler.register(actor)

    def _restores_asleep(self, runtime: RoomRuntime, state: RoomState) -> bool:
        """Put a restored room straight to sleep when its actor would only go to sleep: no member, no
        logic (whose instance, ticks and hooks only an actor handles), its reaper not due yet. Its state
        is then dropped at once instead of after a task start and a first pass of its actor."""
        if len(state.presence) or state.options.logic is not None or state.empty_since is None:
            return False
        config = self._config
        remaining = state.empty_since + empty_ttl(config, state.shared) - config.wall_clock()
        if remaining <= 0:
            return False  # due: its actor reaps it
        runtime.sleep(trio.current_time() + remaining)
        self._sleep(runtime, None)
        return True

    def _restores_waiting(self, runtime: RoomRuntime, state: RoomState) -> bool:
        """Put a restored room with members to sleep until its first reconnect grace ends, its state
        kept (``runtime.state``: welcome's unread counts read it, and the actor that wakes takes it
        instead of reloading). Its actor's first pass would only arm the grace timers of the members
        (every session comes back dropped) and wait: the first command, or the sleeper reaper at the
        earliest grace deadline, starts the actor, whose first pass arms the same timers (absolute
        times, set by the restore) and so expires whoever did not come back, on time.

        Not for a room with logic (an actor handles its instance and ticks), nor for one stored with
        members and an ``empty_since`` (its first pass clears that with a write: left to an actor)."""
        if state.options.logic is not None or state.empty_since is not None or runtime.peers:
            return False
        due = [entry.grace_until for entry in state.presence.members.values() if entry.grace_until is not None]
        if not due or len(due) != len(state.presence):
            return False
        runtime.sleep(min(due))
        runtime.state = state  # after sleep(), which drops it
        self._sleep(runtime, None)
        return True

    def wake(self, runtime: RoomRuntime) -> bool:
        """Start an actor for a sleeping room (its ``waker``): its state is reloaded by that task,
        unless the room kept it (restored waiting: :meth:`_restores_waiting`). Synchronous, as
        :meth:`RoomRuntime.wake` needs; False once the engine is shutting down."""
        if self._stopping:
            return False
        try:
            self._nursery.start_soon(self._wake, runtime)
        except RuntimeError:  # the rooms' nursery is closed: the engine has stopped
            return False
        self.wakes += 1
        self.asleep -= 1
        return True

    def stop(self) -> None:
        """Graceful shutdown: wake no room any more and end the sleeper reaper (rooms asleep have
        nothing to finish: their state is committed)."""
        self._stopping = True
        self.scheduler.stop()
        if self._reaper is not None:
            self._reaper.cancel()

    def _sleep(self, runtime: RoomRuntime, logic: RoomLogic | None) -> None:
        """A room's actor returned asleep: keep its logic instance and queue its reap deadline."""
        runtime.kept_logic = logic
        self.hibernations += 1
        self.asleep += 1
        deadline = runtime.reap_at
        assert deadline is not None
        if runtime.reap_queued == deadline:  # its entry from an earlier sleep still stands
            return
        heap = self._sleepers
        if len(heap) > 64 and len(heap) > 2 * self.asleep:
            self._compact()
        self._sleeper_seq += 1
        heapq.heappush(heap, (deadline, self._sleeper_seq, runtime))
        runtime.reap_queued = deadline
        if not self._reaper_running:
            self._reaper_running = True
            self._nursery.start_soon(self._reap_sleepers)
        elif self._reaper is not None and deadline < self._reaper.deadline:
            self._reaper.deadline = deadline

    def _compact(self) -> None:
        """Drop stale entries (rooms that woke, deadlines that moved): the heap stays within twice
        the sleeping rooms, however often rooms wake and sleep again."""
        live = []
        for entry in self._sleepers:
            runtime = entry[2]
            if runtime.reap_queued == entry[0]:
                if runtime.asleep and not runtime.closed:
                    live.append(entry)
                else:
                    runtime.reap_queued = None
        heapq.heapify(live)
        self._sleepers[:] = live

    async def _reap_sleepers(self) -> None:
        """One task for every sleeping room's reaper: wake each room whose deadline has come (its
        actor then reaps it, with the same checks as a room that never slept). Ends when no room
        sleeps; the next sleep starts it again."""
        heap = self._sleepers
        try:
            while heap and not self._stopping:
                with trio.CancelScope(deadline=heap[0][0]) as scope:
                    self._reaper = scope
                    await trio.sleep_forever()
                self._reaper = None
                now = trio.current_time()
                while heap and heap[0][0] <= now and not self._stopping:
                    deadline, _seq, runtime = heapq.heappop(heap)
                    if runtime.reap_queued != deadline:
                        continue  # stale
                    runtime.reap_queued = None
                    if runtime.asleep and not runtime.closed and runtime.reap_at is not None and runtime.reap_at <= now:
                        runtime.wake()
        finally:
            self._reaper = None
            self._reaper_running = False

    # -- what happens to a room around its turns ----------------------------------------------------

    async def _wake(self, runtime: RoomRuntime) -> None:
        """A sleeping room got a command (or its reaper is due): load its state, then its actor runs
        what waits in its inbox, in order."""
        try:
            # A room restored waiting kept its state (``_restores_waiting``); one that slept did not.
            state = runtime.state if runtime.state is not None else await self._reload(runtime)
            self._register(runtime, state, False)
        except Exception:
            self._fail(runtime)

    def _actor_done(self, actor: RoomActor, outcome: str) -> None:
        """The scheduler let ``actor`` go (see ``TurnScheduler``): what becomes of its room."""
        runtime = actor.runtime
        if outcome == "asleep":  # idle: no actor until a command or its reaper wakes it
            self._sleep(runtime, actor.logic)
        elif outcome == "closed":  # closed for good (not a shutdown): every key goes too
            self.closed[actor.close_reason or "closed"] += 1
            self._nursery.start_soon(self._dispose, runtime)
        elif outcome == "stopped":  # a graceful shutdown: the room is kept, what is queued refused
            if not runtime.closed:
                runtime.refuse_queued(RoomError(ErrorCode.INVALID_STATE, "the server is shutting down"))
            self._on_gone(runtime)
        else:  # crashed (called inside the scheduler's ``except``: the traceback is logged there)
            self.restarts += 1
            actor.rollback_attachments()
            self._answer_crashed_turn(runtime)
            now = trio.current_time()
            failures = runtime.failures
            if failures is None:
                failures = runtime.failures = collections.deque()
            failures.append(now)
            while failures and failures[0] < now - self._config.restart_period:
                failures.popleft()
            self._nursery.start_soon(self._recover, runtime, len(failures))

    async def _recover(self, runtime: RoomRuntime, crashes: int) -> None:
        """Rebuild a crashed room from its last commit, or close it when it crashed too often."""
        config = self._config
        try:
            state = await self._reload(runtime)
            if crashes > config.restart_intensity:
                log.error("room %s crashed %d times in %.1fs: closing it", runtime.room_id, crashes,
                          config.restart_period, extra={"room": runtime.room_id, "event": "room_closed_after_crashes",
                                                        "crashes": crashes})
                await self._close_after_crashes(runtime, state)
                self.closed[ErrorCode.INTERNAL.value] += 1
                await self._disposed(runtime)
                self._on_gone(runtime)
                return
            runtime.resync_reason = "restarted"
            self._register(runtime, state, False)
        except Exception:
            self._fail(runtime)

    async def _dispose(self, runtime: RoomRuntime) -> None:
        try:
            await self._store.dispose_room(runtime.room_id)
        except Exception:
            self._fail(runtime)
            return
        await self._disposed(runtime)
        self._on_gone(runtime)

    async def _disposed(self, runtime: RoomRuntime) -> None:
        if self._on_disposed is not None:
            await self._on_disposed(runtime)

    def _fail(self, runtime: RoomRuntime) -> None:
        """Recovery itself failed (the store cannot be read, the logic is gone from the config...):
        this room closes; the engine and every other room go on. Called inside the ``except``."""
        runtime.asleep = False  # it did not get to sleep
        log.exception("room %s could not be recovered: closing it", runtime.room_id,
                      extra={"room": runtime.room_id, "event": "room_abandoned"})
        self.closed["failed"] += 1
        self._abandon(runtime)
        self._on_gone(runtime)

    def _abandon(self, runtime: RoomRuntime) -> None:
        """Last resort: refuse everything queued and let the attached sessions know the room is gone."""
        self._answer_crashed_turn(runtime)
        runtime.closed = True
        runtime.refuse_queued(RoomError(ErrorCode.INTERNAL, "the room failed and was closed"))
        notice = ws_frame(encode(ErrorReply(code=ErrorCode.INTERNAL.value, message=f"room {runtime.room_id} closed"),
                                 SERVER_LIMITS))
        for peer in list(runtime.peers.values()):
            peer.rooms.discard(runtime.room_id)
            peer.push(notice)
        runtime.peers.clear()

    async def _reload(self, runtime: RoomRuntime) -> RoomState:
        records = await self._store.load_room(runtime.room_id)
        # Back to the last commit: events of the turn that crashed were never committed nor sent (output
        # waits for the commit), and the replay buffer is stored, so the epoch stays and resume works.
        config = self._config
        return RoomState.restore(records, now=trio.current_time(), grace=config.reconnect_grace,
                                 history_limit=config.history_limit, replay_limit=config.replay_events)

    def _answer_crashed_turn(self, runtime: RoomRuntime) -> None:
        # Held ``delivered`` oks too: their moves died with the uncommitted state (engine/room.py). One
        # held in the crashed turn itself is in both lists: answered once.
        batch, held = runtime.crashed_batch, runtime.held
        in_batch = {id(command.frame) for command in batch if isinstance(command, Request)}
        batch = [*(request for request in held if id(request.frame) not in in_batch), *batch]
        runtime.crashed_batch, runtime.held = [], []
        error = RoomError(ErrorCode.INTERNAL, "the room failed while handling this request; it did not take effect")
        for command in batch:
            runtime.refuse(command, error)

    async def _close_after_crashes(self, runtime: RoomRuntime, state: RoomState) -> None:
        actor = RoomActor(runtime, state, self._store, self._config, None)
        actor.close_room(ErrorCode.INTERNAL.value, "the room failed too often and was closed")
        runtime.resync_reason = None
        await actor.finish_turn()
        await self._store.dispose_room(runtime.room_id)
