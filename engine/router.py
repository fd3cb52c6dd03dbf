"""The single registry of live rooms: by id and by code, with exactly-once creation.

Trio runs one task at a time, so a check-and-insert with no ``await`` between them is atomic: a code
is reserved in the same step that finds it free, and concurrent ``join_or_create`` calls for one code
wait for the one creation in progress instead of racing it. Seats are then taken in the room actor,
serially, so capacity never overshoots.

In a cluster (``cluster``: this process as a shard's owner, engine/placement.py) a code is also
claimed in the directory before its room is made, so exactly one room per code exists across every
node; a room another node serves is answered ``moved`` with that node's address (the client goes
there: a member's traffic is never forwarded per message), one whose node is down ``unavailable``.
The local check still comes first: a room this process serves costs no round trip to Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import trio

from roost.protocol.codec import fit_page, load_record, record_size
from roost.protocol.errors import ProtocolError
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import LobbyPage, RoomInfo

from .codes import new_code, new_room_id, normalize_code
from .config import Config
from .errors import RoomError
from .bus import ClusterLobby
from .placement import DIRECTORY_DEADLINE, Lease, PlacementUnavailable, ShardOwner
from .room import RoomRuntime
from .scheduler import TurnScheduler
from .state import RoomOptions, RoomState
from .supervisor import Supervisor

__all__ = ["Router"]

T = TypeVar("T")


class Router:
    """Rooms by id and by normalised code."""

    def __init__(self, config: Config, supervisor: Supervisor, *, cluster: ShardOwner | None = None) -> None:
        self._config = config
        self._supervisor = supervisor
        self.cluster = cluster
        self.cluster_lobby: ClusterLobby | None = None
        """In a cluster: every process's public rooms (engine/bus.py), for :meth:`lobby_anywhere`."""
        self.rooms: dict[str, RoomRuntime] = {}
        self._codes: dict[str, str] = {}
        self._creating: dict[str, trio.Event] = {}
        self._waker = supervisor.wake  # one bound method for every room (not one each)

    @property
    def passes(self) -> TurnScheduler:
        """The turn scheduler, for a caller that readies many rooms at once (``hold``/``release``)."""
        return self._supervisor.scheduler

    def get(self, room_id: str) -> RoomRuntime | None:
        """The live room with this id."""
        return self.rooms.get(room_id)

    def by_code(self, code: str) -> RoomRuntime | None:
        """The live room with this code (any spelling of it)."""
        room_id = self._codes.get(normalize_code(code))
        return self.rooms.get(room_id) if room_id is not None else None

    def find(self, room: str | None, code: str | None) -> RoomRuntime:
        """The room named by id or code, or RoomError not_found."""
        runtime = self.get(room) if room is not None else self.by_code(code or "")
        if runtime is None or runtime.closed:
            raise RoomError(ErrorCode.NOT_FOUND, "no such room")
        return runtime

    async def create(self, options: RoomOptions, *, code: str | None = None, room_id: str | None = None) -> RoomRuntime:
        """Create and start a room. With ``code``, the caller has reserved it (see get_or_create), and
        in a cluster claimed it for ``room_id``."""
        self._supervisor.make_logic(options.logic)  # refuse unknown logic names before anything exists
        claimed = False  # a generated code claimed here (get_or_create takes back its own claims)
        if code is None:
            code = self._free_code()
            if self.cluster is not None:
                code, room_id = await self._claim_fresh(code)
                claimed = True
        room_id = room_id or new_room_id()
        state = RoomState(room_id=room_id, code=code, options=options,
                          created=int(self._config.wall_clock() * 1000), history_limit=self._config.history_limit,
                          replay_limit=self._config.replay_events)
        runtime = RoomRuntime(room_id, code, self._config.room_inbox_size, stats=self._supervisor.stats,
                              waker=self._waker)
        runtime.state = state
        self.rooms[room_id] = runtime
        self._codes[code] = room_id
        try:
            self._supervisor.start(runtime, state, created=True)
        except BaseException:
            self.forget(runtime)
            if claimed and self.cluster is not None:  # the claim of a room that never was
                with trio.CancelScope(shield=True):
                    await self.cluster.unclaim(code, room_id)
            raise
        return runtime

    def _free_code(self) -> str:
        """One namespace for generated and client-chosen codes (both in normal form): draw again until
        free, so a generated code never names a live room or one being created."""
        code = new_code()
        while code in self._codes or code in self._creating:
            code = new_code()
        return code

    async def _claim_fresh(self, code: str) -> tuple[str, str]:
        """Claim a generated code cluster-wide (another node may have drawn it: 40 bits make that
        rare, not impossible), reserved here meanwhile; the ``(code, room_id)`` won. No await follows
        in ``create`` before the room is registered, so a waiter woken here finds it."""
        assert self.cluster is not None
        while True:
            done = trio.Event()
            self._creating[code] = done
            room_id = new_room_id()
            try:
                won, _shard = await self._directory(self.cluster.claim(code, room_id))
            finally:
                del self._creating[code]
                done.set()
            if won == room_id:
                return code, room_id
            code = self._free_code()

    async def _directory(self, call: Awaitable[T]) -> T:
        """A call to the cluster directory; Redis unreachable, slow (past ``DIRECTORY_DEADLINE``: the
        connection's reader waits meanwhile) or recovering is ``unavailable`` with a retry hint."""
        try:
            with trio.fail_after(DIRECTORY_DEADLINE):
                return await call
        except PlacementUnavailable as exc:
            raise RoomError(ErrorCode.UNAVAILABLE, str(exc), retry_ms=1000) from None
        except trio.TooSlowError:
            raise RoomError(ErrorCode.UNAVAILABLE, "the cluster directory is slow to answer", retry_ms=1000) from None

    def _elsewhere(self, owner: Lease | None) -> RoomError:
        """The answer for a room another shard holds: ``moved`` to its owner, or ``unavailable`` while
        it has none (its node is down, restarting or paused: back within a lease period, or when
        its machine is)."""
        if owner is None:
            return RoomError(ErrorCode.UNAVAILABLE, "the room's node cannot be reached now",
                             retry_ms=int(self._config.lease_period * 1000 / 3))
        return RoomError(ErrorCode.MOVED, f"the room is served at {owner.address}", url=owner.address)

    async def locate(self, room: str | None, code: str | None) -> RoomRuntime:
        """The room named by id or code, here or (``moved``/``unavailable``) elsewhere in the cluster."""
        try:
            return self.find(room, code)
        except RoomError:
            if self.cluster is None:
                raise
        cluster = self.cluster
        location = await self._directory(cluster.locate(room_id=room, code=None if code is None else normalize_code(code)))
        if location is None:
            raise RoomError(ErrorCode.NOT_FOUND, "no such room")
        if location.shard != cluster.shard:
            raise self._elsewhere(location.owner)
        # Claimed here, yet not live: its creator died before the room's first commit (a join does not
        # make it; join_or_create does), or it was just closed and its code is being freed.
        raise RoomError(ErrorCode.NOT_FOUND, "no such room")

    async def send_to_owner(self, room: str | None, code: str | None, *, create: bool) -> RoomError:
        """What sends a client that came in through a node's shared port to the worker serving the
        room: ``moved`` to its owner (this worker's own port when that is here, or when the request
        would create a room that does not exist yet), ``unavailable``, or ``not_found``."""
        cluster = self.cluster
        assert cluster is not None, "a shared port exists only in a cluster (roost serve --workers)"
        location = None
        if room is not None or code is not None:
            location = await self._directory(cluster.locate(room_id=room, code=None if code is None else normalize_code(code)))
        if location is None:
            if not create:
                return RoomError(ErrorCode.NOT_FOUND, "no such room")
            return RoomError(ErrorCode.MOVED, "create the room on this worker's own port", url=cluster.address)
        if location.shard == cluster.shard:
            return RoomError(ErrorCode.MOVED, "the room is served on this worker's own port", url=cluster.address)
        return self._elsewhere(location.owner)

    def restore(self, state: RoomState) -> RoomRuntime:
        """Bring back a room from the store (restart recovery); its actor starts soon after."""
        runtime = RoomRuntime(state.room_id, state.code, self._config.room_inbox_size,
                              stats=self._supervisor.stats, waker=self._waker, inbox=False)
        runtime.info = state.info()
        runtime.public = state.options.public
        runtime.state = state  # readable (welcome's unread counts) before its actor first runs
        self.rooms[state.room_id] = runtime
        self._codes[state.code] = state.room_id
        self._supervisor.start_soon(runtime, state)
        return runtime

    async def get_or_create(self, code: str, options: RoomOptions) -> RoomRuntime:
        """The room with ``code``, created with ``options`` if none exists. Exactly once per code."""
        code = normalize_code(code)
        while True:
            existing = self.by_code(code)
            if existing is not None and not existing.closed:
                return existing
            pending = self._creating.get(code)
            if pending is None:
                break
            await pending.wait()
        done = trio.Event()
        self._creating[code] = done
        try:
            if self.cluster is None:
                return await self.create(options, code=code)
            # Refuse what create would refuse before claiming: a refused claim would stay in Redis.
            self._supervisor.make_logic(options.logic)
            room_id, shard = await self._directory(self.cluster.claim(code, new_room_id()))
            if shard != self.cluster.shard:
                raise self._elsewhere(await self._directory(self.cluster.owner(shard)))
            if room_id in self.rooms:  # closed: its keys and then its claim are being deleted
                raise RoomError(ErrorCode.UNAVAILABLE, "the room is closing", retry_ms=200)
            # Ours: just claimed, or claimed by a creation that died before its room's first commit
            # (the claim is the authority: make the room it names).
            try:
                return await self.create(options, code=code, room_id=room_id)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.cluster.unclaim(code, room_id)
                raise
        finally:
            del self._creating[code]
            done.set()

    def forget(self, runtime: RoomRuntime) -> None:
        """Drop a room that has closed (called by the supervisor)."""
        if self.rooms.get(runtime.room_id) is runtime:
            del self.rooms[runtime.room_id]
        if self._codes.get(runtime.code) == runtime.room_id:
            del self._codes[runtime.code]

    def lobby(self, cursor: str | None, limit: int, *, include_private: bool = False) -> LobbyPage:
        """A page of rooms ordered by id; private rooms only for operators.

        Cut by encoded size as well as by ``limit``: each entry carries its room's ``meta``, chosen by
        whoever created the room, so a count alone lets a few rooms make every lobby page too large
        to send (which closed the caller with 1011). Only the entries on the page are measured.
        """
        ids = sorted(
            room_id
            for room_id, runtime in self.rooms.items()
            if (include_private or runtime.public) and runtime.info is not None and not runtime.closed
        )
        if cursor is not None:
            ids = [room_id for room_id in ids if room_id > cursor]
        infos: list[RoomInfo]
        infos, more = fit_page((self.rooms[room_id].info for room_id in ids), limit, record_size)
        return LobbyPage(rooms=tuple(infos), next=infos[-1].room if more else None)

    async def lobby_anywhere(self, cursor: str | None, limit: int) -> LobbyPage:
        """The lobby of the whole cluster (every process's public rooms), or this process's own when
        there is no cluster or Redis cannot say. Entries read from Redis are checked as records (Redis
        is shared: one that does not fit is left out, never sent)."""
        source = self.cluster_lobby
        got = None if source is None else await source.page(cursor, limit)
        if got is None:
            return self.lobby(cursor, limit)
        plains, more = got
        infos: list[RoomInfo] = []
        for plain in plains:
            try:
                infos.append(load_record(RoomInfo, plain))
            except ProtocolError:
                continue
        chosen, cut = fit_page(infos, limit, record_size)
        return LobbyPage(rooms=tuple(chosen), next=chosen[-1].room if (cut or more) and chosen else None)
