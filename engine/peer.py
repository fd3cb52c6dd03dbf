"""What a room actor needs from a connected session, and nothing more.

The gateway's connections implement it; rooms depend on this small interface instead of the gateway,
so imports keep pointing downstream (gateway → router → room → peer).
"""

from __future__ import annotations

import abc

from roost.protocol.errors import CloseCode

__all__ = ["Peer"]


class Peer(abc.ABC):
    """One authenticated session as rooms see it."""

    sid: str
    """Session id: stable across reconnects of the same session."""
    user: str
    """The token's ``sub``."""
    name: str
    """The token's display name."""
    room_scope: str | None
    """The token's ``room`` claim: the only room (id or code) this session may enter."""
    role: str | None
    """The token's ``role`` claim, for room logic (``RoomContext.role``). Fixed for the connection:
    ``refresh`` refuses a token with another role."""
    rooms: set[str]
    """Ids of the rooms this session is attached to (maintained by the rooms)."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """False once the connection is closing: rooms must not attach it any more."""

    @property
    @abc.abstractmethod
    def last_heard_ms(self) -> int:
        """Wall time (ms) this session's connection last received bytes (any frame, pings included)."""

    @abc.abstractmethod
    def push(self, data: bytes) -> None:
        """Queue whole WebSocket frames for this session; never blocks."""

    @abc.abstractmethod
    def close(self, code: CloseCode, reason: str) -> None:
        """Start closing the connection with ``code``; never blocks."""
