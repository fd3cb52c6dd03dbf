"""Delivered cursors of one room, and the delivery status of its chat messages (PROTOCOL.md §17).

Pure: no I/O and no Trio. Beside each user's read cursor (engine/chat.py) a room keeps a *delivered*
cursor: every message up to it has reached one of the user's devices. A message's status for its
author is then two counts over the room's other members: how many have it delivered (delivered or
read cursor at ``n`` or past it) and how many have read it.

The trap this module is shaped by: N members each moving a cursor, each move broadcast to N
members, is O(N²) frames per message. Here a move only widens the range of message numbers whose
status changed (``note``); the room's one timer takes that range once per ``receipt_window``
(``take_changed``) and sends each *author* of a message in it one ``receipts`` frame. The counts
for a whole batch come from two sorted lists of the members' cursors (one sort per batch, then a
bisection per message), never from a scan of the members per message.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Mapping
from typing import Protocol, TypeVar

from roost.protocol.frames import MessageStatus

__all__ = ["Census", "DeliveryCursors", "by_author"]


class _Message(Protocol):
    """What a status needs of a message: a ``ChatMessage``, or the log's ``MessageHead``."""

    @property
    def n(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def deleted(self) -> bool: ...


M = TypeVar("M", bound=_Message)


class DeliveryCursors:
    """Per-user delivered cursors, what is not stored yet, and the range of changed statuses."""

    __slots__ = ("changed_hi", "changed_lo", "cursors", "unwritten")

    def __init__(self) -> None:
        self.cursors: dict[str, int] = {}
        self.unwritten: set[str] = set()
        """Users whose cursor moved since it was last handed to a commit (``dlv:<user>`` records)."""
        self.changed_lo = 0
        self.changed_hi = 0
        """Message numbers ``changed_lo..changed_hi`` may have a new status (0, 0: none)."""

    def get(self, user: str, read: int = 0) -> int:
        """The user's effective delivered cursor: what was read was delivered too."""
        return max(self.cursors.get(user, 0), read)

    def mark(self, user: str, n: int, *, last_n: int, read: int) -> int | None:
        """Move ``user``'s cursor forward to ``n``, capped at the newest message ``last_n``.

        Returns the new cursor, or None when it did not move (``n`` at or behind the effective
        cursor: attackers' small values, repeats, reorderings). Never moves back.
        """
        current = self.get(user, read)
        n = min(n, last_n)
        if n <= current:
            return None
        self.cursors[user] = n
        self.unwritten.add(user)
        self.note(current + 1, n)
        return n

    def note(self, lo: int, hi: int) -> None:
        """Messages ``lo..hi`` may have changed status (a delivered or a read cursor crossed them)."""
        if hi < lo:
            return
        if self.changed_hi == 0:
            self.changed_lo, self.changed_hi = lo, hi
        else:
            self.changed_lo, self.changed_hi = min(self.changed_lo, lo), max(self.changed_hi, hi)

    def take_changed(self) -> tuple[int, int] | None:
        """The range of changed statuses since the last call, or None."""
        if self.changed_hi == 0:
            return None
        changed = self.changed_lo, self.changed_hi
        self.changed_lo = self.changed_hi = 0
        return changed

    def take_unwritten(self) -> list[tuple[str, int]]:
        """The cursors to store with the next commit, by user (sorted: deterministic writes)."""
        moved = sorted(self.unwritten)
        self.unwritten.clear()
        return [(user, self.cursors[user]) for user in moved]

    def restore(self, cursors: Mapping[str, int]) -> None:
        self.cursors.update(cursors)


class Census:
    """The members' cursors of one moment, sorted, to count "at ``n`` or past it" by bisection.

    Built once per batch (O(N log N)); each count is then O(log N). Only current members count:
    a user who left keeps its cursors (for its unread counts if it comes back) but is nobody's
    recipient any more.
    """

    __slots__ = ("_delivered", "_members", "_read", "_read_of", "_delivered_of")

    def __init__(self, members: Collection[str], read: Mapping[str, int], delivered: DeliveryCursors) -> None:
        self._members = members
        self._read_of = {user: read.get(user, 0) for user in members}
        self._delivered_of = {user: delivered.get(user, self._read_of[user]) for user in members}
        self._read = sorted(self._read_of.values())
        self._delivered = sorted(self._delivered_of.values())

    def status(self, message: _Message) -> MessageStatus:
        """The message's counts over the members other than its author."""
        n, author = message.n, message.user
        delivered = len(self._delivered) - bisect.bisect_left(self._delivered, n)
        read = len(self._read) - bisect.bisect_left(self._read, n)
        of = len(self._read)
        if author in self._read_of:  # the author's own cursors are not a receipt
            of -= 1
            delivered -= self._delivered_of[author] >= n
            read -= self._read_of[author] >= n
        return MessageStatus(n=n, delivered=delivered, read=read, of=of)

    def users(self, message: _Message, *, read: bool, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """One page of the other members that have ``message`` delivered (or read), by user id
        ascending after ``after``; the cursor for the next page, or None at the end."""
        cursors = self._read_of if read else self._delivered_of
        chosen = sorted(u for u, c in cursors.items() if c >= message.n and u != message.user
                        and (after is None or u > after))
        page = chosen[:limit]
        return page, (page[-1] if len(chosen) > limit else None)


def by_author(messages: Iterable[M], authors: Collection[str], limit: int) -> dict[str, list[M]]:
    """The newest ``limit`` non-deleted messages per author among ``authors``, oldest first.

    ``messages`` comes newest first; the walk stops early once every author has its page.
    """
    out: dict[str, list[M]] = {}
    full = 0
    for message in messages:
        if message.deleted or message.user not in authors:
            continue
        page = out.setdefault(message.user, [])
        if len(page) < limit:
            page.append(message)
            if len(page) == limit:
                full += 1
                if full == len(authors):
                    break
    for page in out.values():
        page.reverse()
    return out
