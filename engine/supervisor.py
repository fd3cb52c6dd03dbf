"""Supervision of room actors: one_for_one, transient, with a restart-intensity window (as OTP).

Each room runs in its own supervised task in one nursery. A room actor that raises is rebuilt from
the last committed state (its members stay connected and get a ``sync``); the requests of the turn
that crashed are answered ``internal`` (their effects were never committed nor sent). More than
``restart_intensity`` crashes within ``restart_period`` seconds close the room with a ``room_closed``
event; other rooms never notice. A normal return (the room closed) is not restarted.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import trio

from roost.protocol.codec import SERVER_LIMITS, encode
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import ErrorReply

from .config import Config
from .errors import RoomError
from .logic import RoomLogic
from .metrics import RoomStats
from .outbox import ws_frame
from .room import Request, RoomActor, RoomRuntime
from .state import RoomState
from .store import Store

__all__ = ["Supervisor"]

log = logging.getLogger("roost.supervisor")


class Supervisor:
    """Starts and supervises room actors in a nursery it is given (the engine's)."""

    def __init__(
        self, nursery: trio.Nursery, store: Store, config: Config, on_gone: Callable[[RoomRuntime], None],
        *, stats: RoomStats | None = None,
    ) -> None:
        self._nursery = nursery
        self._store = store
        self._config = config
        self._on_gone = on_gone
        self.stats = stats or RoomStats()
        """Shared by every room of this supervisor (the router hands it to each RoomRuntime)."""
        self.restarts = 0
        """Room actor crashes (each one restarted or, past the intensity, closed)."""
        self.created = 0
        self.restored = 0
        self.closed: collections.Counter[str] = collections.Counter()
        """Rooms closed for good, by the ``room_closed`` code (``expired``: reaped; ``internal``: crashed
        too often), and ``failed`` for a room that could not be recovered."""

    def make_logic(self, name: str | None) -> RoomLogic | None:
        """A fresh logic instance for a room (a restart gets a new one: the old may be corrupt)."""
        if name is None:
            return None
        factory = self._config.logics.get(name)
        if factory is None:
            raise RoomError(ErrorCode.UNSUPPORTED, f"no room logic named {name!r}")
        logic: RoomLogic = factory()
        return logic

    async def start(self, runtime: RoomRuntime, state: RoomState, *, created: bool) -> None:
        """Start supervising a room; returns once its actor is ready to take commands."""
        self.created += 1
        await self._nursery.start(self._supervise, runtime, state, created)

    def start_soon(self, runtime: RoomRuntime, state: RoomState) -> None:
        """Start supervising a restored room without waiting for it: requests wait in its inbox
        until the actor runs (restart recovery starts thousands of rooms; one scheduler round trip
        each would dominate)."""
        self.restored += 1
        self._nursery.start_soon(self._supervise, runtime, state, False)

    async def _supervise(
        self,
        runtime: RoomRuntime,
        state: RoomState,
        created: bool,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        try:
            await self._supervise_loop(runtime, state, created)
        except Exception:
            # Recovery itself failed (the store cannot be read, the logic is gone from the config...):
            # this room closes; the engine and every other room go on.
            log.exception("room %s could not be recovered: closing it", runtime.room_id,
                          extra={"room": runtime.room_id, "event": "room_abandoned"})
            self.closed["failed"] += 1
            self._abandon(runtime)
        finally:
            self._on_gone(runtime)

    async def _supervise_loop(self, runtime: RoomRuntime, state: RoomState, created: bool) -> None:
        config = self._config
        failures: collections.deque[float] = collections.deque()
        while True:
            actor = RoomActor(runtime, state, self._store, config, self.make_logic(state.options.logic),
                              created=created)
            created = False
            try:
                await actor.run()
            except Exception:
                log.exception("room %s crashed", runtime.room_id, extra={"room": runtime.room_id, "event": "room_crashed"})
            else:
                if runtime.closed:  # closed for good (not a shutdown): every key goes too
                    self.closed[actor.close_reason or "closed"] += 1
                    await self._store.dispose_room(runtime.room_id)
                return
            self.restarts += 1
            actor.rollback_attachments()
            self._answer_crashed_turn(runtime)
            now = trio.current_time()
            failures.append(now)
            while failures and failures[0] < now - config.restart_period:
                failures.popleft()
            state = await self._reload(runtime)
            if len(failures) > config.restart_intensity:
                log.error("room %s crashed %d times in %.1fs: closing it", runtime.room_id, len(failures),
                          config.restart_period, extra={"room": runtime.room_id, "event": "room_closed_after_crashes",
                                                        "crashes": len(failures)})
                await self._close_after_crashes(runtime, state)
                self.closed[ErrorCode.INTERNAL.value] += 1
                return
            runtime.resync_reason = "restarted"

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
