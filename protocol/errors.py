"""Error codes, close codes and the one exception family of the wire protocol.

Everything a peer can get wrong maps to a stable :class:`ErrorCode` (sent in ``error`` frames) and,
when the connection cannot go on, a :class:`CloseCode` (sent in the WebSocket Close frame). Clients
decide whether to reconnect from the close code alone: :func:`may_reconnect` is the rule, and the
ranges are fixed so a client written today still behaves right for codes added later.

As in h11, the exceptions say which side is at fault: :class:`RemoteProtocolError` means the peer
sent something invalid (only ``decode`` and token verification raise it); :class:`LocalProtocolError`
means this process tried to send something invalid (a bug on our side).
"""

from __future__ import annotations

import enum

__all__ = [
    "CloseCode",
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "may_reconnect",
]


class ErrorCode(enum.StrEnum):
    """Stable error codes carried by ``error`` frames. The string is the wire value."""

    # -- the frame itself is bad (raised by decode) --
    MALFORMED = "malformed"
    """The bytes are not one well-formed msgpack value (or carry trailing bytes / ext types)."""
    NOT_A_MAP = "not_a_map"
    """The frame is valid msgpack but not a map with string keys."""
    UNKNOWN_TYPE = "unknown_type"
    """The ``t`` field is missing, not a string, or names no frame type of this direction."""
    MISSING_FIELD = "missing_field"
    """A required field is absent."""
    BAD_FIELD = "bad_field"
    """A field has the wrong type, an out-of-range number or a value outside its allowed set."""
    TOO_LONG = "too_long"
    """A string, byte string, list or map is longer than its limit."""
    TOO_DEEP = "too_deep"
    """An opaque value (custom data, game state) nests deeper than the limit."""
    TOO_LARGE = "too_large"
    """The whole frame is larger than the maximum frame size, a byte-limited value (room meta, presence
    data, chat meta, game state) is larger than its limit, or the event a request would cause could
    not be sent in one frame."""

    # -- the request is well-formed but cannot be served --
    UNAUTHORIZED = "unauthorized"
    """The token (or admin credential) is missing, malformed, unknown, badly signed or revoked."""
    TOKEN_EXPIRED = "token_expired"
    """The token's ``exp`` has passed (or the token is not valid yet)."""
    FORBIDDEN = "forbidden"
    """Authenticated, but not allowed: not the host, not the author, outside the token's room scope."""
    NOT_FOUND = "not_found"
    """No such room, message or member."""
    NOT_MEMBER = "not_member"
    """The request needs membership of the room first."""
    ROOM_FULL = "room_full"
    """The room has no free seat."""
    CONFLICT = "conflict"
    """A compare-and-set failed (game state version) or the id/code is already taken."""
    INVALID_STATE = "invalid_state"
    """The request does not fit the current state (e.g. wrong phase, room closing)."""
    RATE_LIMITED = "rate_limited"
    """Too many requests; retry after the ``retry_ms`` given in the error frame."""
    LIMIT_REACHED = "limit_reached"
    """A count limit was hit: rooms per connection, sessions per user, history size."""
    UNSUPPORTED = "unsupported"
    """The server does not support this request (e.g. admin API disabled, unknown room logic)."""
    INTERNAL = "internal"
    """The server failed; the request may or may not have taken effect only if it was not acked."""

    # -- a cluster (several processes or nodes): the room is not served by this one --
    MOVED = "moved"
    """The room lives on another node: the error frame's ``url`` is its address. Connect there (the
    same token works on every node) and send the request again; nothing took effect here."""
    UNAVAILABLE = "unavailable"
    """The room's node, or the cluster directory, cannot be reached now; retry after ``retry_ms``.
    Nothing took effect."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by Roost.

    1000–1015 are RFC 6455 / IANA codes. Application codes follow one rule a client can apply
    blindly: **4000–4499 may reconnect** (with backoff, resuming its rooms), **4500–4999 are
    terminal** (a reconnect would fail the same way until something changes).
    """

    NORMAL = 1000
    """Normal closure: the client or server ended the session on purpose."""
    GOING_AWAY = 1001
    """Server shutting down or draining; reconnect with backoff and resume."""
    PROTOCOL_ERROR = 1002
    """WebSocket framing violated (unmasked client frame, bad opcode, bad continuation...)."""
    UNSUPPORTED_DATA = 1003
    """A text frame was received; Roost speaks binary msgpack only."""
    INVALID_PAYLOAD = 1007
    """Invalid UTF-8 where UTF-8 is required by RFC 6455 (text or close reason)."""
    POLICY_VIOLATION = 1008
    """Generic policy refusal where no more specific code applies."""
    MESSAGE_TOO_BIG = 1009
    """A WebSocket message was larger than the maximum frame size."""
    INTERNAL_ERROR = 1011
    """An unexpected server error ended this connection (other connections are unaffected)."""
    SERVICE_RESTART = 1012
    """The server is restarting; reconnect with backoff and resume."""
    TRY_AGAIN_LATER = 1013
    """Overloaded (e.g. too many pending handshakes); reconnect with backoff."""

    # -- 4000–4499: the client may reconnect --
    SLOW_CONSUMER = 4000
    """The connection's outbox overflowed; reconnect and resume from the last seq."""
    RATE_LIMITED = 4001
    """Too many frames; reconnect after a backoff."""
    TOKEN_EXPIRED = 4002
    """The token expired and no fresh one was presented; get a new token, then reconnect."""
    HEARTBEAT_TIMEOUT = 4003
    """No frame arrived for about 2.5 announced heartbeat intervals."""
    AUTH_TIMEOUT = 4004
    """No ``hello`` arrived before the authentication deadline."""
    ROOM_RESTARTED = 4005
    """Reserved for transports that cannot resync in band; reconnect and resume."""
    USER_MERGED = 4006
    """The user this session signed in as was merged into another (its device key moved to an
    account): reconnect, and the same key signs in as that account (PROTOCOL.md §15)."""

    # -- 4500–4999: terminal, do not reconnect automatically --
    BAD_TOKEN = 4500
    """The token is malformed, signed by an unknown key or badly signed."""
    TOKEN_REVOKED = 4501
    """The token (by ``jti``) or its user was revoked."""
    BAD_FRAME = 4502
    """The peer kept sending frames that cannot be decoded, or a bad frame before ``hello``."""
    UNSUPPORTED_VERSION = 4503
    """The ``hello`` asked for a protocol version this server does not speak."""
    SUPERSEDED = 4504
    """A newer connection resumed this session; this one is closed so they do not fight."""
    KICKED = 4505
    """Reserved, not sent by this server: a kick removes a member from one room (a ``presence``
    leave with ``reason: "kicked"``) and leaves its connection open for its other rooms."""
    TOO_MANY_SESSIONS = 4506
    """The user already has the maximum number of live sessions."""


def may_reconnect(code: int) -> bool:
    """Whether a client should reconnect automatically after a close with ``code``.

    Unknown 4000–4499 codes allow reconnection and unknown 4500–4999 codes do not, so the rule
    holds for codes added in later protocol versions.
    """
    if 4000 <= code <= 4499:
        return True
    if 4500 <= code <= 4999:
        return False
    return code in _RECONNECT_RFC_CODES


_RECONNECT_RFC_CODES = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        1006,  # abnormal closure: TCP dropped without a Close frame (never sent on the wire)
    }
)


class ProtocolError(Exception):
    """Base of every protocol error. Not raised directly: use a subclass.

    Attributes:
        code: the stable :class:`ErrorCode`.
        message: a short human-readable explanation (never contains secrets such as tokens).
        request_id: the request's ``id`` when it could be read from the bad frame, so the error
            reply can be correlated; ``None`` otherwise.
        close_code: the :class:`CloseCode` the connection should be closed with if the error
            cannot be answered in band (e.g. ``too_large``), else ``None``.
    """

    code: ErrorCode
    message: str
    request_id: int | None
    close_code: CloseCode | None

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: int | None = None,
        close_code: CloseCode | None = None,
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("use RemoteProtocolError or LocalProtocolError")
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.close_code = close_code


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid."""


class LocalProtocolError(ProtocolError):
    """This process tried to build or send something invalid: a bug in the caller."""
