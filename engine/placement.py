"""The cluster's directory on Redis: which process owns each shard, and which shard holds each room.

A **shard** is one LMDB environment (one data directory's ``db``): the unit a process owns, a room
lives in, and a lease covers. Rooms never move between shards (their data is there); a shard moves
between processes of its machine (a worker restarted, another worker taking over a dead one's
environment). So leases are per shard, not per room: one renewal covers thousands of rooms.

Who may write a shard is decided by the kernel, not by Redis: a process opens an environment only
while holding its ``flock`` (:mod:`roost.store.lmdb`), which a dead process (even SIGKILLed)
releases at once and a paused one (SIGSTOP) keeps. A second writer is therefore impossible on one
machine whatever Redis says, and an environment never leaves its machine. What Redis holds is the
*advertisement*: the lease ``shard -> (token, address)``, renewed while the owner lives, lapsing
when it stops, and carrying a **fencing token** that grows with every new owner (and is kept in the
environment too). An owner whose renewal meets a later token has been superseded and stops. Nothing
is forwarded between processes (a client is sent to its room's process: ``moved``), so no request
carries a token yet; the first forwarded request must carry one and be refused on a mismatch.

The traps this module is shaped around:

- **Redis keeps nothing on disk here**: after a restart the fence counters are gone, so a token
  taken from ``INCR`` alone would start again at 1 and an old owner would look newer than the live
  one. An owner therefore passes the token it last held (kept in its environment) as ``floor``, and
  a renewal that finds its lease gone (expired, or Redis restarted) puts it back with the counter
  raised to its own token, unless a later owner has taken a token since.
- **Creation is exactly-once by one atomic key**: a room is claimed by ``SET code NX`` (the room's
  id and shard in the value), after its id key is written (a fresh random id: nobody races it). A
  claim that loses takes the winner's room and deletes its own id key. Colyseus's documented
  double creations (colyseus#978, #555, #513) come from check-then-create across processes; here
  the check and the claim are one command.
- **A claim is not a room**: the process that claimed may die before the room's first commit, so
  the shard's owner, asked for a claimed room its store does not have, creates it with the claimed
  id (the claim is the authority, the creation idempotent). A claim refused after it was made (its
  room's creation failed) is taken back; a closed room's claim is freed before it leaves the router.
- **Redis restarted empty forgets every claim**, and a ``join_or_create`` elsewhere would make a
  live room a second time before its owner registers it again. So the directory has an *epoch*:
  a process that knew one (it is kept in each owner's store) and finds none starts a **recovery
  period** of one lease period, during which nothing is claimed nor found (``unavailable``) while
  owners put their leases back and register their rooms. A brand-new cluster (nobody knew an epoch)
  starts at once. The residue: a process whose store never saw this cluster's epoch, starting
  first on a Redis that just restarted, opens the directory without a recovery.
- **The same address proves nothing**: a copy of a live node's data directory may be started with
  the same advertised address. Only a supervisor that reaped the worker it replaces says
  ``takeover``; everyone else waits a dead owner's lease out (at most a period and a half).
- Every key carries one hash tag (``{dir}``): the scripts touch several keys, so on a Redis Cluster
  a cluster's directory lives in one slot (directory traffic is per join, not per message).

Nothing here is on the per-message path: one round trip is ~210 µs from Python on this machine
(reference/redis-on-trio.md), more than a message costs the engine. Lookups happen at join time and
renewals every third of a lease period.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import coredis
import trio
from coredis.exceptions import RedisError

__all__ = ["ClusterMismatch", "Lease", "Location", "Placement", "PlacementUnavailable", "Recovering", "ShardHeld",
           "ShardOwner", "Superseded"]

log = logging.getLogger("roost.placement")

DEFAULT_LEASE_MS = 10_000
DIRECTORY_DEADLINE = 0.5
"""Seconds one request may wait on the directory (a claim is three round trips, ~1 ms): past it, the
request is answered ``unavailable``. A connection's requests are handled in order (a ``chat_send``
sent after a ``join`` must not overtake it), so the ones behind a join wait for it: a slow Redis
may hold them this long, no longer."""


class PlacementUnavailable(Exception):
    """Redis cannot be reached (or answered with an error): what needs the directory is refused with
    a retry hint; what a process owns already goes on."""


class ShardHeld(Exception):
    """Another process holds this shard's lease."""

    def __init__(self, shard: str, holder: Lease) -> None:
        super().__init__(f"shard {shard} is held by token {holder.token} at {holder.address}")
        self.holder = holder


class Superseded(Exception):
    """A later owner has taken this shard: the lease is lost for good."""


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A shard's owner as the directory advertises it: its fencing token and the address that serves it."""

    shard: str
    token: int
    address: str

    def _value(self) -> bytes:
        return f"{self.token} {self.address}".encode()

    @classmethod
    def _parse(cls, shard: str, value: bytes | str) -> Lease:
        """A lease as stored; a value this code never writes (corrupt) is PlacementUnavailable."""
        try:
            text = value.decode() if isinstance(value, bytes) else value
            token, _, address = text.partition(" ")
            return cls(shard, int(token), address)
        except (UnicodeDecodeError, ValueError):
            raise PlacementUnavailable(f"the lease of shard {shard} in the directory is not one: {value!r}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """Where a room lives: its id, its shard, and that shard's owner now (None: no live owner, so
    the room is unavailable until its shard comes back)."""

    room_id: str
    code: str
    shard: str
    owner: Lease | None


_EPOCH = b"""
-- The directory's epoch (KEYS[1]). ARGV[1]: the epoch the caller last saw ('' for none), ARGV[2]: a
-- fresh id, ARGV[3]: the recovery period in ms. Returns ready, the epoch's id. A missing epoch
-- seen by a caller that knew one means Redis lost every key: the directory recovers for a period
-- (owners put their leases back and register their rooms; nothing is claimed nor found meanwhile).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local e_start, e_until = 0, 0
local function epoch()
  local now = now_ms()
  local e = redis.call('GET', KEYS[1])
  local kind, id, untilms, startms
  if e then
    kind, id, untilms, startms = string.match(e, '^(%S+) (%S+) ?(%d*) ?(%d*)$')
    -- Anything else (a value this code never writes: corrupt, or another program's) reads as a
    -- lost epoch: a recovery, then a fresh epoch, rather than an error on every call for ever.
    if not ((kind == 'ready' and untilms == '') or (kind == 'recovering' and tonumber(untilms) and tonumber(startms))) then
      e = nil
    end
  end
  if not e then
    if ARGV[1] ~= '' then
      e_start, e_until = now, now + tonumber(ARGV[3])
      redis.call('SET', KEYS[1], 'recovering ' .. ARGV[2] .. ' ' .. e_until .. ' ' .. e_start)
      return false, ARGV[2]
    end
    redis.call('SET', KEYS[1], 'ready ' .. ARGV[2])
    return true, ARGV[2]
  end
  if kind == 'recovering' then
    e_start, e_until = tonumber(startms), tonumber(untilms)
    if now < e_until then return false, id end
    redis.call('SET', KEYS[1], 'ready ' .. id)
  end
  return true, id
end
-- Keep a recovery going for a lease period from now (an owner coming back registers its rooms next).
local function extend_recovery(ready, id)
  if ready then return end
  local wanted = now_ms() + tonumber(ARGV[3])
  if e_until < wanted then
    e_until = wanted
    redis.call('SET', KEYS[1], 'recovering ' .. id .. ' ' .. e_until .. ' ' .. e_start)
  end
end
"""

# KEYS: epoch, lease, fence. ARGV: epoch args, address, ttl_ms, floor, takeover ('1': the caller
# replaces this address's dead owner, as its supervisor says). {ready, epoch, token or 0, value}.
_ACQUIRE = _EPOCH + b"""
local ready, id = epoch()
-- During a recovery an owner from before it (it knew an epoch and held a token: floor) may come back,
-- once half a lease period has passed: a live owner puts its lease back within a third of one, so a
-- lease still missing then is a dead or restarting owner's, and this may be it (the flock says so).
if not ready and not (ARGV[1] ~= '' and tonumber(ARGV[6]) > 0 and now_ms() >= e_start + tonumber(ARGV[3]) / 2) then
  return {0, id}
end
local held = redis.call('GET', KEYS[2])
if held then
  local address = string.match(held, '^%S+ (.*)$')
  if ARGV[7] ~= '1' or address ~= ARGV[4] then return {1, id, 0, held} end
end
local token = redis.call('INCR', KEYS[3])
local floor = tonumber(ARGV[6])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[3], token)
end
local value = token .. ' ' .. ARGV[4]
redis.call('SET', KEYS[2], value, 'PX', ARGV[5])
extend_recovery(ready, id)
return {1, id, token, value}
"""

# KEYS: epoch, lease, fence. ARGV: epoch args, token, address, ttl_ms. {ready, epoch, result}: 1
# renewed, 2 put back, 0 superseded. Allowed while recovering (that is how owners come back); the
# epoch is read so that the first owner to renew after Redis lost everything starts the recovery,
# and an owner that puts its lease back during one keeps it going for a lease period from then (its
# registration, the next round trips, must land inside it). Only a lease with a higher token
# supersedes: a lower one (a Redis restored from a snapshot, a lagging replica promoted, an already
# superseded owner that renewed first after a restart) is overwritten, the fence raised.
_RENEW = _EPOCH + b"""
local ready, id = epoch()
local r = ready and 1 or 0
local token = tonumber(ARGV[4])
local mine = ARGV[4] .. ' ' .. ARGV[5]
local held = redis.call('GET', KEYS[2])
if held == mine then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  return {r, id, 1}
end
local fence = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if held then
  local other = tonumber(string.match(held, '^(%d+) '))
  if other and other >= token then return {r, id, 0} end
  if not other and fence > token then return {r, id, 0} end
elseif fence > token then
  return {r, id, 0}
end
if fence < token then redis.call('SET', KEYS[3], token) end
redis.call('SET', KEYS[2], mine, 'PX', ARGV[6])
extend_recovery(ready, id)
return {r, id, 2}
"""

# KEYS: epoch, code, room. ARGV: epoch args, "room_id shard", "shard code". {ready, epoch, won,
# held}. The room's key is written only by a claim that won (a refused one leaves nothing behind).
_CLAIM = _EPOCH + b"""
local ready, id = epoch()
if not ready then return {0, id} end
if redis.call('SET', KEYS[2], ARGV[4], 'NX') then
  redis.call('SET', KEYS[3], ARGV[5])
  return {1, id, 1, ARGV[4]}
end
return {1, id, 0, redis.call('GET', KEYS[2])}
"""

# KEYS: epoch, key. ARGV: epoch args. {ready, epoch, value or false}.
_LOOKUP = _EPOCH + b"""
local ready, id = epoch()
if not ready then return {0, id} end
return {1, id, redis.call('GET', KEYS[2])}
"""

# KEYS: one key. ARGV: the value it must hold to be deleted.
_DELETE_IF = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ClusterMismatch(Exception):
    """This process's settings disagree with the cluster's (``lease_period``): the recovery period
    after a Redis restart is one lease period, which holds only if every process has the same."""


class Recovering(PlacementUnavailable):
    """The directory is recovering after Redis lost its keys: for one lease period nothing is claimed
    nor found, while the owners put their leases back and register their rooms (else a room whose
    owner had not registered yet would be created a second time)."""


class Placement:
    """The directory, over a coredis client the caller owns (``async with coredis.Redis(...)``).

    ``prefix`` namespaces every key (several clusters, or tests, share one Redis). Every key carries
    one hash tag, so a cluster's directory lives in one slot of a Redis Cluster (its scripts touch
    several keys). ``epoch`` is the directory epoch this process last saw: the owner keeps it in its
    store, so that even after a restart it can tell a Redis that lost everything from a new one."""

    def __init__(self, client: coredis.Redis[bytes], prefix: str = "roost:", *, lease_ms: int = DEFAULT_LEASE_MS,
                 epoch: str = "") -> None:
        if lease_ms < 100:
            raise ValueError("lease_ms must be at least 100")
        self._client = client
        self.prefix = prefix
        self.lease_ms = lease_ms
        self.epoch = epoch
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._claim = client.register_script(_CLAIM)
        self._lookup = client.register_script(_LOOKUP)
        self._delete_if = client.register_script(_DELETE_IF)

    # -- keys --
    def _key(self, rest: str) -> str:
        return f"{self.prefix}{{dir}}:{rest}"

    def _epoch_key(self) -> str:
        return self._key("epoch")

    def _lease_key(self, shard: str) -> str:
        return self._key(f"lease:{shard}")

    def _fence_key(self, shard: str) -> str:
        return self._key(f"fence:{shard}")

    def _code_key(self, code: str) -> str:
        return self._key(f"code:{code}")

    def _room_key(self, room_id: str) -> str:
        return self._key(f"room:{room_id}")

    def _epoch_args(self) -> list[Any]:
        return [self.epoch, secrets.token_hex(6), self.lease_ms]

    def _seen(self, answer: list[Any], what: str) -> list[Any]:
        """Take the epoch an epoch script answered with; raise Recovering if it is not ready."""
        if not isinstance(answer, (list, tuple)) or len(answer) < 2:
            raise PlacementUnavailable(f"the cluster directory answered {what} with {answer!r}")
        ready, epoch = answer[0], answer[1]
        self.epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        if not ready:
            raise Recovering(f"the cluster directory is recovering after Redis lost its keys ({what}); retry shortly")
        return answer[2:]

    async def _call(self, what: str, command: Callable[[], Any]) -> Any:
        """One Redis command; every failure to get an answer is PlacementUnavailable (the trap: coredis
        raises its own ConnectionError, builtin TimeoutError or OSError depending on where it broke)."""
        try:
            return await command()
        except (RedisError, TimeoutError, OSError) as exc:
            raise PlacementUnavailable(f"the cluster directory is unavailable ({what}: {exc})") from exc

    # -- shards --------------------------------------------------------------------------------------

    async def acquire(self, shard: str, address: str, *, floor: int = 0, takeover: bool = False) -> Lease:
        """Take ``shard``'s lease with a token above every earlier one and above ``floor`` (the token
        the shard's environment last recorded: Redis may have forgotten it).

        The caller holds the shard's environment (its flock). A live lease raises ShardHeld, unless
        ``takeover`` and it advertises the caller's own address: a supervisor restarting a worker it
        reaped says so (``takeover``), and its lease is taken over at once rather than after its TTL.
        Nothing else may: a copy of a live node's data directory started with the same address would
        otherwise depose the live node. Refused while the directory recovers (Recovering)."""
        period = self._key("lease_ms")
        await self._call("acquire", lambda: self._client.set(period, str(self.lease_ms), condition=coredis.PureToken.NX))
        cluster = await self._call("acquire", lambda: self._client.get(period))
        if cluster is not None and cluster != str(self.lease_ms).encode():
            raise ClusterMismatch(f"the cluster's lease_period is {int(cluster) / 1000:g} s, this process's "
                                  f"{self.lease_ms / 1000:g} s: every process of a cluster needs the same")
        answer = self._seen(await self._call("acquire", lambda: self._acquire(
            keys=[self._epoch_key(), self._lease_key(shard), self._fence_key(shard)],
            args=[*self._epoch_args(), address, self.lease_ms, floor, "1" if takeover else "0"])), "acquire")
        token, value = answer
        if not token:
            raise ShardHeld(shard, Lease._parse(shard, value))
        return Lease(shard, int(token), address)

    async def renew(self, lease: Lease) -> bool:
        """Extend ``lease`` by a lease period; put it back if it lapsed (or Redis lost it) and no later
        owner took a token since (True: put back, so the directory may have lost the rooms' keys
        too). Raises Superseded when one did. Allowed while the directory recovers."""
        answer = await self._call("renew", lambda: self._renew(
            keys=[self._epoch_key(), self._lease_key(lease.shard), self._fence_key(lease.shard)],
            args=[*self._epoch_args(), lease.token, lease.address, self.lease_ms]))
        try:
            (renewed,) = self._seen(answer, "renew")
        except Recovering:
            renewed = answer[2]
        if not renewed:
            raise Superseded(f"shard {lease.shard} has an owner with a later token than {lease.token}")
        return renewed == 2

    async def release(self, lease: Lease) -> None:
        """Give the shard up (a graceful stop): its rooms are unavailable at once, not after a TTL."""
        await self._call("release", lambda: self._delete_if(keys=[self._lease_key(lease.shard)],
                                                            args=[lease._value()]))

    async def owner(self, shard: str) -> Lease | None:
        """The shard's live owner, or None (its lease lapsed: the process is gone or paused)."""
        value = await self._call("owner", lambda: self._client.get(self._lease_key(shard)))
        return None if value is None else Lease._parse(shard, value)

    # -- rooms ---------------------------------------------------------------------------------------

    async def claim(self, code: str, room_id: str, shard: str) -> tuple[str, str]:
        """Claim ``code`` for a new room ``room_id`` in ``shard``: exactly one claim per code wins,
        across every process. Returns the room's ``(room_id, shard)``: the caller's if it won, the
        winner's otherwise (then join that room). ``code`` is in normal form. Refused while the
        directory recovers (Recovering)."""
        won, held = self._seen(await self._call("claim", lambda: self._claim(
            keys=[self._epoch_key(), self._code_key(code), self._room_key(room_id)],
            args=[*self._epoch_args(), f"{room_id} {shard}", f"{shard} {code}"])), "claim")
        if won:
            return room_id, shard
        if held is None:  # the winner's room closed between our claim and this read: claim again
            return await self.claim(code, room_id, shard)
        winner, _, winner_shard = held.decode().partition(" ")
        return winner, winner_shard

    async def unclaim(self, code: str, room_id: str, shard: str) -> None:
        """Take back a claim whose room was never made (its creation was refused)."""
        await self.forget(room_id, code, shard)

    async def _get(self, key: str) -> bytes | None:
        (value,) = self._seen(await self._call("lookup", lambda: self._lookup(
            keys=[self._epoch_key(), key], args=self._epoch_args())), "lookup")
        return value

    async def by_code(self, code: str) -> tuple[str, str] | None:
        """The ``(room_id, shard)`` claimed for ``code`` (normal form), if any."""
        value = await self._get(self._code_key(code))
        if value is None:
            return None
        room_id, _, shard = value.decode().partition(" ")
        return room_id, shard

    async def by_id(self, room_id: str) -> tuple[str, str] | None:
        """The ``(shard, code)`` of room ``room_id``, if it exists anywhere."""
        value = await self._get(self._room_key(room_id))
        if value is None:
            return None
        shard, _, code = value.decode().partition(" ")
        return shard, code

    async def locate(self, *, room_id: str | None = None, code: str | None = None) -> Location | None:
        """Where the room named by id or (normal-form) code lives, with its shard's owner now."""
        if room_id is not None:
            found = await self.by_id(room_id)
            if found is None:
                return None
            shard, code = found
        else:
            assert code is not None
            claimed = await self.by_code(code)
            if claimed is None:
                return None
            room_id, shard = claimed
        return Location(room_id, code, shard, await self.owner(shard))

    async def register(self, shard: str, rooms: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Claim again the codes of rooms ``(room_id, code)`` that live in ``shard`` (Redis restarted
        empty), pipelined in chunks; returns those whose code another room holds now. Allowed while
        the directory recovers (that is what it waits for)."""
        taken: list[tuple[str, str]] = []
        for start in range(0, len(rooms), 500):
            chunk = rooms[start:start + 500]

            async def send(chunk: list[tuple[str, str]] = chunk) -> list[Any]:
                async with self._client.pipeline(transaction=False) as pipe:
                    requests = []
                    for room_id, code in chunk:
                        pipe.set(self._room_key(room_id), f"{shard} {code}")
                        requests.append(pipe.get(self._code_key(code)))
                        requests.append(pipe.set(self._code_key(code), f"{room_id} {shard}",
                                                 condition=coredis.PureToken.NX))
                return [await request for request in requests]

            answers = await self._call("register", send)
            for index, (room_id, code) in enumerate(chunk):
                held, won = answers[2 * index], answers[2 * index + 1]
                if not won and held != f"{room_id} {shard}".encode():
                    taken.append((room_id, code))
        return taken

    async def forget(self, room_id: str, code: str, shard: str) -> None:
        """A room closed for good: free its code (only if it still names this room: a later room may
        have the code by now) and drop its id."""
        await self._call("forget", lambda: self._delete_if(keys=[self._code_key(code)], args=[f"{room_id} {shard}"]))
        await self._call("forget", lambda: self._client.delete([self._room_key(room_id)]))


class ShardOwner:
    """This process as the owner of one shard: it keeps the lease, keeps the directory told of its
    rooms, and answers the router's question "where does this room live?".

    Redis unreachable: what needs the directory (creating a room, finding one elsewhere) raises
    PlacementUnavailable, which the connection answers ``unavailable`` with a retry hint; the rooms
    this process owns go on serving (the flock, not the lease, keeps a second writer out). The lease
    is retried every third of a lease period; when Redis comes back having forgotten everything (it
    keeps nothing on disk), the lease is put back and every live room registered again, while the
    directory's recovery period keeps anyone from claiming their codes.

    Superseded (a later token took the shard: only a copy of this data directory served elsewhere can
    do that), ``on_lost`` is called once: the process must stop answering for the shard.
    """

    def __init__(self, placement: Placement, shard: str, address: str, *, floor: int,
                 rooms: Callable[[], Iterable[tuple[str, str]]],
                 record: Callable[[int, str], Awaitable[None]], on_lost: Callable[[str], None],
                 takeover: bool = False) -> None:
        self.placement = placement
        self.shard = shard
        self.address = address
        self.lease: Lease | None = None
        self.directory_up = False
        self.lost: str | None = None
        self.takeover = takeover
        """A supervisor restarted this process in place of one it reaped (roost.workers): its lease
        at this address is taken over at once, and it may serve before Redis answers."""
        self._floor = floor
        self._recorded = (floor, placement.epoch)
        self._rooms = rooms
        self._record = record
        self._on_lost = on_lost
        self._released = False
        self._unregistered = False
        """The rooms must be told to the directory (again): set when the lease is taken or put back,
        cleared only by a registration that went through (the trap: retried only on a put back, one
        that failed half way would leave codes unclaimed until the next Redis restart)."""
        self._keeper: trio.CancelScope | None = None
        self.registered: list[Callable[[], None]] = []
        """Called after every registration of this shard's rooms (the lease taken or put back: Redis
        may have lost what this process had told it; engine/bus.py tells it again)."""

    async def start(self) -> None:
        """The first acquisition, before the process serves (its listener answers 503 meanwhile).

        Waits, retrying every sixth of a lease period, while Redis cannot be reached or the directory
        recovers: a process that never held the lease cannot tell whether another holds it. Only a
        supervisor's replacement worker (``takeover``) serves at once without Redis (its supervisor
        reaped the one it replaces), and its keeper acquires the lease when Redis returns.

        A live lease is waited out for up to a lease period and a half: this environment's previous
        owner, killed (the flock says it is gone) and restarted by hand or by an orchestrator, whose
        lease lapses within a period; one still renewed after that is another live process with a
        copy of this environment, and ShardHeld stops the start."""
        deadline = trio.current_time() + 1.5 * self.placement.lease_ms / 1000
        said = False
        while True:
            try:
                await self._acquire()
                return
            except ShardHeld as exc:
                if trio.current_time() >= deadline:
                    raise
                if not said:
                    log.info("%s: waiting for it to lapse", exc)
            except PlacementUnavailable as exc:
                if self.takeover and not isinstance(exc, Recovering):
                    log.warning("%s: serving this worker's rooms; the lease is retried", exc)
                    return
                if not said:
                    log.warning("%s: waiting for it", exc)
            said = True
            await trio.sleep(self.placement.lease_ms / 6000)

    async def _acquire(self) -> None:
        lease = await self.placement.acquire(self.shard, self.address, floor=self._floor, takeover=self.takeover)
        self._floor = lease.token
        await self._remember()  # the environment's floor for the next owner, and the epoch seen
        self.lease = lease
        self.directory_up = True
        self._unregistered = True
        log.info("shard %s owned with token %d at %s", self.shard, lease.token, self.address)
        await self._register()

    async def _remember(self) -> None:
        now = (self._floor, self.placement.epoch)
        if now != self._recorded:
            await self._record(*now)
            self._recorded = now

    async def _register(self) -> None:
        """Tell the directory of every live room (after Redis lost its keys; idempotent). A code that
        another room claimed meanwhile keeps that room: this one stays reachable by id."""
        taken = await self.placement.register(self.shard, list(self._rooms()))
        self._unregistered = False  # not before every chunk went through: a failure retries it all
        for room_id, code in taken:
            log.warning("room %s: its code %s was claimed by another room while the directory was "
                        "lost; it is reachable by id only", room_id, code)
        for listener in self.registered:
            listener()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the lease until cancelled, lost or released."""
        with trio.CancelScope() as self._keeper:
            task_status.started()
            interval = self.placement.lease_ms / 3000
            while self.lost is None and not self._released:
                await trio.sleep(interval)
                await self._keep()

    async def _keep(self) -> None:
        try:
            if self.lease is None:
                await self._acquire()
            else:
                if await self.placement.renew(self.lease):
                    log.info("the directory had lost shard %s: lease put back", self.shard)
                    self._unregistered = True
                if self._unregistered:
                    await self._register()
            await self._remember()
        except PlacementUnavailable as exc:
            if self.directory_up:
                log.warning("%s (serving on; retrying)", exc)
            self.directory_up = False
            return
        except (Superseded, ShardHeld) as exc:
            self.lost = str(exc)
            self.directory_up = False
            log.error("%s: no longer this shard's owner", exc)
            self._on_lost(self.lost)
            return
        except Exception:  # anything else Redis made it meet (a reply of a shape never written): retried
            log.exception("keeping the lease of shard %s failed (serving on; retrying)", self.shard)
            self.directory_up = False
            return
        if not self.directory_up:
            log.info("the cluster directory is back (shard %s)", self.shard)
        self.directory_up = True

    def _check(self) -> None:
        if self.lost is not None:
            raise PlacementUnavailable(f"this node no longer owns its shard ({self.lost})")
        if not self.directory_up or self.lease is None:
            raise PlacementUnavailable("the cluster directory is unavailable")

    async def claim(self, code: str, room_id: str) -> tuple[str, str]:
        """Claim ``code`` for a new room here; the winner's ``(room_id, shard)``."""
        self._check()
        return await self.placement.claim(code, room_id, self.shard)

    async def unclaim(self, code: str, room_id: str) -> None:
        """Take back a claim of ours whose room was never made (best effort: a failure is logged)."""
        await self.forget(room_id, code)

    async def locate(self, *, room_id: str | None = None, code: str | None = None) -> Location | None:
        self._check()
        return await self.placement.locate(room_id=room_id, code=code)

    async def owner(self, shard: str) -> Lease | None:
        """The owner of ``shard`` now (None: nobody: it is down, restarting or paused)."""
        self._check()
        return await self.placement.owner(shard)

    async def forget(self, room_id: str, code: str) -> None:
        """A room closed for good: free its code. Awaited before the room leaves the router (the trap:
        freed in the background, a new claim of the code in between would find the old claim, make
        the room again under the old id, and then lose its code to the late delete). A failure is
        logged: the code then stays claimed by a room that is gone, and the next claim of it finds
        the room missing in this shard and makes it again (the claim is the authority)."""
        try:
            with trio.fail_after(DIRECTORY_DEADLINE):
                await self.placement.forget(room_id, code, self.shard)
        except (PlacementUnavailable, trio.TooSlowError) as exc:
            log.warning("room %s closed, its code %s not freed: %s", room_id, code, exc)

    async def release(self) -> None:
        """A graceful stop: stop renewing, then give the lease up (its rooms are unavailable at once,
        not after a TTL). The trap: with the keeper still running, its next renewal would find the
        lease gone, the fence at its own token, and put it back for a whole period."""
        self._released = True
        if self._keeper is not None:
            self._keeper.cancel()
        if self.lease is not None and self.lost is None:
            with trio.move_on_after(2):
                try:
                    await self.placement.release(self.lease)
                except PlacementUnavailable:
                    pass  # its TTL ends it
