"""Guest sign-in: a client with no backend token proves it holds a device key (PROTOCOL.md §9.3).

The proof is checked sans-IO (:func:`roost.protocol.tokens.verify_guest_proof`: signature by the key
it names, audience, lifetime of at most 300 s, time); here are the two things that need state:

- **single use**: every accepted ``jti`` is remembered until its proof expires
  (:class:`~roost.protocol.tokens.SeenProofs`), so a captured proof replayed, on this connection or
  another, is refused. The memory is bounded by count and refuses (1013) rather than forgets.
- **creation rate per address**: a key linked to no user creates a guest user; each address (IP, port
  left out) has a token bucket of ``guest_burst`` creations refilled at ``guest_rate`` per minute, in
  a table of at most 10,000 addresses (the least recently used leave first: a flood of addresses
  costs the flooder fresh buckets, not memory). A known key signs in without spending anything.

Trap: the directory lookup awaits, and the auth deadline may close the connection meanwhile: the
caller checks the connection's phase again before it opens the session.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

import trio

from roost.protocol.errors import CloseCode, ErrorCode
from roost.protocol.frames import Hello
from roost.protocol.tokens import Claims, ProofReplayed, SeenProofs, TokenError, verify_guest_proof

from .config import Config
from .errors import RoomError
from .users import Directory

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Guests"]

log = logging.getLogger("roost.connection")

_ADDRESSES = 10_000


def address_of(remote: str) -> str:
    """The IP of a ``host:port`` remote (``[::1]:5`` and ``::1:5`` alike): buckets are per host."""
    host = remote.rsplit(":", 1)[0] if ":" in remote else remote
    return host.strip("[]")


class Guests:
    """Guest proofs accepted (single use) and guest creations per address."""

    def __init__(self, config: Config, users: Directory) -> None:
        self._config = config
        self._users = users
        self.seen = SeenProofs(config.guest_proofs, leeway=config.token_leeway)
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self.created = 0
        """Guest users created since start."""

    def may_create(self, address: str) -> bool:
        """Spend one creation of ``address``'s bucket; False when it is empty."""
        config = self._config
        now = trio.current_time()
        tokens, at = self._buckets.pop(address, (float(config.guest_burst), now))
        tokens = min(float(config.guest_burst), tokens + (now - at) * config.guest_rate / 60)
        allowed = tokens >= 1
        self._buckets[address] = (tokens - 1 if allowed else tokens, now)
        while len(self._buckets) > _ADDRESSES:
            self._buckets.popitem(last=False)
        return allowed

    async def sign_in(self, connection: Connection, hello: Hello, host: str | None) -> Claims | None:
        """The claims a guest's session runs with, or None once the connection is being closed.

        ``host`` is the upgrade's ``Host`` header: the audience unless ``guest_audience`` is set.
        """
        config = self._config
        gateway = connection.gateway

        def refuse(reason: str, code: CloseCode = CloseCode.BAD_TOKEN) -> None:
            gateway.stats["auth_failures"] += 1
            gateway.auth_failures["guest_" + reason] += 1
            log.info("auth failed", extra={"remote": connection.remote, "reason": "guest_" + reason, "kid": None})
            connection.close(code, "guest " + reason)

        audience = config.guest_audience or host
        if not config.guests:
            return refuse("disabled")
        if not audience:
            return refuse("no_audience")
        now = config.wall_clock()
        try:
            proof = verify_guest_proof(hello.guest, audience=audience, now=now, leeway=config.token_leeway)
            if not self.seen.claim(proof, now):
                return refuse("busy", CloseCode.TRY_AGAIN_LATER)
        except ProofReplayed:
            return refuse("replayed")
        except TokenError as error:
            return refuse(error.reason, error.close_code or CloseCode.BAD_TOKEN)
        address = address_of(connection.remote)
        try:
            user, created = await self._users.sign_in_key(proof.key, proof.name, lambda: self.may_create(address))
        except RoomError as error:
            if error.code is ErrorCode.RATE_LIMITED:
                return refuse("rate_limited", CloseCode.TRY_AGAIN_LATER)
            return refuse("internal", CloseCode.INTERNAL_ERROR)  # pragma: no cover - a store failure
        if created:
            self.created += 1
        wall = int(now)
        return Claims(sub=user.id, name=user.name, exp=int(now + config.guest_ttl), iat=wall, jti=proof.jti,
                      kid="guest")
