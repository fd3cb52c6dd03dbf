"""Room logic: the embedding app's own game rules, running inside the room actor with authority.

Subclass :class:`RoomLogic`, register a factory under a name in ``Config.logics``, and rooms created
with that ``logic`` name run it. Every hook is synchronous and runs inside the actor's turn, so it sees
and changes the room without races, and its changes are committed and broadcast with the turn.

A hook that raises :class:`~roost.errors.RoomError` refuses the request that triggered it (the client
gets that error). Any other exception crashes the room actor: the supervisor restarts the room from
its last committed state and resyncs its members, and after too many crashes closes the room.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

from roost.protocol.frames import Member, Phase

__all__ = ["Notifier", "RoomContext", "RoomLogic"]


class Notifier(Protocol):
    """Where room logic's ``notify`` goes (the engine's inbox service, engine/inbox.py)."""

    def check_post(self, user: str, kind: str, body: Any, pending: int) -> None:
        """Raise RoomError unless an entry like this may be posted (``pending`` are already waiting
        for this turn's commit)."""

    def post(self, user: str, kind: str, body: Any) -> None:
        """Queue the entry for the inbox writer (after the room's turn is committed)."""


class RoomContext(abc.ABC):
    """What room logic may read and do. Provided by the room actor; valid only during a hook."""

    @property
    @abc.abstractmethod
    def room_id(self) -> str: ...

    @property
    @abc.abstractmethod
    def phase(self) -> Phase: ...

    @property
    @abc.abstractmethod
    def version(self) -> int: ...

    @property
    @abc.abstractmethod
    def state(self) -> Any: ...

    @property
    @abc.abstractmethod
    def host(self) -> str | None: ...

    @property
    @abc.abstractmethod
    def now_ms(self) -> int:
        """Wall-clock time in ms (the engine's injected clock)."""

    @abc.abstractmethod
    def members(self) -> list[Member]:
        """Current members, longest-present first."""

    @abc.abstractmethod
    def role(self, user: str) -> str | None:
        """The ``role`` claim of ``user``'s token (None without one, or for a non-member).

        For a member it is the role of its most recently joined or resumed session (a user's
        sessions normally carry one token kind); inside ``on_join`` it is the joiner's. A
        connection's role never changes (``refresh`` refuses another role), so logic may rely on it
        for the whole turn and for every later request of that session.
        """

    @abc.abstractmethod
    def set_state(self, state: Any = None, *, phase: Phase | None = None, reason: str | None = None) -> int:
        """Replace the game state (and/or phase); bumps the version, broadcasts ``state``. Returns the version."""

    @abc.abstractmethod
    def broadcast(self, kind: str, body: Any = None) -> None:
        """Send a ``message`` event (without ``sender``) to every member."""

    @abc.abstractmethod
    def close(self, message: str = "") -> None:
        """Close the room at the end of this turn (members get ``room_closed``)."""

    @abc.abstractmethod
    def notify(self, user: str, kind: str, body: Any = None) -> None:
        """Put an entry in ``user``'s personal inbox (PROTOCOL.md §16): an invite, a match found.

        The entry is posted once this turn is committed (a turn that crashes posts nothing) and is
        then committed and delivered by the inbox writer, in its own order. Raises RoomError
        (``bad_field``, ``too_large``; ``rate_limited`` when the writer's queue is full) at once.
        """


class RoomLogic:
    """Base class with no-op hooks; override the ones your game needs."""

    tick_rate: float = 0.0
    """Calls of :meth:`on_tick` per second (0: none). Ticks are driven by the room's timer heap."""

    def on_create(self, room: RoomContext) -> None:
        """The room was just created (not called on a restart)."""

    def on_join(self, room: RoomContext, user: str, name: str) -> None:
        """A new member is about to be seated; raise RoomError to refuse. ``room.role(user)`` is its role claim."""

    def on_leave(self, room: RoomContext, user: str, *, consented: bool) -> None:
        """A member left (``consented``) or its reconnect grace ran out."""

    def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
        """A ``send`` request from a member. The return value is the ``ok`` result: an opaque value
        whose ``ok`` fits a server frame. One that does not (too large, not msgpack) is a crash like
        any other exception: the turn is rolled back and the member answered ``internal``."""
        return None

    def on_inactive(self, room: RoomContext, user: str, policy_applied: bool) -> None:
        """A member went offline mid-game; ``policy_applied`` says whether the room's policy acted."""

    def on_tick(self, room: RoomContext, dt: float) -> None:
        """Periodic tick (``dt`` seconds since the previous one)."""

    def on_dispose(self, room: RoomContext) -> None:
        """The room is closing for good."""
