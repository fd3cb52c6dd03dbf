"""Token revocations by ``jti`` or by user, kept in the store until the tokens would have expired.

Revoking a user refuses every token of that user issued at or before the revocation (tokens minted
afterwards work again). Checks are in memory (a dict lookup per handshake); changes are committed to
the store first, then listeners (the gateway) close matching live connections.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack

from roost.protocol.tokens import Claims

from .store import Store, Write

__all__ = ["Revocations"]

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
        """Refuse the token ``jti`` until ``until`` (its ``exp``, Unix s)."""
        await self._store.commit([Write(None, _JTI + jti, msgpack.packb(until))])
        self._jti[jti] = until
        self._notify()

    async def revoke_user(self, user: str, until: int) -> None:
        """Refuse every token of ``user`` issued until now; keep the entry until ``until``."""
        at = int(self._clock())
        await self._store.commit([Write(None, _USER + user, msgpack.packb([at, until]))])
        self._users[user] = (at, until)
        self._notify()

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    def __len__(self) -> int:
        return len(self._jti) + len(self._users)
