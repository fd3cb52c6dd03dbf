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
from roost.protocol.frames import AuditPage, InboxEvent, LobbyPage, RoomSnapshot, User, UsersPage
from roost.protocol.schema import FieldProblem, Opaque

from .errors import RoomError
from .inbox import InboxService
from .revocations import Revocations
from .room import Call, RoomActor
from .router import Router
from .users import Directory

__all__ = ["Operations", "rooms_of"]

_ROOM_QUERIES = 32
"""Rooms asked at once by :func:`rooms_of`."""


async def rooms_of(router: Router, user: str, inbox: InboxService | None = None) -> list[RoomRuntime]:
    """The live rooms where ``user`` is a member (offline members in their grace included).

    With inboxes, the candidates are the rooms of the user's durable membership index (engine/inbox.py);
    without, every live room — O(rooms), and it wakes sleeping rooms, so only for a bare engine. Each
    candidate is asked in its own turn (32 at a time): the index may lag a turn behind the room.
    """
    if inbox is not None:
        candidates = [runtime for room_id in await inbox.room_ids(user)
                      if (runtime := router.get(room_id)) is not None]
    else:
        candidates = list(router.rooms.values())
    found: list[RoomRuntime] = []
    limiter = trio.CapacityLimiter(_ROOM_QUERIES)

    async def ask(runtime: RoomRuntime) -> None:
        async with limiter:
            call = Call(lambda actor: user in actor.state.presence)
            try:
                await runtime.inbox.send(call)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            try:
                member = await call.wait()
            except RoomError:
                return
            if member:
                found.append(runtime)

    async with trio.open_nursery(strict_exception_groups=True) as nursery:
        for runtime in candidates:
            if not runtime.closed:
                nursery.start_soon(ask, runtime)
    return found

T = TypeVar("T")


class Operations:
    """Room and token operations for the embedding app and operators."""

    def __init__(self, router: Router, revocations: Revocations, users: Directory | None = None,
                 inbox: InboxService | None = None) -> None:
        self._router = router
        self._revocations = revocations
        self.users = users
        """The user directory (None only for a bare Operations built by a test)."""
        self.close_sessions: Callable[[str], None] | None = None
        """Set by the engine: close every live session of a user (4006) once it is merged."""
        self._inbox = inbox

    async def _call(self, room_id: str, fn: Callable[[RoomActor], T]) -> T:
        runtime = self._router.get(room_id)
        if runtime is None or runtime.closed:
            if self._router.cluster is not None:  # served by another process: moved (its url), or unavailable
                await self._router.locate(room_id, None)
            raise RoomError(ErrorCode.NOT_FOUND, "no such room")
        call = Call(fn)
        try:
            await runtime.inbox.send(call)
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

    # -- users (PROTOCOL.md §15) --------------------------------------------------------------------

    def _users(self) -> Directory:
        if self.users is None:
            raise RoomError(ErrorCode.UNSUPPORTED, "no user directory")
        return self.users

    async def user_upsert(self, provider: str, subject: str, *, user_id: str | None = None,
                          fields: dict[str, Any] | None = None) -> User:
        """Create or patch the user with this identity (see :meth:`Directory.upsert`)."""
        return await self._users().upsert(provider, subject, user_id=user_id, fields=fields)

    async def user_get(self, *, user_id: str | None = None, identity: tuple[str, str] | None = None,
                       key: str | None = None) -> User:
        """One user by exactly one of id, identity ``(provider, subject)`` or public key."""
        users = self._users()
        if sum(x is not None for x in (user_id, identity, key)) != 1:
            raise RoomError(ErrorCode.BAD_FIELD, "give exactly one of id, provider + subject, key")
        if user_id is not None:
            return await users.get(user_id)
        if identity is not None:
            return await users.by_identity(*identity)
        assert key is not None
        return await users.by_key(key)

    async def user_link_key(self, user_id: str, key: str) -> User:
        """Link a public key (``conflict`` when another user holds it)."""
        return await self._users().link_key(user_id, key)

    async def user_unlink_key(self, user_id: str, key: str, *, allow_empty: bool = False) -> User:
        """Unlink a public key (never the last way in unless ``allow_empty``)."""
        return await self._users().unlink_key(user_id, key, allow_empty=allow_empty)

    async def user_move_key(self, key: str, to: str, *, merge: bool = True, allow_empty: bool = False) -> User:
        """Move a key to user ``to``. A source left with no way in is merged into ``to``: its rooms
        carry over (each room's :meth:`~roost.room.RoomActor.merge_member`) and its live sessions
        are closed with 4006, so its devices reconnect as ``to``."""
        result = await self._users().move_key(key, to, merge=merge, allow_empty=allow_empty)
        if result.merged is not None:
            await self.merge_rooms(result.merged, result.user.id, result.user.name)
        return result.user

    async def merge_rooms(self, old: str, new: str, name: str = "") -> int:
        """Move ``old``'s memberships to ``new`` in every live room; close ``old``'s sessions. Returns
        how many rooms moved."""
        moved = 0
        for runtime in await rooms_of(self._router, old, self._inbox):
            try:
                if await self._call(runtime.room_id, lambda actor: actor.merge_member(old, new, name)):
                    moved += 1
            except RoomError:  # the room closed meanwhile: nothing to move
                continue
        if self.close_sessions is not None:
            self.close_sessions(old)
        return moved

    async def user_link_identity(self, user_id: str, provider: str, subject: str) -> User:
        """Link an identity (``conflict`` when another user holds it)."""
        return await self._users().link_identity(user_id, provider, subject)

    async def user_unlink_identity(self, user_id: str, provider: str, subject: str, *,
                                   allow_empty: bool = False) -> User:
        """Unlink an identity (never the last way in unless ``allow_empty``)."""
        return await self._users().unlink_identity(user_id, provider, subject, allow_empty=allow_empty)

    async def users_page(self, cursor: str | None = None, limit: int = 50) -> UsersPage:
        """A page of every user, in id order."""
        return await self._users().page(cursor, min(max(limit, 1), 100))

    async def user_audit(self, user_id: str, cursor: str | None = None, limit: int = 50) -> AuditPage:
        """A page of one user's audit trail, oldest first."""
        return await self._users().audit(user_id, cursor, min(max(limit, 1), 100))
    async def notify(self, user: str, kind: str, body: Any = None) -> InboxEvent:
        """Put an entry in ``user``'s personal inbox (PROTOCOL.md §16); returns once it is committed
        and pushed to every live session of the user that attached its inbox."""
        if self._inbox is None:
            raise RoomError(ErrorCode.UNSUPPORTED, "this engine has no inboxes")
        return await self._inbox.notify(user, kind, body)
