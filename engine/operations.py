"""Operations on rooms from inside the process: the embedding app's API and the admin API share it.

Each operation runs inside the room's actor turn (as a ``Call`` through the room's inbox), so it is
ordered with the room's other requests, committed before it returns, and refused with the same
:class:`~roost.errors.RoomError` codes a client would get.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from roost.protocol.errors import ErrorCode
from roost.protocol.codec import SERVER_LIMITS
from roost.protocol.frames import InboxEvent, LobbyPage, RoomSnapshot
from roost.protocol.schema import FieldProblem, Opaque

from .errors import RoomError
from .inbox import InboxService
from .revocations import Revocations
from .room import Call, RoomActor
from .router import Router

__all__ = ["Operations"]

T = TypeVar("T")


class Operations:
    """Room and token operations for the embedding app and operators."""

    def __init__(self, router: Router, revocations: Revocations, inbox: InboxService | None = None) -> None:
        self._router = router
        self._revocations = revocations
        self._inbox = inbox

    async def _call(self, room_id: str, fn: Callable[[RoomActor], T]) -> T:
        runtime = self._router.get(room_id)
        if runtime is None or runtime.closed:
            raise RoomError(ErrorCode.NOT_FOUND, "no such room")
        call = Call(fn)
        try:
            await runtime.send_channel.send(call)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RoomError(ErrorCode.NOT_FOUND, "the room is closed") from None
        result: T = await call.wait()
        return result

    async def publish(self, room_id: str, kind: str, body: Any = None) -> None:
        """Broadcast a ``message`` event (no sender) to the room's members."""
        if not isinstance(kind, str) or not 1 <= len(kind) <= 64:
            raise RoomError(ErrorCode.BAD_FIELD, "kind must be a string of 1 to 64 characters")
        try:
            Opaque().load(body, SERVER_LIMITS)  # what the room would refuse to encode: refuse it here
        except FieldProblem as problem:
            raise RoomError(problem.code, f"body: {problem.message}") from None
        await self._call(room_id, lambda actor: actor.publish(kind, body))

    async def kick(self, room_id: str, user: str) -> None:
        """Remove ``user`` from the room."""
        await self._call(room_id, lambda actor: actor.kick(user))

    async def close_room(self, room_id: str, message: str = "", *, code: str = "closed") -> None:
        """Close the room: members get ``room_closed``; its state is disposed."""
        await self._call(room_id, lambda actor: actor.close_room(code, message))

    async def snapshot(self, room_id: str) -> RoomSnapshot:
        """The room's current state."""
        return await self._call(room_id, lambda actor: actor.read_snapshot())

    def rooms(self, cursor: str | None = None, limit: int = 50) -> LobbyPage:
        """A page of every live room, private ones included."""
        return self._router.lobby(cursor, min(max(limit, 1), 100), include_private=True)

    async def revoke_token(self, jti: str, until: int) -> None:
        """Revoke one token by ``jti`` until its ``exp`` (Unix s); its live connections close."""
        await self._revocations.revoke_jti(jti, until)

    async def revoke_user(self, user: str, until: int) -> None:
        """Revoke every token ``user`` holds now; keep the entry until ``until`` (Unix s)."""
        await self._revocations.revoke_user(user, until)

    async def notify(self, user: str, kind: str, body: Any = None) -> InboxEvent:
        """Put an entry in ``user``'s personal inbox (PROTOCOL.md §15); returns once it is committed
        and pushed to every live session of the user that attached its inbox."""
        if self._inbox is None:
            raise RoomError(ErrorCode.UNSUPPORTED, "this engine has no inboxes")
        return await self._inbox.notify(user, kind, body)
