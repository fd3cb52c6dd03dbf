"""Token revocations by ``jti`` or by user, kept in the store until the tokens would have expired.

Revoking a user refuses every token of that user issued at or before the revocation (tokens minted
afterwards work again). Checks are in memory (a dict lookup per handshake); changes are committed to
the store first, then listeners (the gateway) close matching live connections.

In a cluster every process keeps the whole list: a revocation made on one is ``publish``-ed to the
others (engine/bus.py), which ``apply`` it as their own (stored, swept). Entries merge by taking the
later values, so hearing one twice, or out of order, changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import msgpack

from roost.protocol.tokens import Claims

from roost.protocol.errors import ErrorCode

from .errors import RoomError
from .store import Store, Write

__all__ = ["Revocations"]

REVOCATION_MAX_UNTIL = 2**33
"""The latest end of a revocation (Unix s, the year 2242): later is refused, so that every entry can
be kept (and expired) in Redis as well (its EXAT refuses much later times)."""

_JTI = "rev:jti:"
_USER = "rev:user:"


class Revocations:
    """The revocation list, loaded from the store at start."""

    def __init__(self, store: Store, wall_clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = wall_clock
        self._jti: dict[str, int] = {}
        self._users: dict[str, tuple[int, int]] = {}
        self.listeners: list[Callable[[], None]] = []
        self.publish: Callable[[str, str, list[int]], Awaitable[None]] | None = None
        """In a cluster: tells every other process of a revocation made here (``kind`` ``jti`` or
        ``user``, the key, its values); raises RoomError ``unavailable`` when it cannot."""

    async def load(self) -> None:
        """Read the list from the store, dropping entries that have expired."""
        now = self._clock()
        expired: list[Write] = []
        for key, value in (await self._store.load_global()).items():
            if key.startswith(_JTI):
                until = msgpack.unpackb(value)
                if until < now:
                    expired.append(Write(None, key, None))
                else:
                    self._jti[key[len(_JTI) :]] = until
            elif key.startswith(_USER):
                at, until = msgpack.unpackb(value)
                if until < now:
                    expired.append(Write(None, key, None))
                else:
                    self._users[key[len(_USER) :]] = (at, until)
        if expired:
            await self._store.commit(expired)

    def is_revoked(self, claims: Claims) -> bool:
        """Whether these (verified) claims were revoked."""
        if claims.jti in self._jti:
            return True
        entry = self._users.get(claims.sub)
        return entry is not None and claims.iat <= entry[0]

    async def revoke_jti(self, jti: str, until: int) -> None:
        """Refuse the token ``jti`` until ``until`` (its ``exp``, Unix s); a second revocation never
        shortens the first."""
        _check_until(until)
        until = max(until, self._jti.get(jti, until))
        await self._store.commit([Write(None, _JTI + jti, msgpack.packb(until))])
        self._jti[jti] = until
        self._notify()
        if self.publish is not None:
            await self.publish("jti", jti, [until])

    async def revoke_user(self, user: str, until: int) -> None:
        """Refuse every token of ``user`` issued until now; keep the entry until ``until``."""
        _check_until(until)
        at = int(self._clock())
        old = self._users.get(user)
        if old is not None:  # a second revocation never shortens the first
            at, until = max(at, old[0]), max(until, old[1])
        await self._store.commit([Write(None, _USER + user, msgpack.packb([at, until]))])
        self._users[user] = (at, until)
        self._notify()
        if self.publish is not None:
            await self.publish("user", user, [at, until])

    async def apply(self, kind: str, key: str, values: list[int]) -> bool:
        """A revocation made by another process of the cluster: stored and swept here as if made here
        (merged with what is here: the later values win). False if it changed nothing."""
        if kind == "jti":
            (until,) = values
            if self._jti.get(key, -1) >= until or until < self._clock():
                return False
            await self._store.commit([Write(None, _JTI + key, msgpack.packb(until))])
            self._jti[key] = until
        elif kind == "user":
            at, until = values
            old = self._users.get(key)
            merged = (at, until) if old is None else (max(at, old[0]), max(until, old[1]))
            if merged == old or merged[1] < self._clock():
                return False
            await self._store.commit([Write(None, _USER + key, msgpack.packb(list(merged)))])
            self._users[key] = merged
        else:
            raise ValueError(f"unknown revocation kind {kind!r}")
        self._notify()
        return True

    def entries(self) -> Iterator[tuple[str, str, list[int]]]:
        """Every live entry as ``(kind, key, values)`` (what a process tells a cluster that forgot)."""
        for jti, until in list(self._jti.items()):
            yield "jti", jti, [until]
        for user, (at, until) in list(self._users.items()):
            yield "user", user, [at, until]

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    def __len__(self) -> int:
        return len(self._jti) + len(self._users)


def _check_until(until: int) -> None:
    if not 0 < until <= REVOCATION_MAX_UNTIL:
        raise RoomError(ErrorCode.BAD_FIELD, f"exp must be a Unix time in seconds up to {REVOCATION_MAX_UNTIL}")
