"""Personal inboxes: one ordered, durable, bounded stream of entries per user, and the user's rooms.

``notify(user, kind, body)`` (``engine.ops``, the admin API, room logic) gives the entry the user's
next ``seq``, commits it to the store's ``inbox`` table, and only then pushes it as an ``inbox``
event to every live session of the user that attached its inbox (``inbox_resume``), on any device,
and acknowledges the caller. A session that was offline resumes exactly like a room: it sends its
last ``(epoch, seq)`` and gets the entries it missed, in order, or ``resync`` when some of them were
dropped by the bound (PROTOCOL.md §16).

One writer (the *inbox actor*, one task per engine) owns every head; commands queue on one bounded
channel and are taken in turns of up to ``_TURN_MAX``: consecutive ``notify`` and ``inbox_read``
commands share one store commit (group commit, as room turns do), and a resume runs in its place in
the order, after the writes before it are committed and delivered. That order is the whole design:

- seq is assigned by the one writer, so racing notifies for one user can neither reuse nor skip a
  number (a per-request read-modify-write of the head would, across the store's ``await``);
- a resume reads the stored entries while no commit is in flight, and attaches the session in the
  same step as it queues the replay, so a live entry is never sent before the missed ones nor twice.

The trap this avoids: delivering to every session the gateway knows from ``welcome`` on. A client
that then asks to resume from an older position would get the newest entry live before its replay
(out of order). Sessions get live entries only once they attached at a position they chose.

Heads (``epoch``, ``seq``, ``read`` and the sizes of the kept entries, oldest first) are cached for
the most recently used ``_CACHE_USERS`` users; the cache holds committed heads only (outside readers
such as ``welcome`` read it or the store, never a head whose commit is still in flight).

The durable index of a user's rooms lives in the same table (``<user key>/m/<room>``) and is written
by the rooms themselves, in the commit of the join or leave (engine/state.py); this module only reads
it, for ``welcome`` and ``my_rooms``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from roost.protocol.codec import PAGE_BYTES, SERVER_LIMITS, dump_record, encode, fit_page, record_size
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import (
    INBOX_BODY,
    KIND,
    USER_ID,
    ErrorReply,
    InboxEntry,
    InboxEvent,
    InboxHead,
    InboxPage,
    InboxResumeResult,
    InboxUnread,
    MyRoom,
    MyRoomsPage,
    Ok,
)
from roost.protocol.schema import FieldProblem

from .config import Config
from .errors import RoomError
from .outbox import ws_frame
from .peer import Peer
from .state import membership_key, user_key
from .store import Store, Write

if TYPE_CHECKING:
    from .room import RoomRuntime

__all__ = ["InboxService", "InboxStats"]

log = logging.getLogger("roost.inbox")

TABLE = "inbox"
_TURN_MAX = 128
"""Commands taken into one turn of the inbox actor at most (as a room turn)."""
_CACHE_USERS = 10_000
"""Committed heads kept in memory (least recently used dropped first; the store has them all)."""
_WELCOME_ROOM_BYTES = 16 * 1024
"""The encoded bytes the rooms of ``welcome`` may take together (a MyRoom is ~150 bytes at most)."""
EPOCH = 1
"""The epoch of every inbox: nothing resets an inbox today (a reset would start the next one)."""


def head_key(user: str) -> str:
    return f"{user_key(user)}/h"


def entry_key(user: str, seq: int) -> str:
    """Fixed width, so one user's entries sort in seq order."""
    return f"{user_key(user)}/e/{seq:016x}"


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@dataclasses.dataclass(slots=True)
class _Head:
    """One user's inbox position: committed (in the cache) or being changed (in a turn)."""

    epoch: int = EPOCH
    seq: int = 0
    read: int = 0
    sizes: collections.deque[int] = dataclasses.field(default_factory=collections.deque)
    """Stored sizes of the kept entries, oldest first: the bound is enforced without reading them."""
    total: int = 0

    @property
    def first(self) -> int:
        return self.seq - len(self.sizes) + 1

    def unread(self) -> int:
        return self.seq - max(self.read, self.first - 1)

    def view(self) -> InboxHead:
        return InboxHead(epoch=self.epoch, seq=self.seq, first=self.first, read=self.read, unread=self.unread())

    def copy(self) -> _Head:
        return _Head(self.epoch, self.seq, self.read, collections.deque(self.sizes), self.total)

    def pack(self) -> bytes:
        return _pack({"epoch": self.epoch, "seq": self.seq, "read": self.read, "sizes": list(self.sizes)})

    @classmethod
    def unpack(cls, data: bytes | None) -> _Head:
        if data is None:
            return cls()
        raw = msgpack.unpackb(data, raw=False)
        sizes = collections.deque(raw["sizes"])
        return cls(raw["epoch"], raw["seq"], raw["read"], sizes, sum(sizes))


@dataclasses.dataclass(slots=True)
class InboxStats:
    """Counters for metrics (engine/metrics.py reads them at scrape time)."""

    notifies: int = 0
    dropped: int = 0
    """Entries dropped by the per-user bound (count or bytes)."""
    resumes: collections.Counter[str] = dataclasses.field(
        default_factory=lambda: collections.Counter(replay=0, resync=0))
    """``inbox_resume`` outcomes: ``replay`` or ``resync``."""


class _Notify:
    __slots__ = ("body", "done", "entry", "error", "kind", "user")

    def __init__(self, user: str, kind: str, body: Any, *, waited: bool) -> None:
        self.user, self.kind, self.body = user, kind, body
        self.done: trio.Event | None = trio.Event() if waited else None
        self.entry: InboxEvent | None = None
        self.error: RoomError | None = None

    def resolve(self, entry: InboxEvent | None, error: RoomError | None) -> None:
        self.entry, self.error = entry, error
        if self.done is not None:
            self.done.set()


@dataclasses.dataclass(slots=True)
class _Resume:
    peer: Peer
    request_id: int
    epoch: int
    seq: int


@dataclasses.dataclass(slots=True)
class _Read:
    peer: Peer
    request_id: int
    n: int


_Command = _Notify | _Resume | _Read | None  # None only wakes the actor (posts from room logic)


class InboxService:
    """Every user's inbox in this engine, and the reads of the users' room index."""

    def __init__(self, store: Store, config: Config) -> None:
        self._store = store
        self._config = config
        self._limits = dataclasses.replace(SERVER_LIMITS, max_inbox_body_bytes=config.max_inbox_body_bytes)
        self._send, self._receive = trio.open_memory_channel[_Command](config.inbox_queue)
        self._stopped = False
        self._posted: collections.deque[_Notify] = collections.deque()
        """Notifies from room logic (posted after their room's commit, never waited for)."""
        self._heads: collections.OrderedDict[str, _Head] = collections.OrderedDict()
        self._attached: weakref.WeakSet[Peer] = weakref.WeakSet()
        """Sessions that attached their inbox (``inbox_resume``): only they get live entries."""
        self.sessions: Callable[[str], Iterable[Peer]] = lambda user: ()
        """The live sessions of a user (the gateway's registry; set by the engine)."""
        self.rooms: Callable[[str], RoomRuntime | None] = lambda room: None
        """The live room with an id (the router's; set by the engine)."""
        self.stats = InboxStats()

    # -- the actor --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve commands until :meth:`stop` (every queued one is still served) or cancellation."""
        if self._stopped:  # an engine served again after a stop
            self._stopped = False
            self._send, self._receive = trio.open_memory_channel[_Command](self._config.inbox_queue)
        task_status.started()
        receive = self._receive
        while True:
            try:
                batch: list[_Command] = [await receive.receive()]
            except trio.EndOfChannel:
                batch = []
            while len(batch) < _TURN_MAX:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            while self._posted and len(batch) < 2 * _TURN_MAX:
                batch.append(self._posted.popleft())
            if not batch:
                return  # stopped, and nothing is left
            await self._turn(batch)

    def stop(self) -> None:
        """Take no more commands; the actor returns once the queued ones are served."""
        self._stopped = True
        self._send.close()

    async def _turn(self, batch: list[_Command]) -> None:
        work: dict[str, _Head] = {}
        writes: list[Write] = []
        done: list[Callable[[BaseException | None], None]] = []
        for command in batch:
            if command is None:
                continue
            if isinstance(command, _Resume):
                await self._commit(work, writes, done)
                work, writes, done = {}, [], []
                await self._resume(command)
                continue
            head = work.get(command.user if isinstance(command, _Notify) else command.peer.user)
            if head is None:
                user = command.user if isinstance(command, _Notify) else command.peer.user
                head = work[user] = (await self._committed(user)).copy()
            if isinstance(command, _Notify):
                done.append(self._apply_notify(command, head, writes))
            else:
                done.append(self._apply_read(command, head, writes))
        await self._commit(work, writes, done)

    async def _commit(self, work: dict[str, _Head], writes: list[Write],
                      done: list[Callable[[BaseException | None], None]]) -> None:
        """Commit a group of writes, then (in one step, no checkpoint) publish the heads and deliver."""
        if not done:
            return
        error: BaseException | None = None
        if writes:
            try:
                if not self._store.commit_now(writes):
                    await self._store.commit(writes)
            except Exception as exc:  # a store failure refuses this group, not the engine
                log.exception("inbox commit failed")
                error = exc
        if error is None:
            for user, head in work.items():
                self._cache(user, head)
        for finish in done:
            finish(error)

    def _cache(self, user: str, head: _Head) -> None:
        heads = self._heads
        heads[user] = head
        heads.move_to_end(user)
        while len(heads) > _CACHE_USERS:
            heads.popitem(last=False)

    async def _committed(self, user: str) -> _Head:
        """The user's committed head (cache, else store); the actor caches what it loads."""
        head = self._heads.get(user)
        if head is None:
            data = await self._store.get(TABLE, head_key(user))
            head = self._heads.get(user)  # only the actor fills the cache: nothing raced us here
            if head is None:
                head = _Head.unpack(data)
                self._cache(user, head)
        else:
            self._heads.move_to_end(user)
        return head

    def _apply_notify(self, command: _Notify, head: _Head, writes: list[Write]) -> Callable[[BaseException | None], None]:
        config, user = self._config, command.user
        head.seq += 1
        entry = InboxEntry(id=f"i{head.seq}", seq=head.seq, ts=int(config.wall_clock() * 1000),
                           kind=command.kind, body=command.body)
        record = _pack(dump_record(entry, self._limits, validate=False))  # validated when queued
        writes.append(Write(None, entry_key(user, head.seq), record, table=TABLE))
        head.sizes.append(len(record))
        head.total += len(record)
        dropped = 0
        while len(head.sizes) > config.inbox_max_entries or head.total > config.inbox_max_bytes:
            writes.append(Write(None, entry_key(user, head.first), None, table=TABLE))
            head.total -= head.sizes.popleft()
            dropped += 1
        writes.append(Write(None, head_key(user), head.pack(), table=TABLE))
        event = InboxEvent(epoch=head.epoch, seq=entry.seq, ts=entry.ts, id=entry.id, kind=entry.kind, body=entry.body)

        def finish(error: BaseException | None) -> None:
            if error is not None:
                command.resolve(None, RoomError(ErrorCode.INTERNAL, "the inbox could not be stored"))
                return
            self.stats.notifies += 1
            self.stats.dropped += dropped
            data = ws_frame(encode(event, SERVER_LIMITS, validate=False))  # encoded once for every device
            for peer in self._live(user):
                peer.push(data)
            command.resolve(event, None)

        return finish

    def _apply_read(self, command: _Read, head: _Head, writes: list[Write]) -> Callable[[BaseException | None], None]:
        peer = command.peer
        n = min(command.n, head.seq)
        moved = n > head.read
        if moved:
            head.read = n
            writes.append(Write(None, head_key(peer.user), head.pack(), table=TABLE))
        read, unread = head.read, head.unread()

        def finish(error: BaseException | None) -> None:
            if error is not None:
                _reply(peer, ErrorReply(id=command.request_id, code=ErrorCode.INTERNAL.value,
                                        message="the inbox could not be stored"))
                return
            _reply(peer, Ok(id=command.request_id, result={"read": read, "unread": unread}))
            if moved:
                data = ws_frame(encode(InboxUnread(read=read, unread=unread), SERVER_LIMITS))
                for other in self._live(peer.user):
                    if other is not peer:
                        other.push(data)

        return finish

    async def _resume(self, command: _Resume) -> None:
        """Replay what ``command`` missed (or answer ``resync``) and attach its session, in one step."""
        peer = command.peer
        user = peer.user
        head = await self._committed(user)
        frames: list[bytes] = []
        resync = not (command.epoch == head.epoch and command.seq <= head.seq and command.seq + 1 >= head.first)
        missed = head.seq - command.seq
        if not resync and missed > 0:
            rows = await self._store.scan(TABLE, prefix=f"{user_key(user)}/e/", after=entry_key(user, command.seq),
                                          limit=missed)
            for _key, value in rows:
                raw = msgpack.unpackb(value, raw=False)
                event = InboxEvent(epoch=head.epoch, **raw)
                frames.append(ws_frame(encode(event, SERVER_LIMITS, validate=False)))
            config = self._config
            resync = (len(frames) != missed or len(frames) > config.outbox_max_frames // 2
                      or sum(map(len, frames)) > config.outbox_max_bytes // 2)
        if not peer.alive:
            return
        self.stats.resumes["resync" if resync else "replay"] += 1
        result = InboxResumeResult(replayed=0 if resync else len(frames), resync=resync, head=head.view())
        reply = ws_frame(encode(Ok(id=command.request_id, result=dump_record(result)), SERVER_LIMITS))
        peer.push(reply if resync or not frames else reply + b"".join(frames))
        self._attached.add(peer)

    def _live(self, user: str) -> list[Peer]:
        return [peer for peer in self.sessions(user) if peer in self._attached and peer.alive]

    # -- requests -------------------------------------------------------------------------------

    def _check(self, user: Any, kind: Any, body: Any) -> None:
        for name, spec, value in (("user", USER_ID, user), ("kind", KIND, kind), ("body", INBOX_BODY, body)):
            try:
                spec.load(value, self._limits)
            except FieldProblem as problem:
                raise RoomError(problem.code, f"{name}: {problem.message}") from None

    async def notify(self, user: str, kind: str, body: Any = None) -> InboxEvent:
        """Put an entry in ``user``'s inbox; return it (as its event) once committed and delivered.

        Raises:
            RoomError: ``bad_field``/``too_long``/``too_large`` for the arguments, ``unsupported`` once
                the engine is stopping, ``internal`` when the store failed.
        """
        self._check(user, kind, body)
        command = _Notify(user, kind, body, waited=True)
        await self._queue(command)
        assert command.done is not None
        await command.done.wait()
        if command.error is not None:
            raise command.error
        assert command.entry is not None
        return command.entry

    def check_post(self, user: str, kind: str, body: Any, pending: int) -> None:
        """For room logic (:class:`~roost.logic.Notifier`): refuse now what ``post`` could not take."""
        self._check(user, kind, body)
        if len(self._posted) + pending >= self._config.inbox_queue:
            raise RoomError(ErrorCode.RATE_LIMITED, "the inbox queue is full", retry_ms=100)

    def post(self, user: str, kind: str, body: Any) -> None:
        """Queue a checked notify without waiting (room logic, after its turn's commit)."""
        self._posted.append(_Notify(user, kind, body, waited=False))
        try:
            self._send.send_nowait(None)  # wake the actor
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # a full queue means the actor is awake (after a stop, run() drains _posted last)

    async def resume(self, peer: Peer, request_id: int, epoch: int, seq: int) -> None:
        """Queue an ``inbox_resume``; the actor answers the session."""
        await self._queue(_Resume(peer, request_id, epoch, seq))

    async def read(self, peer: Peer, request_id: int, n: int) -> None:
        """Queue an ``inbox_read``; the actor answers the session."""
        await self._queue(_Read(peer, request_id, n))

    async def _queue(self, command: _Command) -> None:
        try:
            try:
                self._send.send_nowait(command)
            except trio.WouldBlock:
                await self._send.send(command)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RoomError(ErrorCode.UNSUPPORTED, "the server is shutting down") from None

    async def head(self, user: str) -> InboxHead:
        """Where ``user``'s inbox stands, as committed (for ``welcome``)."""
        head = self._heads.get(user)
        if head is None:
            data = await self._store.get(TABLE, head_key(user))
            head = self._heads.get(user) or _Head.unpack(data)  # the actor may have cached a newer one
        return head.view()

    async def history(self, user: str, before: int | None, limit: int) -> InboxPage:
        """Up to ``limit`` entries with ``seq < before``, newest first chosen, cut by bytes, oldest first."""
        head = await self.head(user)
        end = head.seq + 1 if before is None else min(before, head.seq + 1)
        start = max(head.first, end - limit)
        if end <= start:
            return InboxPage(entries=(), next=None)
        rows = await self._store.scan(TABLE, prefix=f"{user_key(user)}/e/", after=entry_key(user, start - 1),
                                      limit=end - start)
        entries = [InboxEntry(**msgpack.unpackb(value, raw=False)) for _key, value in rows]
        entries = [entry for entry in entries if entry.seq < end]
        entries.reverse()
        chosen, more = fit_page(entries, limit, record_size)
        chosen.reverse()
        more = more or (bool(chosen) and chosen[0].seq > head.first)
        return InboxPage(entries=tuple(chosen), next=chosen[0].seq if chosen and more else None)

    # -- the user's rooms -------------------------------------------------------------------------

    async def my_rooms(self, user: str, cursor: str | None, limit: int) -> MyRoomsPage:
        """A page of the rooms ``user`` is a member of, by room id, with unread chat counts.

        From the durable index (rooms write it in their join and leave commits); a room of the
        index that is not live here (closed by the supervisor after crashes) is left out.
        """
        prefix = membership_key(user, "")
        after = membership_key(user, cursor) if cursor is not None else None
        rows = await self._store.scan(TABLE, prefix=prefix, after=after, limit=limit + 1)
        return self._rooms_page(user, [key[len(prefix):] for key, _value in rows], limit, PAGE_BYTES)

    async def room_ids(self, user: str) -> list[str]:
        """Every room of ``user``'s membership index, by id (all pages): for a merge of two users."""
        prefix, after, found = membership_key(user, ""), None, []
        while rows := await self._store.scan(TABLE, prefix=prefix, after=after, limit=100):
            found += [key[len(prefix):] for key, _value in rows]
            after = rows[-1][0]
        return found

    def _rooms_page(self, user: str, room_ids: list[str], limit: int, budget: int) -> MyRoomsPage:
        """The page of ``room_ids`` (up to ``limit + 1`` from the index: one more says there are more)."""
        rooms = [room for room in (self._my_room(user, room_id) for room_id in room_ids[:limit]) if room is not None]
        chosen, cut = fit_page(rooms, limit, record_size, budget)
        if cut:
            return MyRoomsPage(rooms=tuple(chosen), next=chosen[-1].room)
        return MyRoomsPage(rooms=tuple(chosen), next=room_ids[limit - 1] if len(room_ids) > limit else None)

    def _my_room(self, user: str, room_id: str) -> MyRoom | None:
        runtime = self.rooms(room_id)
        if runtime is None or runtime.closed or runtime.state is None:
            return None
        chat = runtime.state.chat
        return MyRoom(room=room_id, code=runtime.code, chat_n=chat.last_n, read_n=chat.read.get(user, 0),
                      unread=chat.unread(user))

    async def welcome(self, user: str) -> tuple[InboxHead, MyRoomsPage]:
        """What ``welcome`` tells about ``user``: the inbox head and the first page of its rooms.

        One store read (a handshake pays it): the user's keys sort entries (``/e/``) before the head
        (``/h``) before the room index (``/m/``), so one range read after the entries has both.
        """
        key = user_key(user)
        limit = self._config.welcome_rooms
        rows = await self._store.scan(TABLE, prefix=f"{key}/", after=f"{key}/f", limit=limit + 2)
        index_prefix = membership_key(user, "")
        head_data = next((value for k, value in rows if k == head_key(user)), None)
        room_ids = [k[len(index_prefix):] for k, _value in rows if k.startswith(index_prefix)][:limit + 1]
        head = self._heads.get(user) or _Head.unpack(head_data)  # the actor may have cached a newer one
        return head.view(), self._rooms_page(user, room_ids, limit, _WELCOME_ROOM_BYTES)


def _reply(peer: Peer, frame: Ok | ErrorReply) -> None:
    peer.push(ws_frame(encode(frame, SERVER_LIMITS)))
