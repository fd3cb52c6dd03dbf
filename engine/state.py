"""Everything one room holds, as plain data, and how it maps to durable records.

Pure: no I/O and no Trio. The room actor owns one :class:`RoomState`, applies requests to it, and
asks it for the store writes its changes need (``take_writes``); after a crash the supervisor rebuilds
it from those records (``RoomState.restore``). Durable sections are tracked separately so a turn
writes only what it changed: a chat message is one small put, not a snapshot of the room.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from roost.protocol.frames import InactivePolicy, Phase, RoomInfo, RoomSnapshot

from .chat import ChatLog
from .packing import packb as _pack
from .packing import unpackb as _unpack
from .presence import Presence
from .store import Write

__all__ = ["LAYOUT", "LAYOUT_KEY", "Replay", "RoomOptions", "RoomState", "membership_key", "stored_position",
           "user_key"]

LAYOUT = 2
"""What the room records mean, as this build writes them (stored as the global ``LAYOUT_KEY``):

- 1 (no key: every build before it): each chat turn and broadcast wrote the ``counters`` record and
  the author's ``read:`` cursor;
- 2: they do not; ``seq``, ``chat_n`` and the author's cursor are taken back from the newest event and
  messages (``stored_position``, ``ChatLog.restore``).

A build reads every layout up to its own and refuses a later one (the engine does not start): an
older build would read a layout-2 directory's ``seq`` from stale counters, reuse event numbers and
lose cursors (found by a review that restored a layout-2 directory with the previous build). Builds
of layout 1 predate the check: going back to one of them needs the directory written by it or
empty."""
LAYOUT_KEY = "layout"
"""The global key holding ``LAYOUT``, written at the first start of a build that reads its directory."""

_CHAT_PREFIX = "chat:"
_MEMBER_PREFIX = "member:"
_READ_PREFIX = "read:"
_DELIVERED_PREFIX = "dlv:"
_EVENT_PREFIX = "ev:"

_MEMBERSHIP = b"\xc0"
"""The value of a membership index entry (msgpack nil): the key says it all, and the listing reads the
room's code from the live room, so a join packs nothing more for the index."""


_write = tuple.__new__
"""``_write(Write, (room, key, value, table))`` builds a Write without the Python frame of the named
tuple's generated ``__new__`` (a chat turn makes five: measured ~0.2 µs each); every field given."""


def chat_key(n: int) -> str:
    """Store key of chat message ``n`` (fixed width so keys sort in message order): ``chat:`` and 16
    hex digits, ``f"chat:{n:016x}"``. Written as ``n.to_bytes(8, "big").hex()``, the same string for
    every ``n`` below 2**64 (numbers are below 2**53, PROTOCOL.md) at half the cost of the f-string,
    which parses its format spec per call: a chat turn formats three keys."""
    return _CHAT_PREFIX + n.to_bytes(8, "big").hex()


def stored_position(records: Mapping[str, bytes]) -> tuple[int, int]:
    """The room's ``seq`` and ``chat_n`` as of its stored records: the larger of the ``counters``
    record's and the newest stored event's (``ev:``) and message's (``chat:``) numbers.

    Why both: a turn that only moves them (every chat turn, every broadcast) writes no ``counters``
    record; its event and its message are written in the same commit and carry the numbers. That
    holds because each seq is recorded with its event (``record_event``, ``chat_sent``) and the
    newest event and message are never deleted (a buffer or history drops its oldest, past a limit
    of at least one): one write fewer per message (a 5-key map packed, planned, logged and put).
    The ``counters`` record still holds the rest (epoch, ``empty_since``, ``shared``) and is written
    when one of them changes; a store written before this rule holds counters that are never behind.
    """
    counters = _unpack(records["counters"]) if "counters" in records else {}
    return _position(counters, max((key for key in records if key.startswith(_CHAT_PREFIX)), default=None),
                     max((key for key in records if key.startswith(_EVENT_PREFIX)), default=None))


def _position(counters: Mapping[str, Any], newest_chat: str | None, newest_event: str | None) -> tuple[int, int]:
    """``stored_position`` from the counters and the newest keys (fixed-width hex: the largest key
    is the largest number), for ``RoomState.restore``, which has them sorted already."""
    seq, chat_n = counters.get("seq", 0), counters.get("chat_n", 0)
    if newest_event is not None:
        seq = max(seq, int(newest_event[len(_EVENT_PREFIX):], 16))
    if newest_chat is not None:
        chat_n = max(chat_n, int(newest_chat[len(_CHAT_PREFIX):], 16))
    return seq, chat_n


def event_key(seq: int) -> str:
    """Store key of the framed room event ``seq`` (kept for resume): ``ev:`` and 16 hex digits, as
    :func:`chat_key`."""
    return _EVENT_PREFIX + seq.to_bytes(8, "big").hex()


def user_key(user: str) -> str:
    """The key prefix of one user's records in the ``inbox`` table (inbox entries, head, room index).

    A digest, not the id: a user id is up to 128 characters of any kind (512 UTF-8 bytes, past LMDB's
    511-byte keys), and a prefix built from the id itself would let ``alice/`` reach into the records
    of ``alice``. 128 bits of BLAKE2b: fixed length, no separator to escape, no collision to fear.
    """
    return hashlib.blake2b(user.encode(), digest_size=16).hexdigest()


def membership_key(user: str, room: str) -> str:
    """The ``inbox``-table key saying that ``user`` is a member of ``room`` (the durable index of
    a user's rooms, written by the room in the same commit as the membership itself)."""
    return f"{user_key(user)}/m/{room}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoomOptions:
    """What a room is created with."""

    public: bool = False
    max_members: int = 64
    meta: dict[str, Any] | None = None
    logic: str | None = None
    inactive: InactivePolicy = InactivePolicy.NONE


class Replay:
    """The room's last ``limit`` events as sent (framed bytes), numbered ``first`` to ``first + len - 1``.

    A dict keyed by seq, not a deque of ``(seq, bytes)`` tuples, for the reason ``ChatLog`` gives
    (engine/chat.py): a deque is traversed item by item by every full collection (1 000 events per
    room by default), a dict of numbers and bytes is untracked by the first one that sees it.
    Numbers are consecutive (every event takes the next seq); an event that does not follow (only a
    damaged store could give one) starts the buffer anew, so what it holds is always a gap-free run.
    """

    __slots__ = ("_events", "first", "limit")

    def __init__(self, limit: int) -> None:
        self._events: dict[int, bytes] = {}
        self.first = 1
        """The oldest seq held (meaningless while empty)."""
        self.limit = limit

    def __len__(self) -> int:
        return len(self._events)

    def append(self, seq: int, data: bytes) -> None:
        events = self._events
        if events and seq != self.first + len(events):
            events.clear()
        if not events:
            self.first = seq
        events[seq] = data
        if len(events) > self.limit:
            del events[self.first]
            self.first += 1

    def after(self, seq: int) -> list[bytes]:
        """The events held with a seq above ``seq``, oldest first."""
        events, first = self._events, self.first
        return [events[s] for s in range(max(seq + 1, first), first + len(events))]


class RoomState:
    """One room's state. Attributes are public for the actor; mutations mark their section dirty."""

    def __init__(
        self, *, room_id: str, code: str, options: RoomOptions, created: int, history_limit: int, replay_limit: int
    ) -> None:
        self.room_id = room_id
        self.code = code
        self.options = options
        self.created = created
        self.host: str | None = None
        self.epoch = 1
        self.seq = 0
        self.phase = Phase.LOBBY
        self.version = 0
        self.game: Any = None
        self.empty_since: float | None = None
        """Wall-clock time (Unix s) since which the room has had no member; the reaper's deadline
        is ``empty_since + room_ttl``, absolute so it survives a restart."""
        self.shared = False
        """Whether the room ever had two members at once. One that never did (created and left
        alone) is reaped after ``solo_room_ttl`` instead of ``room_ttl``: create + leave in a loop
        must not keep a room per request alive for an hour. Stored with the counters."""
        self.presence = Presence()
        self.chat = ChatLog(history_limit)
        self.replay = Replay(replay_limit)
        """The last events as sent (framed bytes), by seq: what a resuming client is replayed. It is
        stored with the turn that emitted it, so resume works across crashes and restarts."""
        self._dirty: set[str] = {"meta", "host", "game", "counters"}
        self._new_events: list[tuple[int, bytes]] = []
        self.closing = False
        """Set in the turn that closes the room: that turn's commit deletes ``meta`` (the room is gone
        even if the process dies before every other key is disposed of)."""
        self._dirty_chat: dict[int, bytes | None] = {}
        """Chat messages to write, with their record bytes when the turn already packed them."""
        self._dirty_members: set[str] = set()
        self._dirty_reads: set[str] = set()
        self._dirty_index: set[str] = set()
        """Users who joined or left this turn: their entry of the membership index (table ``inbox``)."""
        self.flush_delivered = False
        """Set by the actor's receipt window: commit the delivered cursors that moved even if nothing
        else changed. Without it a cursor move makes no commit of its own (no fsync per move): its
        ``dlv:`` record rides with the room's next commit, at the latest at the window's end."""

    # -- dirty tracking -----------------------------------------------------------------------

    def touch(self, *sections: str) -> None:
        """Mark sections (``meta``, ``host``, ``game``, ``counters``) as changed."""
        self._dirty.update(sections)

    def touch_chat(self, n: int) -> None:
        """Mark chat message ``n`` as changed (edited, deleted): its record is read from the log."""
        self._dirty_chat[n] = None

    def touch_member(self, user: str) -> None:
        """Mark a member's durable record (name, join order, custom data) as new, changed or gone."""
        self._dirty_members.add(user)

    def touch_membership(self, user: str) -> None:
        """Mark that ``user`` joined or left: the user's membership index entry is written (or
        deleted) with this turn, in the same batch as the member record (one atomic commit)."""
        self._dirty_index.add(user)

    def touch_read(self, user: str) -> None:
        """Mark a user's read cursor as moved."""
        self._dirty_reads.add(user)

    def chat_sent(self, n: int, record: bytes, seq: int, event: bytes) -> None:
        """A chat message was sent: its record (packed already) and the ``chat`` event ``seq``
        (framed) are this turn's to write; the numbers in them stand for the counters and the
        author's read cursor (``stored_position``, ``ChatLog.restore``). One call for what
        ``touch_chat`` and ``record_event`` do one by one,
        with ``seq`` taken: a chat turn is the hot path, and each call was a Python frame per message."""
        self.seq = seq  # stored as the number of its event (see ``stored_position``): no ``counters``
        self._dirty_chat[n] = record  # the author's read cursor too: it is the message's ``n`` (ChatLog.restore)
        self.replay.append(seq, event)
        self._new_events.append((seq, event))

    def record_event(self, seq: int, data: bytes) -> None:
        """Keep an emitted event for resume (in memory now, in the store with this turn); ``seq`` is
        the room's new ``seq``, stored as this event's number (``stored_position``)."""
        self.replay.append(seq, data)
        self._new_events.append((seq, data))

    @property
    def dirty(self) -> bool:
        return bool(self._dirty or self._dirty_chat or self._dirty_members or self._dirty_reads or self._new_events
                    or self.closing or self.chat.trimmed or self._dirty_index
                    or (self.flush_delivered and self.chat.delivered.unwritten))

    def take_writes(self) -> list[Write]:
        """The store writes for everything changed since the last call.

        Called once per turn, so with one message a turn it runs per message: each kind is skipped
        when clean and sorted only when it holds more than one key (a chat turn writes one ``chat:`` and
        one ``ev:`` and deletes the ``ev:`` that fell out of the replay buffer; no ``counters`` and no
        author's ``read:``: see ``stored_position`` and ``ChatLog.restore``), and records are packed with one reused packer instead of ``msgpack.packb`` (which
        builds a ``Packer`` per call)."""
        writes: list[Write] = []
        add = writes.append
        room = self.room_id
        if self._dirty:
            dirty = self._dirty
            for section in sorted(dirty) if len(dirty) > 1 else dirty:
                add(_write(Write, (room, section, _pack(self._section(section)), None)))
            dirty.clear()
        if self._dirty_chat:
            chat = self._dirty_chat
            log = self.chat
            for n, record in sorted(chat.items()) if len(chat) > 1 else chat.items():
                if record is not None and n == log.last_n:  # just sent: in the log (it is the newest)
                    add(_write(Write, (room, _CHAT_PREFIX + n.to_bytes(8, "big").hex(), record, None)))
                    continue
                record = log.record(n)  # edited or deleted: the log holds it packed
                if record is not None:
                    add(Write(room, chat_key(n), record))
            chat.clear()
        if self._dirty_members:
            members = self._dirty_members
            for user in sorted(members) if len(members) > 1 else members:
                entry = self.presence.get(user)
                add(Write(room, _MEMBER_PREFIX + user, None if entry is None else _pack(entry.to_record())))
            members.clear()
        if self.chat.trimmed_authors:  # their cursors may have rested on the messages trimmed now
            self._dirty_reads |= self.chat.take_trimmed_authors()
        if self._dirty_reads:
            reads, read = self._dirty_reads, self.chat.read
            for user in sorted(reads) if len(reads) > 1 else reads:
                add(_write(Write, (room, _READ_PREFIX + user, _pack(read.get(user, 0)), None)))
            reads.clear()
        delivered = self.chat.delivered
        if delivered.unwritten:
            for user, n in delivered.take_unwritten():  # every commit takes them: no extra fsync
                add(Write(room, _DELIVERED_PREFIX + user, _pack(n)))
        self.flush_delivered = False
        if self._new_events:
            limit = self.replay.limit
            for seq, data in self._new_events:
                add(_write(Write, (room, _EVENT_PREFIX + seq.to_bytes(8, "big").hex(), data, None)))  # event_key
                if seq > limit:  # fell out of the buffer
                    add(_write(Write, (room, _EVENT_PREFIX + (seq - limit).to_bytes(8, "big").hex(), None, None)))
            self._new_events.clear()
        if self.chat.trimmed:
            for n in self.chat.take_trimmed():
                add(_write(Write, (room, chat_key(n), None, None)))
        if self._dirty_index:
            index, presence, closing = self._dirty_index, self.presence, self.closing
            for user in sorted(index) if len(index) > 1 else index:
                kept = user in presence and not closing
                add(Write(None, membership_key(user, room), _MEMBERSHIP if kept else None, table="inbox"))
        if self.closing:
            add(Write(room, "meta", None))
            writes.extend(Write(None, membership_key(user, room), None, table="inbox")
                          for user in sorted(self.presence.members) if user not in self._dirty_index)
        self._dirty_index.clear()
        return writes

    def _section(self, name: str) -> Any:
        if name == "counters":  # seq and chat_n are stored with their event and message too (stored_position)
            return {"epoch": self.epoch, "seq": self.seq, "chat_n": self.chat.last_n,
                    "empty_since": self.empty_since, "shared": self.shared}
        if name == "meta":
            o = self.options
            return {"room": self.room_id, "code": self.code, "created": self.created, "public": o.public,
                    "max": o.max_members, "meta": o.meta, "logic": o.logic, "inactive": o.inactive.value}
        if name == "host":
            return self.host
        if name == "game":
            return {"phase": self.phase.value, "version": self.version, "state": self.game}
        raise ValueError(f"no section {name!r}")

    @classmethod
    def restore(
        cls, records: dict[str, bytes], *, now: float, grace: float, history_limit: int, replay_limit: int
    ) -> RoomState:
        """Rebuild from the store. Every session comes back dropped, with a fresh grace period.

        Raises:
            KeyError: the records lack the room's meta (it was never created or was disposed).
        """
        meta = _unpack(records["meta"])
        options = RoomOptions(
            public=meta["public"], max_members=meta["max"], meta=meta["meta"], logic=meta["logic"],
            inactive=InactivePolicy(meta["inactive"]),
        )
        state = cls(room_id=meta["room"], code=meta["code"], options=options, created=meta["created"],
                    history_limit=history_limit, replay_limit=replay_limit)
        # One pass over the records, by kind (keys of one kind sort in their natural order).
        members: list[dict[str, Any]] = []
        read: dict[str, int] = {}
        delivered: dict[str, int] = {}
        messages: list[tuple[str, bytes]] = []
        events: list[tuple[str, bytes]] = []
        for key, value in records.items():
            if key.startswith(_CHAT_PREFIX):
                messages.append((key, value))
            elif key.startswith(_EVENT_PREFIX):
                events.append((key, value))
            elif key.startswith(_MEMBER_PREFIX):
                members.append(_unpack(value))
            elif key.startswith(_READ_PREFIX):
                read[key[len(_READ_PREFIX) :]] = _unpack(value)
            elif key.startswith(_DELIVERED_PREFIX):
                delivered[key[len(_DELIVERED_PREFIX) :]] = _unpack(value)
        state.host = _unpack(records["host"]) if "host" in records else None
        state.presence.restore(members, now, grace)
        if "game" in records:
            game = _unpack(records["game"])
            state.phase, state.version, state.game = Phase(game["phase"]), game["version"], game["state"]
        counters = _unpack(records["counters"]) if "counters" in records else {"epoch": 1}
        messages.sort()
        events.sort()
        seq, chat_n = _position(counters, messages[-1][0] if messages else None, events[-1][0] if events else None)
        state.epoch, state.seq = counters["epoch"], seq
        state.empty_since = counters.get("empty_since")
        state.shared = bool(counters.get("shared", True))  # rooms stored before the flag existed keep room_ttl
        # Stored messages were validated when they were written: the log keeps their records as
        # they are, without re-checking (a third of the cost of a restart otherwise).
        state.chat.restore([value for _key, value in messages], read, chat_n, delivered)
        replay = state.replay
        for seq, data in ((int(key[len(_EVENT_PREFIX) :], 16), value) for key, value in events):
            if seq <= state.seq:
                replay.append(seq, data)
        state._dirty.clear()
        return state

    # -- views ----------------------------------------------------------------------------------

    def info(self) -> RoomInfo:
        """The lobby entry."""
        o = self.options
        return RoomInfo(room=self.room_id, code=self.code, members=len(self.presence), max=o.max_members,
                        phase=self.phase, public=o.public, created=self.created, meta=o.meta)

    def snapshot(self, user: str | None, page: int) -> RoomSnapshot:
        """Everything a member (``user``) needs to render the room, as of the current ``seq``."""
        members, members_next = self.presence.page(None, page)
        o = self.options
        return RoomSnapshot(
            room=self.room_id, code=self.code, epoch=self.epoch, seq=self.seq, public=o.public,
            max=o.max_members, host=self.host, phase=self.phase, version=self.version, state=self.game,
            members=tuple(members), members_next=members_next, member_count=len(self.presence),
            chat_n=self.chat.last_n, read_n=self.chat.read.get(user, 0) if user else 0,
            unread=self.chat.unread(user) if user else 0, logic=o.logic, inactive=o.inactive,
            created=self.created, meta=o.meta,
        )

    def next_host(self, leaving: str) -> str | None:
        """Who hosts after ``leaving`` goes: the longest-present other member (live ones first)."""
        others = [e for e in self.presence.in_join_order() if e.user != leaving]
        live = [e for e in others if e.live_sessions]
        chosen = (live or others)[:1]
        return chosen[0].user if chosen else None
