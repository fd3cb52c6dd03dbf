"""The admin API over the wire: a service credential, constant-time checked, and fail-closed.

With no ``service_key`` configured every admin request is refused ``unsupported``; a wrong or missing
key is ``unauthorized``. Two transports reach it, the WebSocket ``admin`` frame and HTTP under
``/api/``; both call :meth:`Admin.call`. The operations themselves are
:class:`~roost.operations.Operations`, the same the embedding app calls in-process.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from roost.protocol.codec import CLIENT_LIMITS, dump_record
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import (
    CURSOR,
    DISPLAY_NAME,
    PAGE_LIMIT,
    PROVIDER,
    PUBLIC_KEY,
    SUBJECT,
    USER_ID,
    USER_META,
    AdminOp,
)
from roost.protocol.schema import Bool, FieldProblem, Limits, Spec, Str

from .errors import RoomError
from .operations import Operations

__all__ = ["Admin"]

log = logging.getLogger("roost.admin")


def _arg(args: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    value = args.get(name)
    if value is None:
        if required:
            raise RoomError(ErrorCode.MISSING_FIELD, f"args.{name} is required")
        return None
    if type(value) is not kind:
        raise RoomError(ErrorCode.BAD_FIELD, f"args.{name} must be a {kind.__name__}")
    return value


def _page_arg(args: dict[str, Any], name: str, spec: Spec, limits: Limits = CLIENT_LIMITS,
              *, required: bool = False) -> Any:
    """An optional page argument checked by the spec of the ``lobby`` field of the same name, so the
    admin listing refuses what ``lobby`` refuses (``limit`` 101 is ``bad_field``, not clamped).
    The user operations check every argument the same way, with the spec of the record field."""
    value = args.get(name)
    if value is None:
        if required:
            raise RoomError(ErrorCode.MISSING_FIELD, f"args.{name} is required")
        return None
    try:
        return spec.load(value, limits)
    except FieldProblem as problem:
        raise RoomError(problem.code, f"args.{name}: {problem.message}") from None


_USER_OPS = frozenset({AdminOp.USER_UPSERT, AdminOp.USER_GET, AdminOp.USER_LINK_KEY, AdminOp.USER_UNLINK_KEY,
                       AdminOp.USER_MOVE_KEY, AdminOp.USER_LINK_IDENTITY, AdminOp.USER_UNLINK_IDENTITY,
                       AdminOp.USERS, AdminOp.USER_AUDIT})


class Admin:
    """Checks the service credential and runs one admin operation: the one implementation behind the
    WebSocket ``admin`` frame and the HTTP service API (engine/http.py).

    A refused credential is counted (``on_refused``, the gateway's ``service_auth_failures``) and
    logged with the caller's address and what was wrong, never with the credential itself.
    """

    def __init__(self, service_key: str | None, operations: Operations, stats: Callable[[], dict[str, int]],
                 *, on_refused: Callable[[], None] | None = None, limits: Limits = CLIENT_LIMITS) -> None:
        self._key = service_key.encode() if service_key else None
        self._limits = limits
        """What a user's ``meta`` may be (``max_meta_bytes``, as for room meta)."""
        self._ops = operations
        self._stats = stats
        self._on_refused = on_refused

    @property
    def users(self) -> Any:
        """The user directory the operations use (the gateway's too)."""
        return self._ops.users

    @property
    def enabled(self) -> bool:
        """Whether a service key is configured (without one, every admin request is ``unsupported``)."""
        return self._key is not None

    def authorize(self, credential: str | bytes | None, remote: str, op: AdminOp) -> None:
        """Raise RoomError unless ``credential`` is the service key (``unsupported`` with none configured).

        Both sides are compared as UTF-8 bytes with :func:`hmac.compare_digest`, whose time does not
        depend on where they differ (only on their lengths). A refusal is the request's one
        ``admin action`` line (outcome ``unauthorized`` or ``unsupported``, and whether the
        credential was ``missing`` or ``wrong``; never the credential, never the args a caller
        without it chose).
        """
        if self._key is None:
            _log_action(op, None, ErrorCode.UNSUPPORTED.value, remote=remote)
            raise RoomError(ErrorCode.UNSUPPORTED, "the admin API is disabled (no service key configured)")
        given = credential.encode() if isinstance(credential, str) else credential
        if given is None or not hmac.compare_digest(given, self._key):
            if self._on_refused is not None:
                self._on_refused()
            missing = given is None
            _log_action(op, None, ErrorCode.UNAUTHORIZED.value, remote=remote,
                        credential="missing" if missing else "wrong")
            raise RoomError(ErrorCode.UNAUTHORIZED, "missing service key" if missing else "wrong service key")

    async def call(self, op: AdminOp, args: dict[str, Any] | None, credential: str | bytes | None,
                   *, remote: str = "-") -> Any:
        """The result of admin operation ``op`` with ``args`` (PROTOCOL.md §10), or RoomError.

        The result is plain data (records dumped to maps), the same for both transports; None when
        the operation has none. One log line per authorized request, with its outcome (``ok`` or the
        error code) and never the credential; a refused credential is logged once, by ``authorize``.
        """
        self.authorize(credential, remote, op)
        try:
            result = await self._run(op, args or {})
        except Exception as error:  # RoomError; LocalProtocolError (a reply too large) has a code too
            code = getattr(error, "code", None)
            _log_action(op, args, code.value if isinstance(code, ErrorCode) else "internal", remote=remote)
            raise
        _log_action(op, args, "ok", remote=remote)
        return result

    async def _run(self, op: AdminOp, args: dict[str, Any]) -> Any:
        ops = self._ops
        if op is AdminOp.ROOMS:
            limit = _page_arg(args, "limit", PAGE_LIMIT) or 50
            return dump_record(ops.rooms(_page_arg(args, "cursor", CURSOR), limit))
        if op is AdminOp.STATS:
            return self._stats()
        if op in _USER_OPS:
            return dump_record(await self._user_op(op, args))
        if op is AdminOp.NOTIFY:
            entry = await ops.notify(_arg(args, "user", str), _arg(args, "kind", str), args.get("body"))
            return {"id": entry.id, "epoch": entry.epoch, "seq": entry.seq, "ts": entry.ts}
        if op is AdminOp.REVOKE:
            until = _arg(args, "exp", int)
            jti, user = _arg(args, "jti", str, required=False), _arg(args, "user", str, required=False)
            if (jti is None) == (user is None):
                raise RoomError(ErrorCode.BAD_FIELD, "give exactly one of args.jti and args.user")
            if jti is not None:
                await ops.revoke_token(jti, until)
            else:
                await ops.revoke_user(user, until)
            return None
        room = _arg(args, "room", str)
        if op is AdminOp.ROOM:
            return dump_record(await ops.snapshot(room))
        if op is AdminOp.CLOSE:
            await ops.close_room(room, _arg(args, "reason", str, required=False) or "closed by an operator")
        elif op is AdminOp.KICK:
            await ops.kick(room, _arg(args, "user", str))
        else:  # AdminOp.PUBLISH
            await ops.publish(room, _arg(args, "kind", str), args.get("body"))
        return None


    async def _user_op(self, op: AdminOp, args: dict[str, Any]) -> Any:
        ops = self._ops

        def arg(name: str, spec: Spec, *, required: bool = True) -> Any:
            return _page_arg(args, name, spec, self._limits, required=required)

        def flag(name: str) -> bool:
            return bool(arg(name, Bool(), required=False))

        if op is AdminOp.USERS:
            return await ops.users_page(arg("cursor", USER_ID, required=False), arg("limit", PAGE_LIMIT, required=False) or 50)
        if op is AdminOp.USER_GET:
            provider, subject = arg("provider", PROVIDER, required=False), arg("subject", SUBJECT, required=False)
            if (provider is None) != (subject is None):
                raise RoomError(ErrorCode.MISSING_FIELD, "args.provider and args.subject go together")
            return await ops.user_get(user_id=arg("id", USER_ID, required=False), key=arg("key", PUBLIC_KEY, required=False),
                                      identity=None if provider is None else (provider, subject))
        if op is AdminOp.USER_UPSERT:
            fields = {name: arg(name, spec, required=False) for name, spec in (("name", DISPLAY_NAME), ("meta", USER_META))
                      if name in args}
            return await ops.user_upsert(arg("provider", PROVIDER), arg("subject", SUBJECT),
                                         user_id=arg("id", USER_ID, required=False), fields=fields)
        if op is AdminOp.USER_MOVE_KEY:
            merge = args.get("merge") is None or flag("merge")
            return await ops.user_move_key(arg("key", PUBLIC_KEY), arg("to", USER_ID), merge=merge,
                                           allow_empty=flag("allow_empty"))
        user_id = arg("id", USER_ID)
        if op is AdminOp.USER_AUDIT:
            return await ops.user_audit(user_id, arg("cursor", Str(1, 16), required=False),
                                        arg("limit", PAGE_LIMIT, required=False) or 50)
        if op is AdminOp.USER_LINK_KEY:
            return await ops.user_link_key(user_id, arg("key", PUBLIC_KEY))
        if op is AdminOp.USER_UNLINK_KEY:
            return await ops.user_unlink_key(user_id, arg("key", PUBLIC_KEY), allow_empty=flag("allow_empty"))
        provider, subject = arg("provider", PROVIDER), arg("subject", SUBJECT)
        if op is AdminOp.USER_LINK_IDENTITY:
            return await ops.user_link_identity(user_id, provider, subject)
        return await ops.user_unlink_identity(user_id, provider, subject, allow_empty=flag("allow_empty"))


def _log_action(op: AdminOp, args: Any, outcome: str, **context: str) -> None:
    """The one line per admin request: op, outcome, the string args that name what it acted on
    (``room``, ``user``, ``jti``), and ``context`` (e.g. ``remote``); never the key."""
    args = args if isinstance(args, dict) else {}
    extra: dict[str, Any] = {"op": op.value, "outcome": outcome, **context}
    extra |= {name: args[name] for name in ("room", "user", "jti") if isinstance(args.get(name), str)}
    if isinstance(args.get("id"), str) and op.value.startswith("user"):
        extra["user"] = args["id"]
    level = logging.WARNING if outcome in ("unauthorized", "unsupported") else logging.INFO
    log.log(level, "admin action", extra=extra)
