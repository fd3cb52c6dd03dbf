"""The chat log of one room: numbering, idempotent sends, edit/delete rules, paging, read cursors.

Pure: no I/O. Messages are numbered 1, 2, 3… with no gaps (``n``); deletion leaves a tombstone so the
numbering, paging and unread counts stay simple. The log keeps at most ``limit`` messages; older
ones are dropped (with their idempotency keys).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from roost.protocol.codec import PAGE_BYTES, fit_page, record_size
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import ChatMessage

from .errors import RoomError
from .receipts import DeliveryCursors

__all__ = ["ChatLog", "new_message"]

_FIELDS = ("id", "n", "user", "name", "text", "ts", "cid", "edited", "deleted", "meta")
if tuple(f.name for f in dataclasses.fields(ChatMessage)) != _FIELDS:  # pragma: no cover - a guard
    raise ImportError("ChatMessage's fields changed: update engine/chat.py's new_message")
_new = object.__new__
(_set_id, _set_n, _set_user, _set_name, _set_text, _set_ts, _set_cid, _set_edited, _set_deleted,
 _set_meta) = (ChatMessage.__dict__[name].__set__ for name in _FIELDS)


def new_message(id: str, n: int, user: str, name: str, text: str, ts: int, cid: str | None,  # noqa: A002
                meta: Any) -> ChatMessage:
    """``ChatMessage(id=..., ..., meta=meta)`` (not edited, not deleted) for values the room already
    validated, a quarter of the cost: the frozen dataclass's ``__init__`` parses keywords and sets
    each slot through ``object.__setattr__`` (~3.7 us against ~0.9 us here, measured). The trap is a
    field added to ChatMessage: the import-time check above fails then, instead of messages missing a
    slot (an AttributeError far away, when one is read). ``ChatMessage`` has no ``__post_init__``.
    """
    m = _new(ChatMessage)
    _set_id(m, id)
    _set_n(m, n)
    _set_user(m, user)
    _set_name(m, name)
    _set_text(m, text)
    _set_ts(m, ts)
    _set_cid(m, cid)
    _set_edited(m, None)
    _set_deleted(m, False)
    _set_meta(m, meta)
    return m


class ChatLog:
    """Messages of one room, oldest first, with per-user read cursors."""

    __slots__ = ("_by_cid", "_limit", "_sizes", "delivered", "last_n", "messages", "read", "trimmed")

    def __init__(self, limit: int) -> None:
        self.messages: collections.deque[ChatMessage] = collections.deque()
        self._by_cid: dict[tuple[str, str], int] = {}
        self._sizes: dict[int, int] = {}
        """Encoded size of message ``n``, measured when a page first needs it (a message changes only
        by edit or delete, which forget it): paging the same history again measures nothing."""
        self.read: dict[str, int] = {}
        self.delivered = DeliveryCursors()
        """Delivered cursors beside the read ones, and which statuses changed (engine/receipts.py)."""
        self.last_n = 0
        self._limit = limit
        self.trimmed: list[int] = []
        """Numbers of messages dropped past the limit since the last ``take_trimmed`` (to delete)."""

    def get(self, n: int) -> ChatMessage | None:
        if not self.messages:
            return None
        index = n - self.messages[0].n
        if 0 <= index < len(self.messages):
            return self.messages[index]
        return None

    def by_id(self, msg_id: str) -> ChatMessage | None:
        """The message with id ``msg_id`` (ids are ``m<n>``)."""
        if not msg_id.startswith("m") or not msg_id[1:].isdigit():
            return None
        return self.get(int(msg_id[1:]))

    def send(self, *, user: str, name: str, cid: str, text: str, meta: Any, ts: int) -> tuple[ChatMessage, bool]:
        """Append a message; a repeated ``cid`` from the same user returns the original and True."""
        seen = self._by_cid.get((user, cid))
        if seen is not None:
            original = self.get(seen)
            if original is not None:
                return original, True
        n = self.last_n = self.last_n + 1
        message = new_message(f"m{n}", n, user, name, text, ts, cid, meta)
        self._append(message)
        read = self.read
        if read.get(user, 0) < n:  # one has read what one wrote
            read[user] = n
        return message, False

    def _append(self, message: ChatMessage) -> None:
        self.messages.append(message)
        if message.cid is not None:
            self._by_cid[(message.user, message.cid)] = message.n
        while len(self.messages) > self._limit:
            old = self.messages.popleft()
            self.trimmed.append(old.n)
            self._sizes.pop(old.n, None)
            if old.cid is not None:
                self._by_cid.pop((old.user, old.cid), None)

    def _replace(self, message: ChatMessage) -> None:
        self._sizes.pop(message.n, None)
        self.messages[message.n - self.messages[0].n] = message

    def edit(self, *, user: str, msg_id: str, text: str, ts: int) -> ChatMessage:
        """Change the text of one's own message."""
        message = self.by_id(msg_id)
        if message is None or message.deleted:
            raise RoomError(ErrorCode.NOT_FOUND, f"no message {msg_id}")
        if message.user != user:
            raise RoomError(ErrorCode.FORBIDDEN, "only the author may edit a message")
        edited = dataclasses.replace(message, text=text, edited=ts)
        self._replace(edited)
        return edited

    def delete(self, *, user: str, msg_id: str, is_host: bool, ts: int) -> ChatMessage:
        """Delete one's own message, or any message as host; leaves a tombstone."""
        message = self.by_id(msg_id)
        if message is None or message.deleted:
            raise RoomError(ErrorCode.NOT_FOUND, f"no message {msg_id}")
        if message.user != user and not is_host:
            raise RoomError(ErrorCode.FORBIDDEN, "only the author or the host may delete a message")
        tombstone = dataclasses.replace(message, text="", meta=None, deleted=True, edited=ts)
        self._replace(tombstone)
        return tombstone

    def page(self, before: int | None, limit: int, budget: int = PAGE_BYTES) -> tuple[list[ChatMessage], int | None]:
        """Up to ``limit`` messages with ``n < before`` (newest first chosen), returned oldest first.

        The page also stops at ``budget`` encoded bytes (texts and ``meta`` are the members' own); the
        cursor is then the oldest message on the page, so nothing is skipped.
        """
        if not self.messages:
            return [], None
        first = self.messages[0].n
        end = self.last_n + 1 if before is None else min(before, self.last_n + 1)
        if end <= first:
            return [], None
        newest_first = (self.messages[n - first] for n in range(end - 1, first - 1, -1))
        chunk, more = fit_page(newest_first, limit, self._size, budget)
        chunk.reverse()
        return chunk, (chunk[0].n if more else None)

    def _size(self, message: ChatMessage) -> int:
        size = self._sizes.get(message.n)
        if size is None:
            size = self._sizes[message.n] = record_size(message)
        return size

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
        for message in reversed(self.messages):
            if message.n <= cursor:
                break
            if message.user != user and not message.deleted:
                count += 1
        return count

    def take_trimmed(self) -> list[int]:
        """The messages dropped past the limit since the last call."""
        trimmed, self.trimmed = self.trimmed, []
        return trimmed

    def restore(self, messages: list[ChatMessage], read: dict[str, int], last_n: int,
                delivered: dict[str, int] | None = None) -> None:
        """Reload from durable records (oldest first)."""
        for message in messages:
            self._append(message)
        self.read.update(read)
        self.delivered.restore(delivered or {})
        self.last_n = max(last_n, self.messages[-1].n if self.messages else 0)
