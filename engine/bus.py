"""What every process of a cluster must hear from the others, through Redis: token revocations, and
how many sessions each user has (the per-user session cap, :class:`SessionCounts`).

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
import time
from collections.abc import Callable
from typing import Any

import coredis
import msgpack
import trio
from coredis.exceptions import RedisError

from roost.protocol.codec import dump_record
from roost.protocol.errors import ErrorCode

from .errors import RoomError
from .placement import DIRECTORY_DEADLINE, ShardOwner
from .revocations import REVOCATION_MAX_UNTIL, Revocations

__all__ = ["ClusterLobby", "RevocationBus", "SessionCounts"]

log = logging.getLogger("roost.bus")

POLL = 0.25
"""Seconds between two reads of the list's version."""
MAX_UNTIL = REVOCATION_MAX_UNTIL
"""The latest end of a revocation (Unix s) Redis can expire a key at, and this code writes."""
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
        self._owed = False
        """The list must be given to Redis at the next poll that reaches it (a publish failed, or a
        poll did: what was made meanwhile never got there)."""

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}rev:{kind}:{key}"

    async def publish(self, kind: str, key: str, values: list[int]) -> None:
        """Tell every process of a revocation stored here (Revocations.publish). Failing, it marks the
        list to be given again at the next poll that reaches Redis (the trap: after a partition, with
        Redis keeping its keys, neither the epoch nor the version changes, so nothing else would)."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self._key(kind, key), msgpack.packb(values), exat=values[-1])
                pipe.incr(self._version)
        except (RedisError, OSError, TimeoutError) as exc:
            self._owed = True
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
                if now[1] is None or now[1] != seen[1] or self._owed:  # Redis restarted empty, the first
                    # look, or something made here never got there: refill it
                    self._owed = False
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
                self._owed = True
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
                try:
                    kind, _, name = key.decode()[len(self._prefix) + len("rev:"):].partition(":")
                except UnicodeDecodeError:  # not a key this code writes (Redis is shared)
                    continue
                await self._apply(kind, name, value)
        if not give:
            return
        now = int(time.time())
        entries = [(kind, key, values) for kind, key, values in self._revocations.entries()
                   if now < values[-1] <= MAX_UNTIL]
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
                     and len(values) == (1 if kind == "jti" else 2) and all(type(v) is int for v in values)
                     and 0 < values[-1] <= MAX_UNTIL)
        except (ValueError, TypeError, msgpack.UnpackException):
            valid = False
        if not valid:
            log.warning("revocations: an entry that is not a revocation was ignored", extra={"kind": str(kind)})
            return
        await self._revocations.apply(kind, key, values)


class SessionCounts:
    """Each process's live sessions per user, in Redis: the per-user session cap across the cluster.

    A process writes, per user, how many live sessions it holds (one hash per user, a field per
    process incarnation: ``"<shard> <token>"``), whenever that changes; a ``hello`` is checked
    against the sum of the other processes' fields whose lease is live with that token, plus this
    process's own sessions. Fields of a dead incarnation (its token no longer the shard's lease)
    are ignored and deleted by the reader that finds them; every hash expires a day after its last
    write. Absolute counts, not increments: a write repeated or lost is put right by the next one,
    and after Redis lost its keys every process writes all of its own again.

    A soft cap across processes: two ``hello`` of one user on two processes at the same instant may
    both pass (each sees the other's count as it was). Redis unreachable or slow: the other
    processes' sessions read as none (the cap holds per process), never as a refusal.
    """

    _EXPIRE_S = 86_400

    def __init__(self, client: coredis.Redis[bytes], owner: ShardOwner, local: Callable[[str], int]) -> None:
        self._client = client
        self._owner = owner
        self._placement = owner.placement
        self._local = local
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self.known: set[str] = set()
        """Users with a field of this process's in Redis (to write again after Redis lost them)."""

    def _key(self, user: str) -> str:
        return self._placement._key(f"sessions:{user}")

    def _field(self) -> str | None:
        lease = self._owner.lease
        return None if lease is None else f"{lease.shard} {lease.token}"

    def changed(self, user: str) -> None:
        """``user``'s sessions here changed (the gateway registered or dropped one)."""
        self._dirty.add(user)
        self._wake.set()

    def republish(self) -> None:
        """Write every count again (Redis lost its keys, or the lease changed token)."""
        self._dirty |= self.known
        self._wake.set()

    async def elsewhere(self, user: str) -> int:
        """Live sessions of ``user`` on the other processes of the cluster (0 when Redis cannot say)."""
        try:
            with trio.fail_after(DIRECTORY_DEADLINE):
                fields = await self._client.hgetall(self._key(user))
                mine = self._field()
                others = {field.decode(): int(count) for field, count in fields.items() if field.decode() != mine}
                if not others:
                    return 0
                shards = [field.partition(" ")[0] for field in others]
                leases = await self._client.mget([self._placement._lease_key(shard) for shard in shards])
                live, stale = 0, []
                for (field, count), lease in zip(others.items(), leases, strict=True):
                    if lease is not None and lease.decode().partition(" ")[0] == field.partition(" ")[2]:
                        live += count
                    else:
                        stale.append(field)
                if stale:
                    await self._client.hdel(self._key(user), stale)
                return live
        except (RedisError, OSError, TimeoutError, trio.TooSlowError, ValueError):
            return 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the counts that changed, a pipeline at a time, until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            field = self._field()
            if field is None:  # no lease yet: nothing to write under
                await trio.sleep(POLL)
                self._wake.set()
                continue
            users, self._dirty = self._dirty, set()
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for user in users:
                        count = self._local(user)
                        if count:
                            pipe.hset(self._key(user), {field: count})
                            pipe.expire(self._key(user), self._EXPIRE_S)
                        else:
                            pipe.hdel(self._key(user), [field])
                for user in users:
                    (self.known.add if self._local(user) else self.known.discard)(user)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("session counts not written (%s): retrying", exc)
                self._dirty |= users
                await trio.sleep(POLL * 4)
                self._wake.set()


class ClusterLobby:
    """The public rooms of every process, so that ``lobby`` on any process lists them all.

    Each process writes its public rooms' ``RoomInfo`` records to Redis (a sorted set of room ids, the
    lobby's order, and a hash of ``[shard, info]``; a set per shard of its rooms), half a second at most
    after one changed, and removes the ones that closed or went private. A page is read from Redis and
    shows only the rooms of shards whose lease is live (a dead process's rooms cannot be joined; its
    successor removes what it no longer has at its first write). Redis unreachable or slow: the
    process answers with its own rooms, as a single process does.
    """

    _EVERY = 2 * POLL

    def __init__(self, client: coredis.Redis[bytes], owner: ShardOwner,
                 rooms: Callable[[], dict[str, Any]]) -> None:
        self._client = client
        self._owner = owner
        self._placement = owner.placement
        self._rooms = rooms
        """Public, live rooms here: room id -> its current RoomInfo (a new object when it changed)."""
        self._published: dict[str, Any] = {}
        self._first = True

    def _ids_key(self) -> str:
        return self._placement._key("lobby")

    def _infos_key(self) -> str:
        return self._placement._key("lobby:info")

    def _shard_key(self, shard: str) -> str:
        return self._placement._key(f"lobby:shard:{shard}")

    def republish(self) -> None:
        """Write every room again (Redis lost its keys)."""
        self._published = {}
        self._first = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self._EVERY)
            if self._owner.lease is None:
                continue
            try:
                await self._publish()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("lobby not written (%s): retrying", exc)

    async def _publish(self) -> None:
        shard = self._owner.shard
        current = self._rooms()
        if self._first:  # what an earlier incarnation left that this one no longer has
            left = {member.decode() for member in await self._client.smembers(self._shard_key(shard))}
            self._published = {room_id: None for room_id in left}
        changed = {room_id: info for room_id, info in current.items() if self._published.get(room_id) is not info}
        gone = [room_id for room_id in self._published if room_id not in current]
        if not changed and not gone:
            self._first = False
            return
        async with self._client.pipeline(transaction=False) as pipe:
            if changed:
                pipe.zadd(self._ids_key(), {room_id: 0 for room_id in changed})
                pipe.hset(self._infos_key(), {room_id: msgpack.packb([shard, dump_record(info)])
                                              for room_id, info in changed.items()})
                pipe.sadd(self._shard_key(shard), list(changed))
            if gone:
                pipe.zrem(self._ids_key(), gone)
                pipe.hdel(self._infos_key(), gone)
                pipe.srem(self._shard_key(shard), gone)
        self._published = dict(current)
        self._first = False

    async def page(self, cursor: str | None, limit: int) -> tuple[list[Any], bool] | None:
        """The cluster's public rooms after ``cursor``, in id order: the ``(RoomInfo plain maps, more)``
        of at most a few batches, or None when Redis cannot say (the caller lists its own)."""
        try:
            with trio.fail_after(DIRECTORY_DEADLINE):
                return await self._page(cursor, limit)
        except (RedisError, OSError, TimeoutError, trio.TooSlowError, ValueError, TypeError):
            return None

    async def _page(self, cursor: str | None, limit: int) -> tuple[list[Any], bool]:
        found: list[Any] = []
        start = "-" if cursor is None else f"({cursor}"
        live: dict[str, bool] = {}
        for _batch in range(5):  # rooms of dead shards are skipped: a few batches, then a short page
            ids = await self._client.zrangebylex(self._ids_key(), start, "+", offset=0, count=limit + 1)
            if not ids:
                return found, False
            values = await self._client.hmget(self._infos_key(), ids)
            entries = [msgpack.unpackb(value) for value in values if value is not None]
            unknown = sorted({shard for shard, _info in entries if shard not in live})
            if unknown:
                leases = await self._client.mget([self._placement._lease_key(shard) for shard in unknown])
                live.update({shard: lease is not None for shard, lease in zip(unknown, leases, strict=True)})
            for shard, info in entries:
                if live[shard]:
                    found.append(info)
                    if len(found) > limit:
                        return found, True
            start = f"({ids[-1].decode()}"
            if len(ids) <= limit:
                return found, False
        return found, True
