"""The room actor: the only writer of one room's state.

A room's actor is driven by the engine's one turn scheduler (engine/scheduler.py), not by a task
of its own: commands queue on the room's bounded :class:`Inbox`, which puts the actor on the
scheduler's ready list once; a scheduler pass takes everything already queued for each ready room
as one *turn*, applies it to the pure :class:`~roost.state.RoomState`, commits the writes of every
turn of the pass in one store commit, and only then releases each turn's replies and events
(nothing is acknowledged before it is durable). Timers (typing, reconnect grace, receipts, the
reaper, logic ticks) stay in each actor's own heap; the scheduler keeps only each actor's earliest.

Fan-out follows reference/stack-limits.md §A.8: each event is msgpack-encoded and WebSocket-framed
once; at the end of the turn every attached session gets one ``push`` of the same bytes (a direct
non-blocking socket write), with no task or channel hop per recipient.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from roost.protocol.codec import SERVER_LIMITS, dump_record, encode
from roost.protocol.errors import ErrorCode, LocalProtocolError
from roost.protocol.frames import (
    RECEIPTS_MAX,
    ChatAck,
    ChatDelete,
    ChatDeleted,
    ChatEdit,
    ChatEdited,
    ChatEvent,
    ChatSend,
    ChatStatus,
    ChatStatusPage,
    ClientFrame,
    Create,
    Delivered,
    ErrorReply,
    History,
    HistoryPage,
    HostChanged,
    HostSet,
    InactivePolicy,
    Join,
    JoinOrCreate,
    Kick,
    Leave,
    Member,
    Members,
    MembersPage,
    MessageEvent,
    Ok,
    Phase,
    PresenceDiff,
    PresenceSet,
    Read,
    ReadReceipt,
    Receipts,
    Resume,
    ResumeResult,
    RoomClosed,
    RoomEvent,
    RoomSnapshot,
    Send,
    ServerFrame,
    StateEvent,
    StateSet,
    StatusList,
    Sync,
    Typing,
)

from .codes import in_scope
from .config import Config
from .errors import RoomError
from .logic import Notifier, RoomContext, RoomLogic
from .metrics import RoomStats
from .outbox import ws_frame, ws_head
from .packing import packb as _packb
from .peer import Peer
from .receipts import Census, by_author
from .state import RoomState
from .store import Store, Write

__all__ = ["Call", "Disconnected", "Ended", "Request", "RoomActor", "RoomRuntime", "empty_ttl"]

log = logging.getLogger("roost.room")

_TURN_MAX = 128
"""Commands taken into one turn at most (bounds the latency a turn adds to the first of them)."""


@dataclasses.dataclass(slots=True)
class Request:
    """A frame from a session, for this room."""

    peer: Peer
    frame: ClientFrame


@dataclasses.dataclass(slots=True)
class Disconnected:
    """A session's connection ended (not a leave: the member enters its reconnect grace)."""

    peer: Peer


@dataclasses.dataclass(slots=True)
class Ended:
    """A session ended itself (``bye``): no reconnect grace, its presence leaves now (reason ``ended``)."""

    peer: Peer


class Call:
    """An in-process request: ``fn(actor)`` runs inside the turn; its result is delivered after the commit."""

    __slots__ = ("_done", "error", "fn", "value")

    def __init__(self, fn: Callable[[RoomActor], Any]) -> None:
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = trio.Event()

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self._done.set()

    async def wait(self) -> Any:
        """The result, or raise the error ``fn`` raised (a RoomError for refusals)."""
        await self._done.wait()
        if self.error is not None:
            raise self.error
        return self.value


Command = Request | Call | None  # None only wakes the actor (control queue)


class Inbox:
    """A room's bounded FIFO of commands, read by the turn scheduler (engine/scheduler.py).

    The API of the trio memory channel it replaced, as far as senders use it (``send_nowait``,
    ``send``, ``close``), but no task waits on its other end: a put *pokes* the room's actor, which
    queues it once on the scheduler's ready list; its turns then take what is queued. The trap it
    removes: a receiving task per room made every command a task wake (a memory-channel hop,
    ~53 k instructions) and every commit a follower's wake, paid per message at low per-room rates.
    """

    __slots__ = ("_capacity", "_queue", "_space", "closed", "owner")

    def __init__(self, capacity: int) -> None:
        self._queue: collections.deque[Command] = collections.deque()
        self._capacity = max(capacity, 1)
        self._space: trio.lowlevel.ParkingLot | None = None
        """Senders waiting for room (created on the first: a full inbox is rare)."""
        self.closed = False
        self.owner: RoomActor | None = None
        """The actor whose turns take this inbox (None while the room is being started or reloaded:
        commands wait here; the scheduler pokes the actor when it registers it)."""

    def __len__(self) -> int:
        return len(self._queue)

    def send_nowait(self, command: Command) -> None:
        """Queue ``command``; raises ``trio.WouldBlock`` when full, ``trio.ClosedResourceError`` once closed."""
        if self.closed:
            raise trio.ClosedResourceError("the room's inbox is closed")
        if len(self._queue) >= self._capacity:
            raise trio.WouldBlock
        self._queue.append(command)
        owner = self.owner
        if owner is not None and not owner.queued:
            owner.poke()

    async def send(self, command: Command) -> None:
        """Queue ``command``, waiting while the inbox is full (backpressure); a checkpoint either way."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self.send_nowait(command)
            except trio.WouldBlock:
                if self._space is None:
                    self._space = trio.lowlevel.ParkingLot()
                await self._space.park()
                continue
            break
        await trio.lowlevel.cancel_shielded_checkpoint()

    def take(self, limit: int) -> list[Command]:
        """Up to ``limit`` queued commands, oldest first (a turn's batch); wakes waiting senders."""
        queue = self._queue
        if len(queue) <= limit:
            batch = list(queue)
            queue.clear()
        else:
            batch = [queue.popleft() for _ in range(limit)]
        if batch and self._space is not None and self._space.statistics().tasks_waiting:
            self._space.unpark(count=len(batch))
        return batch

    def close(self) -> None:
        """Take no more commands (queued ones stay, to be refused); waiting senders get ClosedResourceError."""
        self.closed = True
        if self._space is not None:
            self._space.unpark_all()


class RoomRuntime:
    """What outlives one actor incarnation: the inbox, attached sessions, the lobby entry.

    The supervisor keeps it across restarts, so members stay connected while the actor is rebuilt.

    **Hibernation** (as Durable Objects' and Phoenix's): a room with nothing to do (no member, no
    armed timer but its reaper, an empty inbox) holds no task, no inbox and no state: it is this
    record, ``asleep``, with its lobby entry and its reap deadline (its state is in the store). The
    first command that reaches it wakes it: :attr:`inbox` opens a fresh inbox and asks the
    supervisor for an actor, which reloads the state from the store while the commands wait in the
    inbox, in order. Both transitions are synchronous (no checkpoint between the check and the
    change), which is what keeps exactly one actor per room: the actor goes to sleep only in a step
    where it saw its inbox empty, and a wake happens only while it is asleep.
    """

    __slots__ = ("_barred", "_inbox", "_inbox_size", "_waker", "asleep", "closed", "code", "control",
                 "crashed_batch", "failures", "held", "info", "kept_logic", "peers", "public", "reap_at", "reap_queued",
                 "resync_reason", "room_id", "state", "stats", "stopping")

    def __init__(self, room_id: str, code: str, inbox_size: int, *, stats: RoomStats | None = None,
                 waker: Callable[[RoomRuntime], bool] | None = None, inbox: bool = True) -> None:
        self.room_id = room_id
        self.code = code
        self.stats = stats or RoomStats()
        """The engine's room counters (metrics), shared by every room; the actors update them."""
        self._inbox_size = inbox_size
        self._waker = waker
        """Starts an actor for this room (the supervisor's ``wake``); False when it cannot (shutdown)."""
        self._inbox: Inbox | None = Inbox(inbox_size) if inbox else None
        """None until :meth:`open_inbox` with ``inbox=False`` (a restored room: most restore asleep),
        and while asleep."""
        self.control: collections.deque[Disconnected | Ended] | None = None
        """Disconnect and session-end notices for the actor (created on the first one)."""
        self.peers: dict[str, Peer] = {}
        """Attached sessions by sid."""
        self.public = False
        self.info: Any = None
        """The lobby entry (RoomInfo), refreshed after each turn that changed it."""
        self.closed = False
        self.stopping = False
        """Set by a graceful shutdown: the actor finishes its turn (committed) and returns."""
        self.resync_reason: str | None = None
        """Set by the supervisor before a restart: the new actor sends every session a ``sync``."""
        self.crashed_batch: Sequence[Command] = ()
        self.state: Any = None
        """The current actor's RoomState: read (never written) between turns, e.g. for the unread
        chat counts of ``welcome`` (engine/inbox.py). None while asleep (a sleeping room has no member),
        except for a room restored with members, asleep until its first reconnect grace ends with its
        state kept for the actor that wakes (engine/supervisor.py ``_restores_waiting``)."""
        self.held: list[Request] = []
        """``delivered`` requests whose cursor moved and whose ``ok`` waits for the commit that stores
        it (at the latest at the end of the receipt window). Here, not on the actor: a crash answers
        them ``internal`` with the crashed turn (their moves were never committed)."""
        self._barred: dict[str, float] | None = None
        """Kicked users by the end of their rejoin cool-down (Trio clock); None until a kick."""
        self.asleep = False
        """No actor, no inbox, no state in memory (but see :attr:`state`): see the class docstring."""
        self.reap_at: float | None = None
        """While asleep: when its reaper is due (Trio clock); the supervisor wakes it then."""
        self.reap_queued: float | None = None
        """The deadline of this room's entry in the supervisor's sleepers heap (one at a time)."""
        self.kept_logic: Any = None
        """While asleep: the room's logic instance (it may hold state of its own that no store has)."""
        self.failures: collections.deque[float] | None = None
        """When its actors crashed (Trio clock), within the supervisor's restart period."""

    @property
    def inbox(self) -> Inbox:
        """The inbox. Reading it wakes a sleeping room: whoever asks for it has a command for it."""
        if self.asleep:
            self.wake()
        assert self._inbox is not None
        return self._inbox

    def attach_actor(self, actor: RoomActor | None) -> None:
        """Make ``actor`` the one whose turns take the inbox (None: no actor takes it now)."""
        if self._inbox is not None:
            self._inbox.owner = actor

    def inbox_owner(self) -> RoomActor | None:
        """The actor whose turns take the inbox now (None: asleep, starting or reloading)."""
        return self._inbox.owner if self._inbox is not None else None

    def take(self, limit: int) -> list[Command]:
        """The actor's end of the inbox: up to ``limit`` queued commands."""
        return self._inbox.take(limit) if self._inbox is not None else []

    def queued(self) -> int:
        """Commands waiting in the inbox."""
        return len(self._inbox) if self._inbox is not None else 0

    def _poke(self) -> None:
        inbox = self._inbox
        if inbox is not None and inbox.owner is not None and not inbox.owner.queued:
            inbox.owner.poke()

    def open_inbox(self) -> None:
        """Give the room an inbox if it has none (one created with ``inbox=False``, before its actor)."""
        if self._inbox is None:
            self._inbox = Inbox(self._inbox_size)

    def wake(self) -> None:
        """Give a sleeping room a fresh inbox and an actor (synchronously: see the class docstring).

        When no actor can be started (the engine is shutting down), the room stays asleep and the
        inbox handed out is closed: the command is refused as to a closed room, never left unanswered.
        """
        if not self.asleep:
            return
        self._inbox = Inbox(self._inbox_size)
        self.asleep = False
        if self._waker is None or not self._waker(self):
            self.asleep = True
            self._inbox.close()

    def sleep(self, reap_at: float) -> None:
        """Called by an idle actor as its last step: drop the inbox (seen empty in this same step)."""
        self.asleep = True
        self.reap_at = reap_at
        self._inbox = None
        self.state = None

    def inbox_empty(self) -> bool:
        """Whether no command is queued (nor any disconnect notice)."""
        return not self.control and self._inbox is not None and not self._inbox

    def bar(self, user: str, until: float) -> None:
        """Refuse ``user``'s joins until ``until`` (a kick's cool-down). Expired entries go here, so
        the table holds at most the users kicked within one cool-down."""
        now = trio.current_time()
        barred = self._barred
        if barred is None:
            barred = self._barred = {}
        for expired in [u for u, end in barred.items() if end <= now]:
            del barred[expired]
        if until > now:
            barred[user] = until

    def barred_for(self, user: str, now: float) -> float:
        """Seconds left of ``user``'s cool-down (0 when it may join)."""
        if self._barred is None:
            return 0.0
        return max(self._barred.get(user, now) - now, 0.0)

    def refuse(self, command: Command, error: RoomError) -> None:
        """Answer one command with ``error``, outside any turn (its room could not handle it)."""
        if isinstance(command, Call):
            command.resolve(None, error)
        elif isinstance(command, Request):
            self.stats.errors[error.code.value] += 1
            reply = ErrorReply(id=getattr(command.frame, "id", None), code=error.code.value, message=error.message)
            command.peer.push(ws_frame(encode(reply, SERVER_LIMITS)))

    def refuse_queued(self, error: RoomError) -> None:
        """Take no more commands and answer every queued one with ``error`` (closing, shutdown)."""
        inbox = self._inbox
        if inbox is None:  # asleep: nothing is queued
            return
        inbox.close()
        while inbox:
            for command in inbox.take(len(inbox)):
                self.refuse(command, error)

    def stop(self) -> None:
        """Ask the actor to return after its current turn (graceful shutdown; the room is kept).
        A sleeping room has no actor and nothing to finish: it is not woken."""
        self.stopping = True
        self._poke()

    def notify_disconnect(self, peer: Peer) -> None:
        """Called by a connection as it ends; never blocks, never lost. A sleeping room has no
        attached session (it sleeps only without one), so there is nothing to tell it."""
        if self._inbox is None:
            return
        if self.control is None:
            self.control = collections.deque()
        self.control.append(Disconnected(peer))
        self._poke()

    def notify_end(self, peer: Peer) -> None:
        """Called by a connection whose session ends itself (``bye``); like ``notify_disconnect``,
        never blocks, never lost, and handled before any request queued behind it. Attached rooms
        are awake (a room sleeps only without a session), so a sleeping one has nothing to end."""
        if self._inbox is None:
            return
        if self.control is None:
            self.control = collections.deque()
        self.control.append(Ended(peer))
        self._poke()


class _Context(RoomContext):
    """The RoomContext room logic sees: a thin view over the actor."""

    def __init__(self, actor: RoomActor) -> None:
        self._actor = actor

    @property
    def room_id(self) -> str:
        return self._actor.state.room_id

    @property
    def phase(self) -> Phase:
        return self._actor.state.phase

    @property
    def version(self) -> int:
        return self._actor.state.version

    @property
    def state(self) -> Any:
        return self._actor.state.game

    @property
    def host(self) -> str | None:
        return self._actor.state.host

    @property
    def now_ms(self) -> int:
        return self._actor.now_ms()

    def members(self) -> list[Member]:
        return [e.view() for e in self._actor.state.presence.in_join_order()]

    def role(self, user: str) -> str | None:
        joining = self._actor.joining
        if joining is not None and joining.user == user:
            return joining.role
        entry = self._actor.state.presence.get(user)
        return entry.role if entry is not None else None

    def set_state(self, state: Any = None, *, phase: Phase | None = None, reason: str | None = None) -> int:
        return self._actor.change_state(state, phase, reason=reason, keep_state=False)

    def broadcast(self, kind: str, body: Any = None) -> None:
        self._actor.emit(MessageEvent, kind=kind, body=body)

    def close(self, message: str = "") -> None:
        self._actor.close_room("closed", message)

    def notify(self, user: str, kind: str, body: Any = None) -> None:
        actor = self._actor
        if actor.notifier is None:
            raise RoomError(ErrorCode.UNSUPPORTED, "this engine has no inboxes")
        actor.notifier.check_post(user, kind, body, len(actor.notices))
        actor.notices.append((user, kind, body))


class RoomActor:
    """One incarnation of a room's actor. Built by the supervisor from the last committed state."""

    def __init__(
        self,
        runtime: RoomRuntime,
        state: RoomState,
        store: Store,
        config: Config,
        logic: RoomLogic | None,
        *,
        created: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        self._created = created
        self.notifier = notifier
        self.notices: list[tuple[str, str, Any]] = []
        """``notify`` calls of this turn's logic, posted once the turn is committed."""
        self.runtime = runtime
        self.state = state
        runtime.state = state
        self.store = store
        self.config = config
        self.logic = logic
        self.context = _Context(self)
        self._timers: list[tuple[float, int, str, str]] = []
        self._timer_seq = 0
        # per-turn output, in order: (target peer or None for a broadcast, framed bytes)
        self._entries: list[tuple[Peer | None, bytes]] = []
        self._changes: dict[Peer, list[tuple[int, bool]]] = {}
        self._initial: dict[Peer, bool] = {}
        self._calls: list[tuple[Call, Any, BaseException | None]] = []
        self._close: tuple[str, str] | None = None
        self._tick_at: float | None = None
        self._reap_at: float | None = None
        self._receipts_at: float | None = None
        """When the armed receipt window ends (None: none armed; one at a time)."""
        self._window_ended = False
        """Set by the window's timer for the turn's end: the held ``delivered`` oks go out then."""
        self._info_dirty = runtime.info is None
        self._stats = runtime.stats
        self.joining: Peer | None = None
        """The session whose join ``on_join`` is deciding (``RoomContext.role`` reads its role)."""
        self._may_sleep = not created
        """A created room is not put to sleep before its first turn: the request that created it
        (its creator's join) is on its way, and a sleep would only make it reload what it just wrote."""
        self.scheduler: Any = None
        """The TurnScheduler running this actor's turns (set when it registers the actor)."""
        self.queued = False
        """On the scheduler's ready list now (poked once, until its next step)."""
        self.registered = False
        """Its turns are run by the scheduler (False before it registers and once it let it go)."""
        self.timer_at: float | None = None
        """The deadline of this actor's current entry in the scheduler's timer heap (one live at a time)."""
        self._running = False
        self._stepped = False
        self._started_at = 0.0
        self._turn_ms: int | None = None
        self._in_turn = False
        self._chat_head: bytes | None = None
        """The packed start of every ``chat`` event of this room (``_emit_chat``), for ``_chat_epoch``."""
        self._chat_epoch = 0

    # -- driven by the turn scheduler (engine/scheduler.py) -------------------------------------

    def poke(self) -> None:
        """Queue this actor, once, on its scheduler's ready list: its inbox or its control queue got
        something, or a timer of its came due. Called synchronously by whoever queued the command."""
        self.queued = True
        assert self.scheduler is not None
        self.scheduler.ready(self)

    def step(self, now: float) -> list[Write]:
        """One turn up to its commit: start the actor on its first turn, fire what is due, take what is
        queued and apply it. Returns the writes the scheduler commits (with every other room's of the
        same pass) before :meth:`after_commit` releases the turn's replies and events.

        Raises whatever the turn raised: the scheduler hands the room to its supervisor, which rebuilds
        it from the last commit (none of this turn's effects were committed nor sent).
        """
        self.queued = False
        self._started_at = time.perf_counter()
        runtime = self.runtime
        first = not self._running
        if first:
            self._running = True
            self._start()
        batch = runtime.take(_TURN_MAX)
        depth = len(batch)
        if depth >= _TURN_MAX:  # the rest is still queued: the inbox was deeper than one turn
            depth += runtime.queued()
        stats = self._stats
        if depth > stats.inbox_high:
            stats.inbox_high = depth
        runtime.crashed_batch = batch
        self._stepped = not first or bool(batch)
        self._in_turn = True
        try:
            self._turn(batch, now)
            return self._before_commit()
        finally:
            self._in_turn = False
            self._turn_ms = None

    def after_commit(self) -> None:
        """The turn's writes are durable: release its output (see :meth:`_release`)."""
        self._release()
        self.runtime.crashed_batch = ()
        if self._stepped:
            self._may_sleep = True
            self._stats.turns.observe(time.perf_counter() - self._started_at)

    def next_deadline(self) -> float:
        """When this actor must run again with nothing queued: its earliest timer (``inf``: none)."""
        return self._next_deadline()

    def may_sleep(self, deadline: float) -> bool:
        """Whether the room can hibernate now (see :meth:`_idle`); a created room not before its first turn."""
        return self._may_sleep and self._idle(deadline)

    def _idle(self, deadline: float) -> bool:
        """Whether the room has nothing to do but wait for its reaper: no member (so no attached
        session, no reconnect grace, no typing), no logic tick, no other timer, an empty inbox, and a
        reap deadline still ahead (a room woken to be reaped must reap, not sleep again)."""
        return (deadline == self._reap_at and deadline > trio.current_time() and self._tick_at is None
                and not len(self.state.presence) and not self.runtime.peers and self.runtime.inbox_empty()
                and all(timer[2] == "reap" for timer in self._timers))

    def _start(self) -> None:
        now = trio.current_time()
        if self.logic is not None and self.logic.tick_rate > 0:
            self._tick_at = now + 1 / self.logic.tick_rate
        if self._created and self.logic is not None:
            self.logic.on_create(self.context)
        presence = self.state.presence
        for entry in presence.members.values():
            if entry.grace_until is not None:
                self._arm(entry.grace_until, "grace", entry.user)
        self._check_empty()
        reason = self.runtime.resync_reason
        if reason is None:
            return
        self.runtime.resync_reason = None
        self.state.touch("counters")
        peers = list(self.runtime.peers.values())
        for peer in peers:
            if peer.user in presence:  # still a member as of the last commit: live again
                presence.attach(peer.user, peer.sid, peer.name, self.now_ms(), peer.role)
            else:  # its join was in the turn that crashed, and was answered "internal"
                self._detach(peer)
        for peer in peers:  # every snapshot sees every re-attached session online
            if self.runtime.peers.get(peer.sid) is peer:
                self._sync_to(peer, reason)

    def _turn(self, batch: list[Command], now: float) -> None:
        timers, tick_at = self._timers, self._tick_at
        if (timers and timers[0][0] <= now) or (tick_at is not None and tick_at <= now):  # nothing due: no call
            self._fire_timers(now)
        while self.runtime.control:
            item = self.runtime.control.popleft()
            if isinstance(item, Ended):
                self._on_end(item.peer)
            else:
                self._on_disconnect(item.peer, now)
        for command in batch:
            if command is None:
                continue
            if self._close is not None:
                self._refuse_closed(command)
                continue
            if isinstance(command, Call):
                try:
                    self._calls.append((command, command.fn(self), None))
                except RoomError as error:
                    self._calls.append((command, None, error))
                continue
            try:
                self._handle(command.peer, command.frame, now)
            except RoomError as error:
                self._error(command.peer, getattr(command.frame, "id", None), error)
            except LocalProtocolError as error:  # a reply over the server frame limit (a page, a snapshot)
                code = ErrorCode.TOO_LARGE if error.code is ErrorCode.TOO_LARGE else ErrorCode.INTERNAL
                self._error(command.peer, getattr(command.frame, "id", None),
                            RoomError(code, "the reply would exceed the frame limit; ask for a smaller page"))

    def _refuse_closed(self, command: Command) -> None:
        error = RoomError(ErrorCode.NOT_FOUND, "the room is closed")
        if isinstance(command, Call):
            self._calls.append((command, None, error))
        elif isinstance(command, Request):
            self._error(command.peer, getattr(command.frame, "id", None), error)

    async def finish_turn(self) -> None:
        """Commit the turn's writes, then release its replies and events: a turn run outside the
        scheduler (a room closed after too many crashes; benches driving one actor)."""
        writes = self._before_commit()
        if writes and not self.store.commit_now(writes):
            await self.store.commit(writes)
        self._release()

    def _before_commit(self) -> list[Write]:
        """The end of a turn that goes into its commit: the close event, the held ``delivered`` oks
        whose cursors this commit stores, and the turn's writes."""
        if self._close is not None:
            self._emit_close()
        held = self.runtime.held
        if held and (self._window_ended or self.runtime.stopping or self._close is not None):
            # The held oks go out after this commit, which stores every moved delivered cursor. Only
            # at a window's end (or a stop): a busy room commits every turn, and an ok per commit
            # would let a client send a cursor per event; this way it sends one per window at most.
            self.state.flush_delivered = True
            self.runtime.held = []
            for request in held:
                self._ok(request.peer, request.frame.id)  # type: ignore[attr-defined]
        self._window_ended = False
        return self.state.take_writes() if self.state.dirty else []

    def _release(self) -> None:
        """After the commit: the turn's frames to their sessions, logic's notices to the inbox
        service, in-process calls answered, the lobby entry refreshed; a closed room disposed."""
        self._flush()
        if self.notices:
            notices, self.notices = self.notices, []
            for notice in notices:
                self.notifier.post(*notice)  # type: ignore[union-attr]  # set when notices exist
        if self._calls:  # most turns answer no in-process call: no new list per turn
            calls, self._calls = self._calls, []
            for call, value, error in calls:
                call.resolve(value, error)
        if self._info_dirty:
            self.runtime.info = self.state.info()
            self.runtime.public = self.state.options.public
            self._info_dirty = False
        if self._close is not None:
            self._dispose()

    # -- timers -----------------------------------------------------------------------------------

    def _arm(self, deadline: float, kind: str, user: str) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, kind, user))

    def _next_deadline(self) -> float:
        """The earliest armed timer (or tick), ``inf`` when none is.

        The trap: a room is created empty, which arms its reaper, and joined in the same request; a
        heap cannot remove that entry, and while it is pending every wait for the inbox needs a cancel
        scope (a tenth of a chat turn's cost). A disarmed reap entry (``_reap_at`` no longer its
        deadline) is stale: popped here when it comes first, ignored by ``_fire_timers`` otherwise.
        """
        timers = self._timers
        while timers and timers[0][2] == "reap" and timers[0][0] != self._reap_at:
            heapq.heappop(timers)
        first = timers[0][0] if timers else math.inf
        return min(first, self._tick_at) if self._tick_at is not None else first

    def _fire_timers(self, now: float) -> None:
        presence = self.state.presence
        while self._timers and self._timers[0][0] <= now:
            deadline, _seq, kind, user = heapq.heappop(self._timers)
            if kind == "typing":
                if presence.typing_due(user, now):
                    self._diff(update=[user])
            elif kind == "receipts":
                self._receipts_at = None
                self._send_receipts()
            elif kind == "reap":
                if deadline == self._reap_at:  # else stale: disarmed by a join (or re-armed earlier)
                    self._reap_at = None
                    self._reap()
            elif presence.grace_due(user, now):
                self._remove_member(user, consented=False)
        if self._tick_at is not None and self._tick_at <= now and self.logic is not None:
            period = 1 / self.logic.tick_rate
            dt = now - self._tick_at + period
            self._tick_at = max(self._tick_at + period, now)  # drift-free, but never a burst of catch-ups
            self.logic.on_tick(self.context, dt)

    # -- output -----------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The wall clock in ms, read once per turn: every timestamp of one turn is the same (a chat
        turn asked for it three times per message)."""
        ms = self._turn_ms
        if ms is None:
            ms = int(self.config.wall_clock() * 1000)
            if self._in_turn:
                self._turn_ms = ms
        return ms

    def emit(self, event_type: type[RoomEvent], *, validate: bool = True, **fields: Any) -> None:
        """Broadcast a room event: next seq, encoded and framed once, kept for resume.

        ``validate=False`` only for events made of values the room already validated (chat,
        presence, receipts); anything an application or room logic supplied is checked.

        Raises:
            RoomError: ``too_large`` when the event would not fit a server frame (a ``send`` body at
                the client frame limit plus the event's envelope): the sender is refused, and as the
                encoding comes first no seq is used up and nothing was sent.
        """
        state = self.state
        make: Any = event_type  # every RoomEvent declares room, epoch, seq and ts (frames.py)
        frame = make(room=state.room_id, epoch=state.epoch, seq=state.seq + 1, ts=self.now_ms(), **fields)
        try:
            data = ws_frame(encode(frame, SERVER_LIMITS, validate=validate))
        except LocalProtocolError as error:
            if error.code is not ErrorCode.TOO_LARGE:
                raise
            raise RoomError(ErrorCode.TOO_LARGE, f"the {frame.TYPE} event would exceed the frame limit") from None
        state.seq += 1  # stored as the event's number: no counters write (state.stored_position)
        self._entries.append((None, data))
        state.record_event(state.seq, data)

    def _send(self, peer: Peer, frame: ServerFrame, *, validate: bool = True) -> None:
        self._entries.append((peer, ws_frame(encode(frame, SERVER_LIMITS, validate=validate))))

    def _ok(self, peer: Peer, request_id: int, result: Any = None, *, validate: bool = True) -> None:
        self._send(peer, Ok(id=request_id, result=result), validate=validate and result is not None)

    def _error(self, peer: Peer, request_id: int | None, error: RoomError) -> None:
        self._stats.errors[error.code.value] += 1
        self._send(peer, ErrorReply(id=request_id, code=error.code.value, message=error.message[:512],
                                    retry_ms=error.retry_ms))

    def _attach(self, peer: Peer) -> None:
        if not peer.alive:  # it disconnected while its request waited in the inbox
            return
        peers = self.runtime.peers
        current = peers.get(peer.sid)
        if current is peer:
            return
        if current is not None:
            self._detach(current)
        self._mark(peer, True)
        peers[peer.sid] = peer
        peer.rooms.add(self.state.room_id)

    def _detach(self, peer: Peer) -> None:
        if self.runtime.peers.get(peer.sid) is not peer:
            return
        self._mark(peer, False)
        del self.runtime.peers[peer.sid]
        peer.rooms.discard(self.state.room_id)

    def _mark(self, peer: Peer, attached: bool) -> None:
        if peer not in self._initial:
            self._initial[peer] = self.runtime.peers.get(peer.sid) is peer
        self._changes.setdefault(peer, []).append((len(self._entries), attached))

    def _flush(self) -> None:
        """Hand the turn's frames to each session: one push each, in order.

        A turn that attached or detached no session (every chat turn) takes the direct way: one pass
        sorts the entries into broadcasts and replies, each session without a reply gets the joined
        broadcasts, and each session with one gets them with its replies spliced in where they were
        made. Only a turn with attach/detach marks replays the entries per session (whether a session
        gets a broadcast depends on when in the turn it was attached); the per-entry walk per session
        was most of a 10-member chat turn's flush. The entries are swapped out first: a push whose
        overflow closes its connection must not feed this flush.
        """
        entries = self._entries
        changes = self._changes
        if changes:
            initial = self._initial
            self._entries, self._changes, self._initial = [], {}, {}
            if entries:
                self._flush_marked(entries, changes, initial)
            return
        if not entries:
            return
        self._entries = []
        peers = self.runtime.peers
        broadcast: list[bytes] = []
        replies: dict[Peer, list[tuple[int, bytes]]] | None = None
        for target, data in entries:
            if target is None:
                broadcast.append(data)
            elif replies is None:
                replies = {target: [(len(broadcast), data)]}
            elif target in replies:
                replies[target].append((len(broadcast), data))
            else:
                replies[target] = [(len(broadcast), data)]
        if broadcast:
            joined = broadcast[0] if len(broadcast) == 1 else b"".join(broadcast)
            if replies is None:
                for peer in peers.values():
                    peer.push(joined)
                return
            for peer in peers.values():
                if peer not in replies:
                    peer.push(joined)
        if replies is None:  # pragma: no cover - entries hold a broadcast or a reply
            return
        for peer, items in replies.items():
            if peers.get(peer.sid) is peer:
                parts: list[bytes] = []
                start = 0
                for position, data in items:
                    if position > start:
                        parts += broadcast[start:position]
                        start = position
                    parts.append(data)
                if start < len(broadcast):
                    parts += broadcast[start:]
            else:  # a reply to a session not attached here (refused, or it left): its replies only
                parts = [data for _position, data in items]
            peer.push(parts[0] if len(parts) == 1 else b"".join(parts))

    def _flush_marked(self, entries: list[tuple[Peer | None, bytes]], changes: dict[Peer, list[tuple[int, bool]]],
                      initial: dict[Peer, bool]) -> None:
        """The flush of a turn that attached or detached sessions: each one marked gets the
        broadcasts made while it was attached (``changes`` says from which entry on), and its replies."""
        special: set[Peer] = {peer for peer, _ in entries if peer is not None}
        special.update(changes)
        broadcast = [data for peer, data in entries if peer is None]
        if broadcast:
            joined = broadcast[0] if len(broadcast) == 1 else b"".join(broadcast)
            for peer in self.runtime.peers.values():
                if peer not in special:
                    peer.push(joined)
        for peer in special:
            attached = initial.get(peer, self.runtime.peers.get(peer.sid) is peer)
            pending = changes.get(peer, [])
            cursor = 0
            parts: list[bytes] = []
            for index, (target, data) in enumerate(entries):
                while cursor < len(pending) and pending[cursor][0] <= index:
                    attached = pending[cursor][1]
                    cursor += 1
                if target is peer or (target is None and attached):
                    parts.append(data)
            if parts:
                peer.push(parts[0] if len(parts) == 1 else b"".join(parts))

    def _sync_to(self, peer: Peer, reason: str) -> None:
        state = self.state
        self._send(peer, Sync(room=state.room_id, epoch=state.epoch, seq=state.seq, ts=self.now_ms(),
                              snapshot=self._snapshot(peer.user), reason=reason))

    def _snapshot(self, user: str | None) -> RoomSnapshot:
        return self.state.snapshot(user, self.config.page_default)

    def _diff(self, join: Sequence[str] = (), update: Sequence[str] = (), leave: Sequence[str] = (),
              reason: str | None = None) -> None:
        presence = self.state.presence
        self.emit(
            PresenceDiff,
            validate=False,
            join=tuple(presence.members[u].view() for u in join),
            update=tuple(presence.members[u].view() for u in update if u in presence.members),
            leave=tuple(leave),
            reason=reason,
        )

    # -- requests ---------------------------------------------------------------------------------

    def _host_only(self, peer: Peer, action: str) -> None:
        if self.state.host != peer.user:
            raise RoomError(ErrorCode.FORBIDDEN, f"only the host may {action}")

    def _handle(self, peer: Peer, frame: ClientFrame, now: float) -> None:
        """Run one request through its handler in :data:`_HANDLERS` (one small rule per frame type).

        Joins and resumes are the only requests a non-member may make; every other handler runs
        after the membership check, so no handler can forget it.
        """
        handler = _HANDLERS.get(type(frame))
        if handler is None:  # pragma: no cover - the gateway routes only room frames here
            raise RoomError(ErrorCode.UNSUPPORTED, f"{frame.TYPE} is not a room request")
        if type(frame) not in _OPEN_TO_NON_MEMBERS:
            presence = self.state.presence
            user = peer.user
            if user not in presence.members or self.runtime.peers.get(peer.sid) is not peer:  # the membership check
                raise RoomError(ErrorCode.NOT_MEMBER, "join the room first")
            presence.seen(user, self.now_ms())
        handler(self, peer, frame, now)

    def _on_join(self, peer: Peer, frame: Join | JoinOrCreate | Create, now: float) -> None:
        self._join(peer, frame.id)

    def _on_resume(self, peer: Peer, frame: Resume, now: float) -> None:
        self._resume(peer, frame)

    def _on_chat_send(self, peer: Peer, frame: ChatSend, now: float) -> None:
        state = self.state
        user = peer.user
        if state.presence.members[user].typing_until is not None:
            state.presence.set_typing(user, False, now, 0)
            self._diff(update=[user])
        ts = self.now_ms()
        n, ts, record, dup = state.chat.send(user=user, name=peer.name, cid=frame.cid, text=frame.text,
                                             meta=frame.meta, ts=ts)
        packed_ts = self._emit_chat(n, record, ts) if not dup else _packb(ts)  # a repeat: the original's
        # ``ok`` with a ChatAck, {"t": "ok", "id": frame.id, "result": {"id", "n", "ts", "dup"}}, packed
        # from its parts: the keys are constant, three values are packed (ts already was, for the
        # event), the bytes encode(Ok(...)) makes (tests pin them); a nested dict pack cost ~3 k more.
        payload = b"".join((b"\x83\xa1t\xa2ok\xa2id", _packb(frame.id), b"\xa6result\x84\xa2id", _packb(f"m{n}"),
                            b"\xa1n", _packb(n), b"\xa2ts", packed_ts, b"\xa3dup\xc3" if dup else b"\xa3dup\xc2"))
        self._entries.append((peer, ws_frame(payload)))

    def _emit_chat(self, n: int, record: bytes, ts: int) -> bytes:
        """Broadcast a ``chat`` event around message ``n``'s ``record`` already packed: the event is
        the record's bytes behind a packed head, so the message is packed once, for the wire and the
        store alike (the same bytes as ``emit(ChatEvent, ...)``, whose ``msg`` is the last field).
        The head's ``t``, ``room`` and ``epoch`` are packed once per actor (and epoch): only ``seq``
        and ``ts`` are packed per message (a dict pack per message cost ~3 k instructions more), and
        the frame is joined from its parts in one copy. ``ts`` is the turn's (the message's own); the
        record and the event are marked for the turn's writes
        in one call (``RoomState.chat_sent``). Returns ``ts`` packed (the ``ok`` carries it too)."""
        state = self.state
        seq = state.seq + 1
        head = self._chat_head
        if head is None or self._chat_epoch != state.epoch:
            fixed = _packb({"t": "chat", "room": state.room_id, "epoch": state.epoch})
            head = self._chat_head = b"\x86" + fixed[1:] + b"\xa3seq"  # a fixmap of 6: these 3, seq, ts, msg
            self._chat_epoch = state.epoch
        packed_seq = _packb(seq)
        packed_ts = _packb(ts)
        size = len(head) + len(packed_seq) + 3 + len(packed_ts) + 4 + len(record)
        if size > SERVER_LIMITS.max_frame_bytes:  # pragma: no cover - a record is < 1/8 frame
            raise RoomError(ErrorCode.TOO_LARGE, "the chat event would exceed the frame limit")
        data = b"".join((ws_head(size), head, packed_seq, b"\xa2ts", packed_ts, b"\xa3msg", record))
        self._entries.append((None, data))
        state.chat_sent(n, record, seq, data)
        return packed_ts

    def _on_leave(self, peer: Peer, frame: Leave, now: float) -> None:
        self._remove_member(peer.user, consented=True)
        self._ok(peer, frame.id)

    def _on_members(self, peer: Peer, frame: Members, now: float) -> None:
        members, cursor = self.state.presence.page(frame.cursor, frame.limit or self.config.page_default)
        self._ok(peer, frame.id, dump_record(MembersPage(members=tuple(members), next=cursor)))

    def _on_presence_set(self, peer: Peer, frame: PresenceSet, now: float) -> None:
        state = self.state
        if state.presence.update(peer.user, peer.sid, frame.data, frame.status, self.now_ms()):
            self._diff(update=[peer.user])
            state.touch_member(peer.user)
        self._ok(peer, frame.id)

    def _on_typing(self, peer: Peer, frame: Typing, now: float) -> None:
        if self.state.presence.set_typing(peer.user, frame.on, now, self.config.typing_timeout):
            self._diff(update=[peer.user])
        if frame.on:
            self._arm(now + self.config.typing_timeout, "typing", peer.user)
        self._ok(peer, frame.id)

    def _on_chat_edit(self, peer: Peer, frame: ChatEdit, now: float) -> None:
        message = self.state.chat.edit(user=peer.user, msg_id=frame.msg, text=frame.text, ts=self.now_ms())
        self.state.touch_chat(message.n)
        self.emit(ChatEdited, msg=message, validate=False)
        self._ok(peer, frame.id)

    def _on_chat_delete(self, peer: Peer, frame: ChatDelete, now: float) -> None:
        state = self.state
        message = state.chat.delete(user=peer.user, msg_id=frame.msg, is_host=state.host == peer.user,
                                    ts=self.now_ms())
        state.touch_chat(message.n)
        self.emit(ChatDeleted, msg=message.id, n=message.n, by=peer.user, validate=False)
        self._ok(peer, frame.id)

    def _on_history(self, peer: Peer, frame: History, now: float) -> None:
        messages, before = self.state.chat.page(frame.before, frame.limit or self.config.page_default)
        self._ok(peer, frame.id, dump_record(HistoryPage(messages=tuple(messages), next=before)))

    def _on_read(self, peer: Peer, frame: Read, now: float) -> None:
        moved = self.state.chat.mark_read(peer.user, frame.n)
        if moved is not None:
            self.state.touch_read(peer.user)
            self.emit(ReadReceipt, user=peer.user, n=moved, validate=False)
            self._arm_receipts(now)
        self._ok(peer, frame.id)

    # -- delivery status (engine/receipts.py, PROTOCOL.md §17) -------------------------------------

    def _on_delivered(self, peer: Peer, frame: Delivered, now: float) -> None:
        """Move the delivered cursor. A move is not a room event and makes no commit of its own: its
        ``ok`` is held until the commit that stores it (the room's next, or the window's end)."""
        chat = self.state.chat
        moved = chat.delivered.mark(peer.user, frame.n, last_n=chat.last_n, read=chat.read.get(peer.user, 0))
        if moved is None:  # behind the cursor, a repeat, or nothing new: nothing to store
            self._ok(peer, frame.id)
            return
        self.runtime.held.append(Request(peer, frame))
        self._arm_receipts(now)

    def _arm_receipts(self, now: float) -> None:
        """Open the receipt window (one at a time, on the room's one timer heap: no task per member)."""
        if self._receipts_at is None:
            self._receipts_at = now + self.config.receipt_window
            self._arm(self._receipts_at, "receipts", "")

    def _send_receipts(self) -> None:
        """End of a receipt window: store the moved cursors, and send each author with an attached
        session one ``receipts`` frame of its messages whose status changed (the newest
        ``RECEIPTS_MAX``). Frames per window: one per online author, not one per move per member."""
        state = self.state
        self._window_ended = True
        state.flush_delivered = True
        chat = state.chat
        changed = chat.delivered.take_changed()
        first = chat.first_n
        if changed is None or first is None:
            return
        sessions: dict[str, list[Peer]] = {}
        for peer in self.runtime.peers.values():
            sessions.setdefault(peer.user, []).append(peer)
        pages = by_author(chat.heads(min(changed[1], chat.last_n), max(changed[0], first)), sessions.keys(),
                          RECEIPTS_MAX)
        if not pages:
            return
        census = Census(state.presence.members.keys(), chat.read, chat.delivered)
        for author, messages in pages.items():
            frame = Receipts(room=state.room_id, msgs=tuple(census.status(m) for m in messages))
            data = ws_frame(encode(frame, SERVER_LIMITS, validate=False))
            for peer in sessions[author]:
                self._entries.append((peer, data))
            self._stats.receipts += 1

    def _on_chat_status(self, peer: Peer, frame: ChatStatus, now: float) -> None:
        chat = self.state.chat
        message = chat.get(frame.n)
        if message is None or message.deleted:
            raise RoomError(ErrorCode.NOT_FOUND, f"no message {frame.n}")
        census = Census(self.state.presence.members.keys(), chat.read, chat.delivered)
        status = census.status(message)
        users: list[str] = []
        cursor: str | None = None
        if frame.who is not None:
            users, cursor = census.users(message, read=frame.who is StatusList.READ, after=frame.cursor,
                                         limit=frame.limit or self.config.page_default)
        page = ChatStatusPage(n=status.n, delivered=status.delivered, read=status.read, of=status.of,
                              users=tuple(users), next=cursor)
        self._ok(peer, frame.id, dump_record(page))

    def _on_end(self, peer: Peer) -> None:
        """A session ended itself (``bye``): what its reconnect grace would do, now, with its own
        reason. Another live session of the same user keeps the member (this session just goes)."""
        if self.runtime.peers.get(peer.sid) is not peer:
            return  # not attached here any more (left, kicked, closed)
        self._detach(peer)
        presence = self.state.presence
        if presence.end(peer.user, peer.sid):
            self.state.touch_member(peer.user)
            self._diff(update=[peer.user])
        else:
            self._remove_member(peer.user, consented=True, reason="ended")

    def _on_state_set(self, peer: Peer, frame: StateSet, now: float) -> None:
        self._host_only(peer, "change the game state")
        if frame.version != self.state.version:
            raise RoomError(ErrorCode.CONFLICT, f"version is {self.state.version}, not {frame.version}")
        version = self.change_state(frame.state, frame.phase, reason=None, keep_state=frame.state is None)
        self._ok(peer, frame.id, {"version": version})

    def _on_send(self, peer: Peer, frame: Send, now: float) -> None:
        if self.logic is not None:
            result = self.logic.on_message(self.context, peer.user, frame.kind, frame.body)
            try:
                self._ok(peer, frame.id, result)
            except LocalProtocolError as error:
                # The logic's bug, like a hook that raises: crash the turn so that the supervisor
                # rolls its effects back. Refusing only the reply (as for a page) committed and sent
                # the state change and broadcasts made for a request answered too_large/internal.
                raise _LogicResultError(f"on_message returned a result that cannot be sent: {error}") from None
        else:
            self.emit(MessageEvent, kind=frame.kind, body=frame.body, sender=peer.user)
            self._ok(peer, frame.id)

    def _on_kick(self, peer: Peer, frame: Kick, now: float) -> None:
        self._host_only(peer, "kick members")
        self.kick(frame.user)
        self._ok(peer, frame.id)

    def _on_host_set(self, peer: Peer, frame: HostSet, now: float) -> None:
        state = self.state
        self._host_only(peer, "hand hosting over")
        if frame.user not in state.presence:
            raise RoomError(ErrorCode.NOT_FOUND, "no such member")
        if frame.user != state.host:
            state.host = frame.user
            state.touch("host")
            self.emit(HostChanged, user=frame.user)
        self._ok(peer, frame.id)

    def _join(self, peer: Peer, request_id: int) -> None:
        if not peer.alive:
            raise RoomError(ErrorCode.INVALID_STATE, "the connection is closing")
        state = self.state
        self._check_scope(peer)
        wall = self.now_ms()
        presence = state.presence
        if peer.user in presence:
            if self.runtime.peers.get(peer.sid) is not peer:
                self._check_room_count(peer)
                self._attach(peer)
                if presence.attach(peer.user, peer.sid, peer.name, wall, peer.role):
                    self._diff(update=[peer.user])
        else:
            barred = self.runtime.barred_for(peer.user, trio.current_time())
            if barred > 0:
                raise RoomError(ErrorCode.FORBIDDEN, "kicked from this room; retry later",
                                retry_ms=math.ceil(barred * 1000))
            if len(presence) >= state.options.max_members:
                raise RoomError(ErrorCode.ROOM_FULL, "the room is full")
            self._check_room_count(peer)
            if self.logic is not None:
                self.joining = peer
                try:
                    self.logic.on_join(self.context, peer.user, peer.name)
                finally:
                    self.joining = None
            self._attach(peer)
            presence.add(peer.user, peer.name, peer.sid, wall, peer.role)
            state.touch_member(peer.user)
            state.touch_membership(peer.user)
            if len(presence) >= 2 and not state.shared:
                state.shared = True
                state.touch("counters")
            self._check_empty()
            self._info_dirty = True
            self._diff(join=[peer.user])
            if state.host is None:
                state.host = peer.user
                state.touch("host")
                self.emit(HostChanged, user=peer.user)
        self._ok(peer, request_id, dump_record(self._snapshot(peer.user)))

    def _check_scope(self, peer: Peer) -> None:
        """A token's ``room`` claim admits that room only, on ``join`` and on ``resume`` alike: a
        session token taken over with a scoped user token must not bring the session's other rooms."""
        state = self.state
        if peer.room_scope is not None and not in_scope(peer.room_scope, state.room_id, state.code):
            raise RoomError(ErrorCode.FORBIDDEN, "the token is scoped to another room")

    def _check_room_count(self, peer: Peer) -> None:
        limit = self.config.max_rooms_per_connection
        if self.state.room_id not in peer.rooms and len(peer.rooms) >= limit:
            raise RoomError(ErrorCode.LIMIT_REACHED, f"a connection may be in {limit} rooms at most")

    def _resume(self, peer: Peer, frame: Resume) -> None:
        if not peer.alive:
            raise RoomError(ErrorCode.INVALID_STATE, "the connection is closing")
        state = self.state
        if peer.user not in state.presence:
            raise RoomError(ErrorCode.NOT_MEMBER, "not a member of this room any more")
        self._check_scope(peer)
        self._check_room_count(peer)
        if self.runtime.peers.get(peer.sid) is peer:
            self._detach(peer)  # already attached: this turn's earlier events must not reach it twice
        missed = state.seq - frame.seq
        held = state.replay.first if state.replay else state.seq + 1
        replay = state.replay.after(frame.seq) if missed > 0 else []
        if frame.epoch == state.epoch and 0 <= missed and frame.seq + 1 >= held and self._fits_outbox(replay):
            self._ok(peer, frame.id, dump_record(ResumeResult(replayed=len(replay))))
            self._entries.extend((peer, data) for data in replay)
            self._stats.resumes["replay"] += 1
        else:
            self._ok(peer, frame.id, dump_record(ResumeResult(replayed=0, resync=True)))
            self._sync_to(peer, "resume")
            self._stats.resumes["resync"] += 1
        self._attach(peer)
        if state.presence.attach(peer.user, peer.sid, peer.name, self.now_ms(), peer.role):
            self._diff(update=[peer.user])

    def _fits_outbox(self, replay: list[bytes]) -> bool:
        """Whether a replay can go out as the one push it is: at most half the outbox bounds.

        The trap: a replay over the bounds overflows the member's outbox with the next event anyone
        sends (Close 4000, resumable), and the resume the client then makes asks for the same replay
        again, for ever. A gap the outbox cannot carry is answered like one the room no longer holds:
        ``resync`` and one ``sync`` (its snapshot is cut to fit a frame).
        """
        config = self.config
        return (len(replay) <= config.outbox_max_frames // 2
                and sum(map(len, replay)) <= config.outbox_max_bytes // 2)

    def _remove_member(self, user: str, *, consented: bool, reason: str | None = None) -> None:
        state = self.state
        if state.presence.remove(user) is None:
            return
        state.touch_member(user)
        state.touch_membership(user)
        self._info_dirty = True
        self._diff(leave=[user], reason=reason)
        for peer in [p for p in self.runtime.peers.values() if p.user == user]:
            self._detach(peer)
        if state.host == user:
            state.host = state.next_host(user)
            state.touch("host")
            self.emit(HostChanged, user=state.host)
        if self.logic is not None:
            self.logic.on_leave(self.context, user, consented=consented)
        self._check_empty()

    def _check_empty(self) -> None:
        """Start the reaper's clock when the room has no member (and stop it when one joins)."""
        state = self.state
        if len(state.presence):
            self._reap_at = None  # disarmed: its heap entry is stale (skipped, see _next_deadline)
            if state.empty_since is not None:
                state.empty_since = None
                state.touch("counters")
            return
        if state.empty_since is None:
            state.empty_since = self.config.wall_clock()
            state.touch("counters")
        remaining = state.empty_since + self._ttl() - self.config.wall_clock()
        deadline = trio.current_time() + max(remaining, 0.0)
        if self._reap_at is None or deadline < self._reap_at:  # one reap timer at a time
            self._reap_at = deadline
            self._arm(deadline, "reap", "")

    def _ttl(self) -> float:
        """How long the room may stay empty: ``room_ttl``, or ``solo_room_ttl`` if it was never shared."""
        return empty_ttl(self.config, self.state.shared)

    def _reap(self) -> None:
        state = self.state
        if len(state.presence) or state.empty_since is None:
            return
        if self.config.wall_clock() < state.empty_since + self._ttl():
            self._check_empty()  # re-arm: the wall clock and the timer clock drifted apart
            return
        log.info("room %s expired after %.0f s without members", state.room_id, self._ttl())
        self.close_room("expired", "the room was empty for too long")

    def _on_disconnect(self, peer: Peer, now: float) -> None:
        if self.runtime.peers.get(peer.sid) is not peer:
            return
        self._detach(peer)
        presence = self.state.presence
        if not presence.drop(peer.user, peer.sid, now, self.config.reconnect_grace, peer.last_heard_ms):
            return
        self.state.touch_member(peer.user)  # the drop is when last_seen is stored (not per request)
        self._diff(update=[peer.user])
        entry = presence.members[peer.user]
        if entry.grace_until is not None:
            self._arm(entry.grace_until, "grace", peer.user)
            if self.state.phase is Phase.PLAYING:
                self._member_inactive(peer.user)

    def _member_inactive(self, user: str) -> None:
        policy = self.state.options.inactive
        applied = policy is not InactivePolicy.NONE
        if policy is InactivePolicy.RESET:
            self.change_state(None, Phase.LOBBY, reason="member_inactive", keep_state=False)
        elif policy is InactivePolicy.END:
            self.change_state(None, Phase.ENDED, reason="member_inactive", keep_state=True)
        if self.logic is not None:
            self.logic.on_inactive(self.context, user, applied)

    def change_state(self, game: Any, phase: Phase | None, *, reason: str | None, keep_state: bool) -> int:
        """Replace the game state and/or phase; version + 1; broadcast. Used by hosts and logic.

        The event is built first and the state changed only once it is: a refused event (a state
        over ``max_state_bytes``, ``too_large``) must leave the version as it was, or the host's next
        compare-and-set would fail against a version no member ever saw.
        """
        state = self.state
        game = state.game if keep_state else game
        phase = state.phase if phase is None else phase
        self.emit(StateEvent, version=state.version + 1, phase=phase, state=game, reason=reason)
        if phase is not state.phase:
            state.phase = phase
            self._info_dirty = True
        state.game = game
        state.version += 1
        state.touch("game")
        return state.version

    # -- in-process operations (run inside a turn through Call) ------------------------------------

    def publish(self, kind: str, body: Any) -> None:
        """Broadcast a ``message`` event as the server."""
        self.emit(MessageEvent, kind=kind, body=body)

    def kick(self, user: str) -> None:
        """Remove a member from this room (the host's ``kick``, ``ops.kick`` and admin ``kick``).

        What a kick means: the member leaves the room (everyone, the kicked user's own sessions
        included, gets a ``presence`` diff with ``leave: [user]`` and ``reason: "kicked"``, the last
        event those sessions get from the room); its sessions are detached but their connections stay
        open (they may be in other rooms: a kick is about one room, so no close code is sent); and
        its ``join`` of this room is refused for ``kick_cooldown`` (``forbidden`` with ``retry_ms``).
        The cool-down lives on the runtime, so it survives an actor restart but not a server restart.
        """
        if user not in self.state.presence:
            raise RoomError(ErrorCode.NOT_FOUND, "no such member")
        self._remove_member(user, consented=False, reason="kicked")
        # After the removal: a logic hook that refuses (or crashes) the kick leaves no cool-down.
        self.runtime.bar(user, trio.current_time() + self.config.kick_cooldown)

    def merge_member(self, old: str, new: str, name: str) -> bool:
        """User ``old`` was merged into ``new`` by the directory (PROTOCOL.md §15): its seat here
        becomes ``new``'s. Returns whether ``old`` was a member.

        What moves: the seat (in ``old``'s place in join order, or folded into ``new``'s when ``new``
        is a member already), hosting, and the read cursor (the further of the two). Messages keep
        their author id ``old`` (the directory maps it). ``old``'s sessions are detached (the
        gateway closes them with 4006); a seat taken over shows ``new`` offline, in its reconnect
        grace, until one of ``new``'s sessions joins. Members get one ``presence`` diff: ``leave:
        [old]`` and ``new`` in ``join`` (or ``update``), ``reason: "merged"``. Room logic is not told.
        """
        state = self.state
        presence = state.presence
        entry = presence.members.get(old)
        if entry is None or old == new:
            return False
        for peer in [p for p in self.runtime.peers.values() if p.user == old]:
            self._detach(peer)
        if new in presence:
            presence.remove(old)
            joined, updated = (), (new,)
        else:
            entry.user, entry.name = new, name or entry.name
            entry.sessions, entry.typing_until = {}, None
            entry.grace_until = trio.current_time() + self.config.reconnect_grace
            presence.members = {(new if user == old else user): e for user, e in presence.members.items()}
            self._arm(entry.grace_until, "grace", new)
            joined, updated = (new,), ()
        state.touch_member(old)
        state.touch_member(new)
        read = state.chat.read
        if old in read:
            # ``old`` keeps its cursor (it is no member, so no count reads it): a restart derives it
            # from its messages anyway (ChatLog.restore), and a cursor must come back as it was.
            read[new] = max(read[old], read.get(new, 0))
            state.touch_read(new)
        self._info_dirty = True
        self._diff(join=joined, update=updated, leave=[old], reason="merged")
        if state.host == old:
            state.host = new
            state.touch("host")
            self.emit(HostChanged, user=new)
        return True

    def read_snapshot(self) -> RoomSnapshot:
        """The room as an operator sees it."""
        return self._snapshot(None)

    @property
    def close_reason(self) -> str | None:
        """The ``room_closed`` code this actor closed (or is closing) its room with."""
        return self._close[0] if self._close is not None else None

    def close_room(self, code: str, message: str) -> None:
        """Close at the end of this turn: members get ``room_closed``; the room is disposed."""
        if self._close is None:
            self._close = (code, message)

    def _emit_close(self) -> None:
        assert self._close is not None
        code, message = self._close
        if self.logic is not None:
            self.logic.on_dispose(self.context)
        self.emit(RoomClosed, code=code, message=message[:512])
        self.state.closing = True  # this turn's commit deletes the room's meta: a restart will not bring it back
        for peer in list(self.runtime.peers.values()):
            self._detach(peer)

    def _dispose(self) -> None:
        """Stop taking commands; answer the ones still queued."""
        self.runtime.closed = True
        self.runtime.refuse_queued(RoomError(ErrorCode.NOT_FOUND, "the room is closed"))

    def rollback_attachments(self) -> None:
        """After a crashed turn: undo its attaches and detaches (they outlive the actor, the turn did not)."""
        peers = self.runtime.peers
        for peer, attached in self._initial.items():
            if attached:
                peers[peer.sid] = peer
                peer.rooms.add(self.state.room_id)
            elif peers.get(peer.sid) is peer:
                del peers[peer.sid]
                peer.rooms.discard(self.state.room_id)
        self._initial.clear()
        self._changes.clear()


def empty_ttl(config: Config, shared: bool) -> float:
    """How long a room may stay empty: ``room_ttl``, or ``solo_room_ttl`` if it was never shared."""
    return config.room_ttl if shared else min(config.solo_room_ttl, config.room_ttl)


class _LogicResultError(RuntimeError):
    """Room logic returned an ``on_message`` result no ``ok`` can carry (crashes the turn)."""


_Handler = Callable[[RoomActor, Peer, Any, float], None]

_HANDLERS: dict[type[ClientFrame], _Handler] = {
    Create: RoomActor._on_join,
    Join: RoomActor._on_join,
    JoinOrCreate: RoomActor._on_join,
    Resume: RoomActor._on_resume,
    ChatSend: RoomActor._on_chat_send,
    ChatEdit: RoomActor._on_chat_edit,
    ChatDelete: RoomActor._on_chat_delete,
    History: RoomActor._on_history,
    Read: RoomActor._on_read,
    Delivered: RoomActor._on_delivered,
    ChatStatus: RoomActor._on_chat_status,
    Leave: RoomActor._on_leave,
    Members: RoomActor._on_members,
    PresenceSet: RoomActor._on_presence_set,
    Typing: RoomActor._on_typing,
    StateSet: RoomActor._on_state_set,
    Send: RoomActor._on_send,
    Kick: RoomActor._on_kick,
    HostSet: RoomActor._on_host_set,
}
"""Every room request, by frame type: the room's rules read as a table (as h11's state machine is)."""

_OPEN_TO_NON_MEMBERS = frozenset({Create, Join, JoinOrCreate, Resume})
"""Requests a session may send before it is a member; every other handler runs after ``_member``."""
