"""The admin API over the wire: a service credential, constant-time checked, and fail-closed.

With no ``service_key`` configured every admin request is refused ``unsupported``; a wrong key is
``unauthorized``. The operations themselves are :class:`~engine.operations.Operations`, the same the
embedding app calls in-process.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from protocol.codec import dump_record
from protocol.errors import ErrorCode
from protocol.codec import CLIENT_LIMITS
from protocol.frames import CURSOR, PAGE_LIMIT, AdminOp, AdminRequest
from protocol.schema import FieldProblem, Spec

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


def _page_arg(args: dict[str, Any], name: str, spec: Spec) -> Any:
    """An optional page argument checked by the spec of the ``lobby`` field of the same name, so the
    admin listing refuses what ``lobby`` refuses (``limit`` 101 is ``bad_field``, not clamped)."""
    value = args.get(name)
    if value is None:
        return None
    try:
        return spec.load(value, CLIENT_LIMITS)
    except FieldProblem as problem:
        raise RoomError(problem.code, f"args.{name}: {problem.message}") from None


class Admin:
    """Checks the credential and runs one admin request."""

    def __init__(self, service_key: str | None, operations: Operations, stats: Callable[[], dict[str, int]]) -> None:
        self._key = service_key.encode() if service_key else None
        self._ops = operations
        self._stats = stats

    async def handle(self, request: AdminRequest) -> Any:
        """The ``ok`` result of ``request``, or RoomError. One log line per request, with its outcome
        (``ok`` or the error code) and never the key; the args logged are strings only (an
        unauthenticated caller chose them: engine/logs.py bounds them)."""
        try:
            result = await self._handle(request)
        except Exception as error:  # RoomError; LocalProtocolError (a reply too large) has a code too
            code = getattr(error, "code", None)
            _log_action(request.op, request.args, code.value if isinstance(code, ErrorCode) else "internal")
            raise
        _log_action(request.op, request.args, "ok")
        return result

    async def _handle(self, request: AdminRequest) -> Any:
        if self._key is None:
            raise RoomError(ErrorCode.UNSUPPORTED, "the admin API is disabled (no service key configured)")
        if not hmac.compare_digest(request.key.encode(), self._key):
            raise RoomError(ErrorCode.UNAUTHORIZED, "wrong service key")
        args = request.args or {}
        ops, op = self._ops, request.op
        if op is AdminOp.ROOMS:
            limit = _page_arg(args, "limit", PAGE_LIMIT) or 50
            return dump_record(ops.rooms(_page_arg(args, "cursor", CURSOR), limit))
        if op is AdminOp.STATS:
            return self._stats()
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


def _log_action(op: AdminOp, args: Any, outcome: str, **context: str) -> None:
    """The one line per admin request: op, outcome, the string args that name what it acted on
    (``room``, ``user``, ``jti``), and ``context`` (e.g. ``remote``); never the key."""
    args = args if isinstance(args, dict) else {}
    extra: dict[str, Any] = {"op": op.value, "outcome": outcome, **context}
    extra |= {name: args[name] for name in ("room", "user", "jti") if isinstance(args.get(name), str)}
    level = logging.WARNING if outcome in ("unauthorized", "unsupported") else logging.INFO
    log.log(level, "admin action", extra=extra)
