"""The chat log of one room: numbering, idempotent sends, edit/delete rules, paging, read cursors.

Pure: no I/O. Messages are numbered 1, 2, 3… with no gaps (``n``); deletion leaves a tombstone so the
numbering, paging and unread counts stay simple. The log keeps at most ``limit`` messages; older
ones are dropped (with their idempotency keys).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

from roost.protocol.codec import PAGE_BYTES, fit_page
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import ChatMessage

from .errors import RoomError
from .packing import packb, unpackb
from .receipts import DeliveryCursors

__all__ = ["ChatLog", "MessageHead", "pack_message"]

_FIELDS = ("id", "n", "user", "name", "text", "ts", "cid", "edited", "deleted", "meta")
if tuple(f.name for f in dataclasses.fields(ChatMessage)) != _FIELDS:  # pragma: no cover - a guard
    raise ImportError("ChatMessage's fields changed: update engine/chat.py's _message and pack_message")
_new = object.__new__
_SETTERS = tuple(ChatMessage.__dict__[name].__set__ for name in _FIELDS)

class MessageHead(NamedTuple):
    """What receipts need of a message (engine/receipts.py): built while walking, never kept."""

    n: int
    user: str
    deleted: bool


def pack_message(id: str, n: int, user: str, name: str, text: str, ts: int,  # noqa: A002
                 cid: str | None, edited: int | None, deleted: bool, meta: Any) -> bytes:
    """The record of a message: ``dump_record(ChatMessage(...))`` packed (fields in declaration order,
    None left out), written out for values the room already validated (a test pins the bytes)."""
    out: dict[str, Any] = {"id": id, "n": n, "user": user, "name": name, "text": text, "ts": ts}
    if cid is not None:
        out["cid"] = cid
    if edited is not None:
        out["edited"] = edited
    out["deleted"] = deleted
    if meta is not None:
        out["meta"] = meta
    return packb(out)


def _message(record: bytes) -> ChatMessage:
    """The message a record holds (the room wrote it from validated values: not validated again).
    Slots are set directly: the frozen dataclass's ``__init__`` costs ~4x (keywords, ``__setattr__``)."""
    fields = unpackb(record)
    m = _new(ChatMessage)
    get = fields.get
    for setter, name in zip(_SETTERS, _FIELDS):
        setter(m, get(name, False if name == "deleted" else None))
    return m


class ChatLog:
    """Messages of one room, oldest first, with per-user read cursors.

    Why the messages are kept as their packed records in dicts keyed by number, and not as
    ``ChatMessage`` objects in a deque: the log is what lives long per message (up to
    ``history_limit``, 10 000 by default, in every room), and CPython's full collections walk every
    object the collector tracks and every pointer of every tracked container. A ``ChatMessage`` is
    tracked; a deque is always tracked and traversed item by item (a cache miss each, twice per
    collection). Measured (200 logs of 3 000 messages, ``gc.collect()``): ChatMessages in deques
    146 ms, untracked tuples in deques 26 ms, these dicts 7.6 ms against 6.5 ms for none at all.
    A dict whose keys and values are numbers, strings or bytes is untracked by the first full
    collection that sees it, and inserting more of them never tracks it again: the history costs
    full collections nothing, however long it is. (With ChatMessages a full collection also came
    every couple of seconds under load, each a pause for every room of the process: 11-16 ms with a
    few hundred messages in 200 rooms, the p99 of ``bench fanout --rooms 200 --members 1``.)

    The trap: a value that is a tuple (or anything tracked) in any of these dicts tracks it again.
    Messages are decoded back to ``ChatMessage`` only where one is asked for (a page, an edit, a
    status); a chat turn decodes none.
    """

    __slots__ = ("_by_cid", "_cid_keys", "_deleted", "_first", "_limit", "_records", "_users", "delivered",
                 "last_n", "read", "trimmed", "trimmed_authors")

    def __init__(self, limit: int) -> None:
        self._records: dict[int, bytes] = {}
        """Message ``n``'s record: its msgpack map, as the store keeps it and the ``chat`` event carries it."""
        self._users: dict[int, str] = {}
        """Message ``n``'s author (unread counts, receipts and trimming read it without decoding)."""
        self._deleted: dict[int, bool] = {}
        """Tombstones: ``n`` of every deleted message still in the log."""
        self._cid_keys: dict[int, str] = {}
        """Message ``n``'s ``_cid_key`` (to forget it when ``n`` is trimmed)."""
        self._by_cid: dict[str, int] = {}
        """Message number by ``_cid_key(user, cid)``: a string, not a ``(user, cid)`` tuple, which
        would track the dict again (see the class docstring)."""
        self._first = 1
        """The oldest number in the log (``last_n + 1`` when it is empty): the log holds ``_first`` to ``last_n``."""
        self.read: dict[str, int] = {}
        self.delivered = DeliveryCursors()
        """Delivered cursors beside the read ones, and which statuses changed (engine/receipts.py)."""
        self.last_n = 0
        self._limit = limit
        self.trimmed: list[int] = []
        """Numbers of messages dropped past the limit since the last ``take_trimmed`` (to delete)."""
        self.trimmed_authors: set[str] = set()
        """Authors of the messages dropped since the last ``take_trimmed``: their read cursors are
        stored then (see ``restore``: a cursor that a send moved is stored as the message itself)."""

    def __len__(self) -> int:
        return len(self._records)

    @property
    def first_n(self) -> int | None:
        """The oldest message's number still in the log (None when it is empty)."""
        return self._first if self._records else None

    @property
    def messages(self) -> list[ChatMessage]:
        """Every message, oldest first, decoded (for tests and tools: a turn never needs them all)."""
        return [_message(self._records[n]) for n in range(self._first, self.last_n + 1)]

    def get(self, n: int) -> ChatMessage | None:
        record = self._records.get(n)
        return None if record is None else _message(record)

    def record(self, n: int) -> bytes | None:
        """Message ``n``'s record as stored (packed), or None when it is not in the log."""
        return self._records.get(n)

    def by_id(self, msg_id: str) -> ChatMessage | None:
        """The message with id ``msg_id`` (ids are ``m<n>``)."""
        if not msg_id.startswith("m") or not msg_id[1:].isdigit():
            return None
        return self.get(int(msg_id[1:]))

    def send(self, *, user: str, name: str, cid: str, text: str, meta: Any, ts: int) -> tuple[int, int, bytes, bool]:
        """Append a message. Returns ``(n, ts, record, dup)``: a repeated ``cid`` from the same user
        returns the original's number, time and record, and True."""
        key = _cid_key(user, cid)
        seen = self._by_cid.get(key)
        if seen is not None:
            original = self._records[seen]
            return seen, unpackb(original)["ts"], original, True
        n = self.last_n = self.last_n + 1
        record = self._records[n] = pack_message(f"m{n}", n, user, name, text, ts, cid, None, False, meta)
        self._users[n] = user
        self._cid_keys[n] = key
        self._by_cid[key] = n
        if len(self._records) > self._limit:
            self._trim()
        read = self.read
        if read.get(user, 0) < n:  # one has read what one wrote
            read[user] = n
        return n, ts, record, False

    def _trim(self) -> None:
        while len(self._records) > self._limit:
            old = self._first
            self._first = old + 1
            self.trimmed_authors.add(self._users.pop(old))
            del self._records[old]
            self._deleted.pop(old, None)
            key = self._cid_keys.pop(old, None)
            if key is not None:
                self._by_cid.pop(key, None)
            self.trimmed.append(old)

    def _replace(self, message: ChatMessage) -> ChatMessage:
        m = message
        self._records[m.n] = pack_message(m.id, m.n, m.user, m.name, m.text, m.ts, m.cid, m.edited, m.deleted, m.meta)
        if m.deleted:
            self._deleted[m.n] = True
        return message

    def edit(self, *, user: str, msg_id: str, text: str, ts: int) -> ChatMessage:
        """Change the text of one's own message."""
        message = self.by_id(msg_id)
        if message is None or message.deleted:
            raise RoomError(ErrorCode.NOT_FOUND, f"no message {msg_id}")
        if message.user != user:
            raise RoomError(ErrorCode.FORBIDDEN, "only the author may edit a message")
        return self._replace(dataclasses.replace(message, text=text, edited=ts))

    def delete(self, *, user: str, msg_id: str, is_host: bool, ts: int) -> ChatMessage:
        """Delete one's own message, or any message as host; leaves a tombstone."""
        message = self.by_id(msg_id)
        if message is None or message.deleted:
            raise RoomError(ErrorCode.NOT_FOUND, f"no message {msg_id}")
        if message.user != user and not is_host:
            raise RoomError(ErrorCode.FORBIDDEN, "only the author or the host may delete a message")
        return self._replace(dataclasses.replace(message, text="", meta=None, deleted=True, edited=ts))

    def page(self, before: int | None, limit: int, budget: int = PAGE_BYTES) -> tuple[list[ChatMessage], int | None]:
        """Up to ``limit`` messages with ``n < before`` (newest first chosen), returned oldest first.

        The page also stops at ``budget`` encoded bytes (texts and ``meta`` are the members' own); the
        cursor is then the oldest message on the page, so nothing is skipped. A message's encoded size
        is its record's length (the record is its msgpack map, as it sits in a page): nothing is
        measured, and only the page is decoded.
        """
        records = self._records
        first = self._first
        end = self.last_n + 1 if before is None else min(before, self.last_n + 1)
        if not records or end <= first:
            return [], None
        chunk, more = fit_page(range(end - 1, first - 1, -1), limit, lambda n: len(records[n]), budget)
        chunk.reverse()
        return [_message(records[n]) for n in chunk], (chunk[0] if more else None)

    def heads(self, newest: int, oldest: int) -> Iterator[MessageHead]:
        """Messages ``newest`` down to ``oldest`` (those still in the log), newest first, as heads."""
        users, deleted = self._users, self._deleted
        for n in range(min(newest, self.last_n), max(oldest, self._first) - 1, -1):
            yield MessageHead(n, users[n], n in deleted)

    def mark_read(self, user: str, n: int) -> int | None:
        """Move ``user``'s cursor forward to ``n`` (capped at the newest). Returns the new cursor, or
        None when it did not move."""
        n = min(n, self.last_n)
        current = self.read.get(user, 0)
        if n <= current:
            return None
        self.read[user] = n
        self.delivered.note(current + 1, n)  # read counts changed (delivered too, past the delivered cursor)
        return n

    def unread(self, user: str) -> int:
        """Messages after the user's cursor, written by others and not deleted."""
        cursor = self.read.get(user, 0)
        count = 0
        users, deleted = self._users, self._deleted
        for n in range(self.last_n, max(cursor, self._first - 1), -1):
            if users[n] != user and n not in deleted:
                count += 1
        return count

    def take_trimmed(self) -> list[int]:
        """The messages dropped past the limit since the last call."""
        trimmed, self.trimmed = self.trimmed, []
        return trimmed

    def take_trimmed_authors(self) -> set[str]:
        """The authors of the messages dropped since the last call (their cursors to store)."""
        authors, self.trimmed_authors = self.trimmed_authors, set()
        return authors

    def restore(self, records: list[bytes], read: dict[str, int], last_n: int,
                delivered: dict[str, int] | None = None) -> None:
        """Reload from durable records (the packed messages, oldest first), kept as they are.

        A read cursor is the larger of the stored one (``read``: moved by ``mark_read``) and the
        newest message its user wrote (``send`` moves the author's cursor to it, and the room
        stores only the message: one write fewer per message). The cursor of an author whose
        messages are trimmed is stored with the trim (``trimmed_authors``), so none goes back.

        Raises:
            ValueError: the numbers are not consecutive up to ``last_n`` (a commit writes a message, its
                trimmed predecessors' deletes and the counters together: a gap means damaged data, and
                the room refuses to load rather than show another message under a number).
        """
        authored: dict[str, int] = {}
        for record in records:
            fields = unpackb(record)
            n = fields["n"]
            if not self._records:
                self._first = n
            elif n != self._first + len(self._records):
                raise ValueError(f"chat message {n} follows {self._first + len(self._records) - 1}")
            self._records[n] = record
            user = self._users[n] = fields["user"]
            authored[user] = n
            if fields.get("deleted"):
                self._deleted[n] = True
            if fields.get("cid") is not None:
                key = self._cid_keys[n] = _cid_key(fields["user"], fields["cid"])
                self._by_cid[key] = n
        if records and n < last_n:
            raise ValueError(f"chat messages end at {n}, the counters at {last_n}")
        self.last_n = max(last_n, n if records else 0)
        if not self._records:
            self._first = self.last_n + 1
        self.read.update(read)
        for user, n in authored.items():
            if self.read.get(user, 0) < n:
                self.read[user] = n
        self._trim()
        self.delivered.restore(delivered or {})


def _cid_key(user: str, cid: str) -> str:
    """One string per ``(user, cid)``, unambiguous for any strings: the user's length leads it."""
    return f"{len(user)}:{user}{cid}"



