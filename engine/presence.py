"""The presence table of one room: members, their sessions folded together, status, data, typing.

Pure: no I/O, no Trio. Callers pass ``now`` (monotonic seconds, the room's timer clock) and ``wall_ms``
(user-visible time). Methods return whether the member's public entry changed, so the room actor
knows which diffs to emit; deadlines (typing expiry, reconnect grace) are exposed for the actor's
single timer heap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from roost.protocol.codec import PAGE_BYTES, fit_page, record_size
from roost.protocol.frames import Member, PresenceStatus, Status

__all__ = ["MemberEntry", "Presence", "SessionEntry"]


@dataclasses.dataclass(slots=True)
class SessionEntry:
    """One device/tab of a member. ``live`` is false while its connection is gone (grace period)."""

    sid: str
    status: Status = Status.ONLINE
    live: bool = True


@dataclasses.dataclass(slots=True)
class MemberEntry:
    """A member of the room; survives dropped connections until its grace runs out."""

    user: str
    name: str
    joined: int
    """Join order (a room-wide counter), used for host hand-over and stable listing."""
    last_seen: int
    """Wall time (ms) the member was last heard from: moved by every request the room handles for it
    (in memory, no write of its own), by joins and resumes, and at a drop to the time the dropped
    connection last received anything. It is stored with the member's record whenever that record is
    written anyway (join, presence change, drop): a crash may lose the moves since the last write."""
    data: Any = None
    role: str | None = None
    """The ``role`` claim of the member's most recently joined or resumed session (for room logic)."""
    typing_until: float | None = None
    grace_until: float | None = None
    sessions: dict[str, SessionEntry] = dataclasses.field(default_factory=dict)

    @property
    def live_sessions(self) -> int:
        return sum(1 for s in self.sessions.values() if s.live)

    @property
    def status(self) -> PresenceStatus:
        live = [s for s in self.sessions.values() if s.live]
        if not live:
            return PresenceStatus.OFFLINE
        if any(s.status is Status.ONLINE for s in live):
            return PresenceStatus.ONLINE
        return PresenceStatus.AWAY

    def view(self) -> Member:
        """The member as the wire shows it."""
        return Member(
            user=self.user,
            name=self.name,
            status=self.status,
            last_seen=self.last_seen,
            sessions=self.live_sessions,
            typing=self.typing_until is not None,
            data=self.data,
        )

    def signature(self) -> tuple[Any, ...]:
        """What diffs are about: everything but ``last_seen`` (which changes with any activity)."""
        return (self.name, self.status, self.live_sessions, self.typing_until is not None, self.data)

    def to_record(self) -> dict[str, Any]:
        """Durable form: what survives a restart. Sessions are not kept: after a restart every member
        has none (it shows ``offline``) until one of its sessions resumes or joins, within the grace."""
        return {"user": self.user, "name": self.name, "joined": self.joined, "last_seen": self.last_seen,
                "data": self.data, "role": self.role}


class Presence:
    """Members by user id, in join order."""

    __slots__ = ("_join_counter", "members")

    def __init__(self) -> None:
        self.members: dict[str, MemberEntry] = {}
        self._join_counter = 0

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, user: object) -> bool:
        return user in self.members

    def get(self, user: str) -> MemberEntry | None:
        return self.members.get(user)

    def add(self, user: str, name: str, sid: str, wall_ms: int, role: str | None = None) -> MemberEntry:
        """Seat a new member with one live session."""
        self._join_counter += 1
        entry = MemberEntry(user=user, name=name, joined=self._join_counter, last_seen=wall_ms, role=role)
        entry.sessions[sid] = SessionEntry(sid)
        self.members[user] = entry
        return entry

    def attach(self, user: str, sid: str, name: str, wall_ms: int, role: str | None = None) -> bool:
        """A (new or returning) session of an existing member goes live. Returns True if the entry changed."""
        entry = self.members[user]
        before = entry.signature()
        session = entry.sessions.get(sid)
        if session is None:
            entry.sessions[sid] = SessionEntry(sid)
        else:
            session.live = True
        entry.grace_until = None
        entry.name = name or entry.name
        entry.role = role
        entry.last_seen = max(entry.last_seen, wall_ms)
        return entry.signature() != before

    def drop(self, user: str, sid: str, now: float, grace: float, wall_ms: int) -> bool:
        """A session's connection went away. Starts the grace period when it was the last one.

        ``wall_ms`` is when the connection was last heard from, not the drop time: a heartbeat expiry
        comes 2.5 heartbeats after the member's last frame. Returns True if the public entry changed.
        """
        entry = self.members.get(user)
        session = entry.sessions.get(sid) if entry is not None else None
        if entry is None or session is None or not session.live:
            return False
        before = entry.signature()
        session.live = False
        entry.last_seen = max(entry.last_seen, wall_ms)
        if entry.live_sessions == 0:
            entry.grace_until = now + grace
            entry.typing_until = None
        return entry.signature() != before

    def end(self, user: str, sid: str) -> bool:
        """Session ``sid`` ended itself (``bye``): forget it. Returns True when the member still has a
        live session (it stays), False when it has none (the caller removes it: no grace)."""
        entry = self.members.get(user)
        if entry is None:
            return False
        entry.sessions.pop(sid, None)
        return entry.live_sessions > 0

    def remove(self, user: str) -> MemberEntry | None:
        """The member leaves for good."""
        return self.members.pop(user, None)

    def update(self, user: str, sid: str, data: Any, status: Status | None, wall_ms: int) -> bool:
        """Own custom data and/or a session's status. Returns True if the entry changed."""
        entry = self.members[user]
        before = entry.signature()
        if data is not None:
            entry.data = data
        if status is not None and sid in entry.sessions:
            entry.sessions[sid].status = status
        entry.last_seen = max(entry.last_seen, wall_ms)
        return entry.signature() != before

    def seen(self, user: str, wall_ms: int) -> None:
        """The member was heard from (a request of one of its sessions). In memory only: no diff
        (``last_seen`` is not part of the signature) and no write of its own."""
        entry = self.members.get(user)
        if entry is not None and wall_ms > entry.last_seen:
            entry.last_seen = wall_ms

    def set_typing(self, user: str, on: bool, now: float, timeout: float) -> bool:
        """Start (or extend) or stop the typing indicator. Returns True if it flipped."""
        entry = self.members[user]
        was = entry.typing_until is not None
        entry.typing_until = now + timeout if on else None
        return was != on

    def typing_due(self, user: str, now: float) -> bool:
        """Clear the typing indicator if its expiry has come. Returns True if it was cleared."""
        entry = self.members.get(user)
        if entry is None or entry.typing_until is None or entry.typing_until > now:
            return False
        entry.typing_until = None
        return True

    def grace_due(self, user: str, now: float) -> bool:
        """Whether the member's reconnect grace is over (it has no live session left)."""
        entry = self.members.get(user)
        return entry is not None and entry.grace_until is not None and entry.grace_until <= now

    def in_join_order(self) -> Iterator[MemberEntry]:
        """Members from the longest-present (dicts keep insertion order, and joins only append)."""
        return iter(list(self.members.values()))

    def page(self, after: str | None, limit: int, budget: int = PAGE_BYTES) -> tuple[list[Member], str | None]:
        """Members ordered online first, then away, then offline, each by user id; cursor = last key.

        At most ``limit`` members whose encoded entries add up to at most ``budget`` bytes: presence
        ``data`` is the members' own, and a count alone would let them make the page (or a joiner's
        snapshot) too large to send. Only the members on the page (and one more) are viewed and
        measured.
        """
        ranked = sorted(self.members.values(), key=_list_key)
        if after is not None:
            ranked = [e for e in ranked if _cursor_of(e) > after]
        chunk, more = fit_page((e.view() for e in ranked), limit, record_size, budget)
        return chunk, (_cursor_of(chunk[-1]) if more else None)

    def restore(self, records: list[dict[str, Any]], now: float, grace: float) -> None:
        """Bring members back from their durable records: every session dropped, grace restarted."""
        for record in sorted(records, key=lambda r: r["joined"]):
            entry = MemberEntry(
                user=record["user"],
                name=record["name"],
                joined=record["joined"],
                last_seen=record["last_seen"],
                data=record.get("data"),
                role=record.get("role"),
                grace_until=now + grace,
            )
            self.members[entry.user] = entry
            self._join_counter = max(self._join_counter, entry.joined)


_STATUS_RANK = {PresenceStatus.ONLINE: "0", PresenceStatus.AWAY: "1", PresenceStatus.OFFLINE: "2"}


def _cursor_of(entry: MemberEntry | Member) -> str:
    return _STATUS_RANK[entry.status] + entry.user


def _list_key(entry: MemberEntry) -> str:
    return _cursor_of(entry)
