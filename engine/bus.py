"""What every process of a cluster must hear from the others: token revocations, through Redis.

A revocation made on one process (``roost admin revoke`` reaches one) must close the user's
connections on every process and refuse the token everywhere. The process that made it stores it,
then writes it to Redis (one key per entry, expiring with it) and bumps the list's version; every
process reads the version every :data:`POLL` seconds and, when it changed, reads the entries and
applies them as its own (stored, swept: engine/revocations.py).

Why a polled version and not pub/sub: pub/sub is not a log (a process cut off at the moment never gets
the message, so a resubscription needs the same full read anyway), and coredis 6.9's subscription
raised ``anyio.ClosedResourceError`` out of its own cleanup when cancelled (every engine shutdown).
Revocations are rare and a quarter-second delay is acceptable; four GETs a second per process cost
nothing measurable (~100 µs each).

The traps:

- **Redis keeps nothing on disk**: a restarted Redis has no entry at all, and its version starts
  again. A process cannot tell from the connection (coredis reconnects by itself, silently), so the
  list also has an *epoch*, a random value the first process to find none sets: an epoch other than
  the one a process last saw means Redis lost everything, and the process writes back every entry it
  holds (the list lives in every process's store; the first one back refills Redis).
- **A revocation the cluster could not be told of** (Redis down) is stored here and refused to the
  caller as ``unavailable`` (to retry: revoking again is harmless); the next reconnection tells the
  others anyway.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import coredis
import msgpack
import trio
from coredis.exceptions import RedisError

from roost.protocol.errors import ErrorCode

from .errors import RoomError
from .revocations import Revocations

__all__ = ["RevocationBus"]

log = logging.getLogger("roost.bus")

POLL = 0.25
"""Seconds between two reads of the list's version."""
_KINDS = ("jti", "user")


class RevocationBus:
    """Revocations shared by every process of the cluster whose keys start with ``prefix``."""

    def __init__(self, client: coredis.Redis[bytes], prefix: str, revocations: Revocations) -> None:
        self._client = client
        self._prefix = prefix
        self._version = f"{prefix}revocations"
        self._epoch = f"{prefix}revocations:epoch"
        self._revocations = revocations
        self.connected = False
        """Whether this process hears the others now (its last read of the version succeeded)."""

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}rev:{kind}:{key}"

    async def publish(self, kind: str, key: str, values: list[int]) -> None:
        """Tell every process of a revocation stored here (Revocations.publish)."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self._key(kind, key), msgpack.packb(values), exat=values[-1])
                pipe.incr(self._version)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RoomError(ErrorCode.UNAVAILABLE, f"revoked on this process, but the cluster could not be told "
                                                   f"({exc}); retry", retry_ms=1000) from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the cluster's list until cancelled. ``task_status.started`` after the first attempt,
        whether Redis answered or not (a node starts without Redis, and catches up when it returns)."""
        seen: list[bytes | None] = [None, None]
        started = False
        while True:
            try:
                now = list(await self._client.mget([self._version, self._epoch]))
                if now[1] is None or now[1] != seen[1]:  # Redis restarted empty (or the first look): refill it
                    await self._client.set(self._epoch, secrets.token_hex(8), condition=coredis.PureToken.NX)
                    now = list(await self._client.mget([self._version, self._epoch]))
                    await self._synchronise(give=True)
                elif now[0] != seen[0]:
                    await self._synchronise(give=False)
                seen = now
                if not self.connected:
                    log.info("revocations: following the cluster's list")
                self.connected = True
            except (RedisError, OSError, TimeoutError) as exc:
                if self.connected or not started:
                    log.warning("revocations: the cluster cannot be heard (%s); retrying", exc)
                self.connected = False
            if not started:
                task_status.started()
                started = True
            await trio.sleep(POLL)

    async def _synchronise(self, *, give: bool) -> None:
        """Take every entry the cluster holds; then (``give``: after a reconnection, Redis may have
        restarted empty) give it every entry held here."""
        keys = [key async for key in self._client.scan_iter(match=f"{self._prefix}rev:*", count=1000)]
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for key, value in zip(chunk, await self._client.mget(chunk), strict=True):
                if value is None:
                    continue  # expired meanwhile
                kind, _, name = key.decode()[len(self._prefix) + len("rev:"):].partition(":")
                await self._apply(kind, name, value)
        if not give:
            return
        entries = list(self._revocations.entries())
        for start in range(0, len(entries), 500):
            async with self._client.pipeline(transaction=False) as pipe:
                for kind, key, values in entries[start:start + 500]:
                    pipe.set(self._key(kind, key), msgpack.packb(values), exat=values[-1])
                pipe.incr(self._version)  # the others may have read the list before this refill

    async def _apply(self, kind: str, key: Any, packed: bytes) -> None:
        """Apply one entry from Redis, checked: Redis is shared, and a bad entry must not stop the bus."""
        try:
            values = msgpack.unpackb(packed)
            valid = (kind in _KINDS and isinstance(key, str) and isinstance(values, list)
                     and len(values) == (1 if kind == "jti" else 2) and all(type(v) is int for v in values))
        except (ValueError, TypeError, msgpack.UnpackException):
            valid = False
        if not valid:
            log.warning("revocations: an entry that is not a revocation was ignored", extra={"kind": str(kind)})
            return
        await self._revocations.apply(kind, key, values)
