"""The user directory: users, their identities and linked public keys, in the store's ``users`` table.

A user record holds what the service API shows (:class:`~roost.protocol.frames.User`); two indexes
map each identity and each key to the one user that holds it, and an audit trail per user records
when what was linked, unlinked, moved or merged. Records of the table (keys are UTF-8 strings)::

    u:<id>                         the user (msgpack map of the User fields, plus the audit counter)
    i:<provider>:<subject>         -> id   (a provider has no ':', so the split is unambiguous)
    k:<public key>                 -> id
    a:<len(id):03d>:<id>:<n:016x>  audit entry n of the user (the length pins the prefix: user
                                   "x" and user "x:1" never share one)

**Uniqueness under races.** Every operation, reads included, goes through one serial owner: the
:meth:`Directory.run` task, the room-actor pattern. It takes the operations queued as one turn, runs
them one after another (each reads what the ones before it wrote, then checks, then writes), commits
the turn's writes in one store commit, and only then answers them. Two upserts of one identity or
two links of one key in the same instant are two steps of one task: the second sees the first's
write and gets ``conflict`` (or finds it done). A refused operation leaves no write: its changes sit
in its own overlay until it returns.

The hot path of a backend token is :meth:`Directory.note_seen`: a set lookup; only a ``sub`` not yet
in the (bounded) memory of known ids queues a record-on-first-sight, without waiting for it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio

from roost.protocol.codec import fit_page, record_size
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import (
    USER_IDENTITIES,
    USER_KEYS,
    USER_MERGES,
    AuditEntry,
    AuditPage,
    Identity,
    LinkedKey,
    User,
    UsersPage,
)
from roost.protocol.tokens import GUEST_PREFIX

from .errors import RoomError
from .store import Store, Write

__all__ = ["AUDIT_KEEP", "Directory", "MergeResult", "new_guest_id"]

log = logging.getLogger("roost.users")

TABLE = "users"
AUDIT_KEEP = 256
"""Audit entries kept per user (the oldest go first): a user relinked in a loop must not grow the
store without bound. The record's counter keeps numbering, so a reader sees that entries were dropped."""
_KNOWN_MAX = 100_000
"""Ids the directory remembers as recorded (the hot-path set). Over it, the oldest half is forgotten:
a forgotten id costs one queued no-op lookup when it connects again, nothing more."""
_INBOX = 1024
_TURN_MAX = 64


def new_guest_id() -> str:
    """A guest user's id: ``~g`` + 22 base64url characters (128 random bits). User tokens may not
    have a ``sub`` starting with ``~`` (the gateway refuses them), so no backend id can be one."""
    return GUEST_PREFIX + "g" + secrets.token_urlsafe(16)


def _user_key(user_id: str) -> str:
    return "u:" + user_id


def _identity_key(provider: str, subject: str) -> str:
    return f"i:{provider}:{subject}"


def _pubkey_key(key: str) -> str:
    return "k:" + key


def _audit_prefix(user_id: str) -> str:
    return f"a:{len(user_id):03d}:{user_id}:"


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def to_user(record: dict[str, Any]) -> User:
    """The wire record of a stored user map."""
    return User(
        id=record["id"], name=record["name"], meta=record["meta"],
        identities=tuple(Identity(provider=p, subject=s, linked_at=t) for p, s, t in record["identities"]),
        keys=tuple(LinkedKey(key=k, linked_at=t) for k, t in record["keys"]),
        guest=record["guest"], merged_into=record["merged_into"], merged_from=tuple(record["merged_from"]),
        created=record["created"], updated=record["updated"],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class MergeResult:
    """What ``move_key`` did: the target user as it now stands, and the user merged into it (if any)."""

    user: User
    merged: str | None


class _Txn:
    """One operation's view of the table: its own writes over the turn's, over the store."""

    def __init__(self, store: Store, turn: dict[str, bytes | None], now_ms: int) -> None:
        self._store = store
        self._turn = turn
        self.writes: dict[str, bytes | None] = {}
        self.now_ms = now_ms

    async def get(self, key: str) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        if key in self._turn:
            return self._turn[key]
        return await self._store.get(TABLE, key)

    def put(self, key: str, value: bytes | None) -> None:
        self.writes[key] = value

    async def user(self, user_id: str) -> dict[str, Any] | None:
        data = await self.get(_user_key(user_id))
        return None if data is None else _unpack(data)

    async def index(self, key: str) -> str | None:
        data = await self.get(key)
        return None if data is None else _unpack(data)

    def save(self, record: dict[str, Any], *, touched: bool = True) -> None:
        if touched:
            record["updated"] = self.now_ms
        self.put(_user_key(record["id"]), _pack(record))

    def audit(self, record: dict[str, Any], action: str, **fields: str | None) -> None:
        """Append an audit entry to the user (saved with the record by the caller's ``save``)."""
        n = record["audit_n"] = record.get("audit_n", 0) + 1
        prefix = _audit_prefix(record["id"])
        entry = {"n": n, "ts": self.now_ms, "action": action, **{k: v for k, v in fields.items() if v is not None}}
        self.put(f"{prefix}{n:016x}", _pack(entry))
        if n > AUDIT_KEEP:
            self.put(f"{prefix}{n - AUDIT_KEEP:016x}", None)


def _new_record(user_id: str, name: str, now_ms: int, *, guest: bool = False) -> dict[str, Any]:
    return {"id": user_id, "name": name, "meta": None, "identities": [], "keys": [], "guest": guest,
            "merged_into": None, "merged_from": [], "created": now_ms, "updated": now_ms, "audit_n": 0}


def _way_in(record: dict[str, Any]) -> bool:
    return bool(record["identities"] or record["keys"])


_Op = Callable[[_Txn], Awaitable[Any]]


class _Pending:
    __slots__ = ("done", "error", "op", "value")

    def __init__(self, op: _Op) -> None:
        self.op = op
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = trio.Event()


class Directory:
    """The user directory over a store (see the module docstring for the layout and the serial owner)."""

    def __init__(self, store: Store, wall_clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = wall_clock
        self._send, self._receive = trio.open_memory_channel[_Pending | None](_INBOX)
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.seen_dropped = 0
        """First sightings not recorded because the directory's queue was full (retried at the next
        connection of that user: it was not remembered as known)."""

    # -- the serial owner -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve operations until cancelled: a turn of queued operations, one commit, then the answers."""
        task_status.started()
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < _TURN_MAX:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            turn: dict[str, bytes | None] = {}
            now_ms = int(self._clock() * 1000)
            answered: list[_Pending] = []
            for pending in batch:
                if pending is None:
                    continue
                txn = _Txn(self._store, turn, now_ms)
                try:
                    pending.value = await pending.op(txn)
                except RoomError as error:
                    pending.error = error
                except Exception:  # a bug in one operation must not stop the directory
                    log.exception("directory operation failed")
                    pending.error = RoomError(ErrorCode.INTERNAL, "the directory operation failed")
                else:
                    turn.update(txn.writes)
                answered.append(pending)
            if turn:
                try:
                    await self._store.commit([Write(None, key, value, table=TABLE) for key, value in turn.items()])
                except BaseException as error:
                    for pending in answered:  # nothing of this turn is durable: nobody may think so
                        if pending.error is None:
                            pending.error = RoomError(ErrorCode.INTERNAL, "the directory could not commit")
                        pending.done.set()
                    raise
            for pending in answered:
                pending.done.set()

    async def _call(self, op: _Op) -> Any:
        pending = _Pending(op)
        await self._send.send(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.value

    # -- the hot path of backend tokens -------------------------------------------------------------

    def note_seen(self, user_id: str, name: str) -> None:
        """A token with ``sub`` = ``user_id`` signed in: record the user on first sight. Never waits."""
        if user_id in self._known:
            return
        pending = _Pending(lambda txn: self._seen(txn, user_id, name))
        try:
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            self.seen_dropped += 1
            return
        self._remember(user_id)

    def _remember(self, user_id: str) -> None:
        known = self._known
        known[user_id] = None
        if len(known) > _KNOWN_MAX:
            for _ in range(_KNOWN_MAX // 2):
                known.popitem(last=False)

    async def _seen(self, txn: _Txn, user_id: str, name: str) -> None:
        if await txn.get(_user_key(user_id)) is not None:
            return
        record = _new_record(user_id, name, txn.now_ms)
        txn.audit(record, "seen")
        txn.save(record)

    async def settle(self) -> None:
        """Return once every operation queued before this call is committed (first sightings too)."""
        await self._call(_nothing)

    # -- reads ----------------------------------------------------------------------------------------

    async def get(self, user_id: str) -> User:
        """The user with this id, or ``not_found``."""
        async def op(txn: _Txn) -> User:
            return to_user(await _need(txn, user_id))
        return await self._call(op)

    async def by_identity(self, provider: str, subject: str) -> User:
        """The user holding this identity, or ``not_found``."""
        async def op(txn: _Txn) -> User:
            holder = await txn.index(_identity_key(provider, subject))
            if holder is None:
                raise RoomError(ErrorCode.NOT_FOUND, "no user has this identity")
            return to_user(await _need(txn, holder))
        return await self._call(op)

    async def by_key(self, key: str) -> User:
        """The user this public key is linked to, or ``not_found``."""
        async def op(txn: _Txn) -> User:
            holder = await txn.index(_pubkey_key(key))
            if holder is None:
                raise RoomError(ErrorCode.NOT_FOUND, "no user has this key")
            return to_user(await _need(txn, holder))
        return await self._call(op)

    async def page(self, cursor: str | None, limit: int) -> UsersPage:
        """Users in id order after ``cursor``: at most ``limit`` (≤ 100), cut by encoded size.

        Stable while users are added: the cursor is the last id shown and the scan resumes strictly
        after it in key order, so a user added meanwhile appears once (after the cursor) or not at
        all (before it), and no user already listed comes again.
        """
        async def op(txn: _Txn) -> UsersPage:
            rows = await self._store.scan(TABLE, prefix="u:", after=None if cursor is None else _user_key(cursor),
                                          limit=limit + 1)
            users, more = fit_page((to_user(_unpack(value)) for _key, value in rows), limit, record_size)
            return UsersPage(users=tuple(users), next=users[-1].id if more else None)
        return await self._call(op)

    async def audit(self, user_id: str, cursor: str | None, limit: int) -> AuditPage:
        """The user's audit entries after entry ``cursor`` (a number as text), oldest first."""
        async def op(txn: _Txn) -> AuditPage:
            await _need(txn, user_id)
            prefix = _audit_prefix(user_id)
            after = None
            if cursor is not None:
                if not cursor.isdigit() or len(cursor) > 16:
                    raise RoomError(ErrorCode.BAD_FIELD, "args.cursor must be an entry number")
                after = f"{prefix}{int(cursor):016x}"
            rows = await self._store.scan(TABLE, prefix=prefix, after=after, limit=limit + 1)
            entries, more = fit_page((AuditEntry(**_unpack(value)) for _key, value in rows), limit, record_size)
            return AuditPage(entries=tuple(entries), next=str(entries[-1].n) if more else None)
        return await self._call(op)

    # -- mutations ------------------------------------------------------------------------------------

    async def upsert(self, provider: str, subject: str, *, user_id: str | None = None,
                     fields: dict[str, Any] | None = None) -> User:
        """The user with identity ``(provider, subject)``, created if none has it, with ``fields``
        (``name``, ``meta``) set; a field given as None is cleared. Idempotent: the same call
        again changes nothing (not even ``updated``).

        ``user_id`` names the user on create (default ``u_`` + random): an existing user of that id
        gets the identity linked. It must match when the identity is already held (``conflict``).
        """
        fields = fields or {}

        async def op(txn: _Txn) -> User:
            holder = await txn.index(_identity_key(provider, subject))
            if holder is not None:
                if user_id is not None and user_id != holder:
                    raise RoomError(ErrorCode.CONFLICT, "this identity belongs to another user")
                record = await _need(txn, holder)
            else:
                chosen = user_id
                if chosen is None:
                    chosen = "u_" + secrets.token_urlsafe(16)
                    while await txn.get(_user_key(chosen)) is not None:  # pragma: no cover - 128 random bits
                        chosen = "u_" + secrets.token_urlsafe(16)
                record = await txn.user(chosen)
                if record is None:
                    if chosen.startswith(GUEST_PREFIX):
                        raise RoomError(ErrorCode.BAD_FIELD, f"ids starting with {GUEST_PREFIX!r} are made by Roost")
                    record = _new_record(chosen, "", txn.now_ms)
                    txn.audit(record, "created")
                _link_identity(txn, record, provider, subject)
            changed = holder is None
            for name in ("name", "meta"):
                if name in fields:
                    value = fields[name] if fields[name] is not None else ("" if name == "name" else None)
                    if record[name] != value:
                        record[name] = value
                        changed = True
            if changed:
                txn.save(record)
            return to_user(record)
        return await self._call(op)

    async def link_key(self, user_id: str, key: str) -> User:
        """Link ``key`` to the user: ``conflict`` if another user holds it; idempotent otherwise."""
        async def op(txn: _Txn) -> User:
            record = await _need(txn, user_id)
            holder = await txn.index(_pubkey_key(key))
            if holder == user_id:
                return to_user(record)
            if holder is not None:
                raise RoomError(ErrorCode.CONFLICT, "this key is linked to another user (move it with user_move_key)")
            _link_key(txn, record, key)
            txn.audit(record, "key_linked", key=key)
            txn.save(record)
            return to_user(record)
        return await self._call(op)

    async def unlink_key(self, user_id: str, key: str, *, allow_empty: bool = False) -> User:
        """Unlink ``key`` from the user; refused (``invalid_state``) if it would leave the user with
        no identity and no key, unless ``allow_empty``."""
        async def op(txn: _Txn) -> User:
            record = await _need(txn, user_id)
            if await txn.index(_pubkey_key(key)) != user_id:
                raise RoomError(ErrorCode.NOT_FOUND, "this key is not linked to this user")
            record["keys"] = [entry for entry in record["keys"] if entry[0] != key]
            _check_way_in(record, allow_empty)
            txn.put(_pubkey_key(key), None)
            txn.audit(record, "key_unlinked", key=key)
            txn.save(record)
            return to_user(record)
        return await self._call(op)

    async def move_key(self, key: str, to: str, *, merge: bool = True, allow_empty: bool = False) -> MergeResult:
        """Move ``key`` from the user holding it to user ``to``, audited on both.

        A source left with no identity and no key is merged into ``to`` when ``merge`` (its record
        says ``merged_into``, the target's ``merged_from``; the caller moves its rooms), left empty
        with ``allow_empty``, else the move is refused (``invalid_state``).
        """
        async def op(txn: _Txn) -> MergeResult:
            target = await _need(txn, to)
            holder = await txn.index(_pubkey_key(key))
            if holder is None:
                raise RoomError(ErrorCode.NOT_FOUND, "no user has this key (link it with user_link_key)")
            if holder == to:
                return MergeResult(to_user(target), None)
            source = await _need(txn, holder)
            source["keys"] = [entry for entry in source["keys"] if entry[0] != key]
            merged = None
            if not _way_in(source):
                if merge:
                    merged = holder
                elif not allow_empty:
                    raise RoomError(ErrorCode.INVALID_STATE, "the move would leave the source user with no way in "
                                    "(merge it, or allow_empty)")
            _link_key(txn, target, key)
            txn.audit(source, "key_moved_out", key=key, other=to)
            txn.audit(target, "key_moved_in", key=key, other=holder)
            if merged is not None:
                source["merged_into"] = to
                target["merged_from"] = [*[m for m in target["merged_from"] if m != holder], holder][-USER_MERGES:]
                txn.audit(source, "merged_into", other=to)
                txn.audit(target, "merged_from", other=holder)
            txn.save(source)
            txn.save(target)
            return MergeResult(to_user(target), merged)
        return await self._call(op)

    async def link_identity(self, user_id: str, provider: str, subject: str) -> User:
        """Link an identity to the user (a guest becomes an account this way, keeping its id)."""
        async def op(txn: _Txn) -> User:
            record = await _need(txn, user_id)
            holder = await txn.index(_identity_key(provider, subject))
            if holder == user_id:
                return to_user(record)
            if holder is not None:
                raise RoomError(ErrorCode.CONFLICT, "this identity belongs to another user")
            _link_identity(txn, record, provider, subject)
            txn.save(record)
            return to_user(record)
        return await self._call(op)

    async def unlink_identity(self, user_id: str, provider: str, subject: str, *, allow_empty: bool = False) -> User:
        """Unlink an identity from the user; ``allow_empty`` as for :meth:`unlink_key`."""
        async def op(txn: _Txn) -> User:
            record = await _need(txn, user_id)
            if await txn.index(_identity_key(provider, subject)) != user_id:
                raise RoomError(ErrorCode.NOT_FOUND, "this identity is not linked to this user")
            record["identities"] = [e for e in record["identities"] if (e[0], e[1]) != (provider, subject)]
            _check_way_in(record, allow_empty)
            txn.put(_identity_key(provider, subject), None)
            txn.audit(record, "identity_unlinked", provider=provider, subject=subject)
            txn.save(record)
            return to_user(record)
        return await self._call(op)

    async def sign_in_key(self, key: str, name: str | None, may_create: Callable[[], bool]) -> tuple[User, bool]:
        """The user ``key`` is linked to, or a new guest user holding it when ``may_create()`` allows
        (``rate_limited`` otherwise). Returns the user and whether it was created now."""
        async def op(txn: _Txn) -> tuple[User, bool]:
            holder = await txn.index(_pubkey_key(key))
            if holder is not None:
                return to_user(await _need(txn, holder)), False
            if not may_create():
                raise RoomError(ErrorCode.RATE_LIMITED, "too many new guests from this address")
            record = _new_record(new_guest_id(), name or "guest", txn.now_ms, guest=True)
            txn.audit(record, "created")
            _link_key(txn, record, key)
            txn.audit(record, "key_linked", key=key)
            txn.save(record)
            return to_user(record), True
        user, created = await self._call(op)
        self._remember(user.id)
        return user, created


async def _nothing(txn: _Txn) -> None:
    return None


async def _need(txn: _Txn, user_id: str) -> dict[str, Any]:
    record = await txn.user(user_id)
    if record is None:
        raise RoomError(ErrorCode.NOT_FOUND, "no such user")
    return record


def _check_way_in(record: dict[str, Any], allow_empty: bool) -> None:
    if not allow_empty and not _way_in(record):
        raise RoomError(ErrorCode.INVALID_STATE, "this would leave the user with no identity and no key "
                        "(give allow_empty: true to do it anyway)")


def _link_key(txn: _Txn, record: dict[str, Any], key: str) -> None:
    if len(record["keys"]) >= USER_KEYS:
        raise RoomError(ErrorCode.LIMIT_REACHED, f"a user may have {USER_KEYS} keys at most")
    record["keys"].append([key, txn.now_ms])
    txn.put(_pubkey_key(key), _pack(record["id"]))


def _link_identity(txn: _Txn, record: dict[str, Any], provider: str, subject: str) -> None:
    if len(record["identities"]) >= USER_IDENTITIES:
        raise RoomError(ErrorCode.LIMIT_REACHED, f"a user may have {USER_IDENTITIES} identities at most")
    record["identities"].append([provider, subject, txn.now_ms])
    txn.put(_identity_key(provider, subject), _pack(record["id"]))
    txn.audit(record, "identity_linked", provider=provider, subject=subject)
