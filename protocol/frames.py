"""Every frame of the Roost wire protocol, both directions, as frozen dataclasses.

A frame on the wire is one msgpack map. Its ``t`` key names the frame type; the other keys are the
fields declared below, under the same names. Frames sent by clients and frames sent by the server
have distinct type names, and :func:`roost.protocol.codec.decode` accepts only the direction it is told to
expect. Records (``Member``, ``ChatMessage``...) are maps nested inside frames or inside ``ok``
results; they have no ``t`` key.

Conventions (documented in PROTOCOL.md):

- every request a client sends, except ``hello``, ``ping`` and ``bye``, carries a client-chosen ``id``; the
  server answers it with exactly one ``ok`` or ``error`` carrying the same ``id``;
- every room event carries ``room``, ``epoch``, ``seq`` and ``ts`` (server time, ms since the Unix
  epoch); within one ``epoch`` a room's ``seq`` grows by exactly one per event;
- receivers ignore map keys they do not know, so fields can be added without breaking old peers.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar, TypeVar, dataclass_transform

from .schema import MAX_SAFE_INT, Bool, Enum, Int, ListOf, Opaque, Record, Str, WireRecord, spec_field

__all__ = [
    "CLIENT_FRAMES",
    "PROTOCOL_VERSION",
    "SERVER_FRAMES",
    "AdminOp",
    "AdminRequest",
    "Bye",
    "ChatAck",
    "ChatDelete",
    "ChatDeleted",
    "ChatEdit",
    "ChatEdited",
    "ChatEvent",
    "ChatMessage",
    "ChatSend",
    "ChatStatus",
    "ChatStatusPage",
    "ClientFrame",
    "Create",
    "Delivered",
    "ErrorReply",
    "Frame",
    "Hello",
    "History",
    "HistoryPage",
    "HostChanged",
    "HostSet",
    "InboxEntry",
    "InboxEvent",
    "InboxHead",
    "InboxHistory",
    "InboxPage",
    "InboxRead",
    "InboxResume",
    "InboxResumeResult",
    "InboxUnread",
    "MyRoom",
    "MyRooms",
    "MyRoomsPage",
    "InactivePolicy",
    "Join",
    "JoinOrCreate",
    "Kick",
    "Leave",
    "Lobby",
    "LobbyPage",
    "Member",
    "Members",
    "MembersPage",
    "MessageStatus",
    "MessageEvent",
    "Ok",
    "Phase",
    "Ping",
    "Pong",
    "PresenceDiff",
    "PresenceSet",
    "PresenceStatus",
    "Read",
    "ReadReceipt",
    "Receipts",
    "Refresh",
    "Resume",
    "ResumeResult",
    "RoomClosed",
    "RoomEvent",
    "RoomInfo",
    "RoomSnapshot",
    "Send",
    "ServerFrame",
    "StateEvent",
    "StateSet",
    "Status",
    "StatusList",
    "Sync",
    "Typing",
    "Welcome",
    "AuditEntry",
    "AuditPage",
    "Identity",
    "LinkedKey",
    "User",
    "UsersPage",
]

PROTOCOL_VERSION = 1
"""The version a client announces in ``hello``; the server refuses versions it does not speak."""


class Status(enum.StrEnum):
    """A status a member may set for itself."""

    ONLINE = "online"
    AWAY = "away"


class PresenceStatus(enum.StrEnum):
    """A member's status as others see it: ``offline`` while it has no live session (reconnect grace)."""

    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


class Phase(enum.StrEnum):
    """The life stage of a room's game."""

    LOBBY = "lobby"
    PLAYING = "playing"
    ENDED = "ended"


class InactivePolicy(enum.StrEnum):
    """What a room does when a member's presence goes offline while the game is ``playing``."""

    NONE = "none"
    """Nothing: the game goes on."""
    RESET = "reset"
    """The game goes back to ``lobby`` with no state (e.g. a two-player game)."""
    END = "end"
    """The game moves to ``ended``, keeping its state."""


class AdminOp(enum.StrEnum):
    """Operations of the admin API (service credential required)."""

    ROOMS = "rooms"
    """Page through every room, private ones included: args ``cursor``, ``limit``."""
    ROOM = "room"
    """Read one room's snapshot: args ``room``."""
    CLOSE = "close"
    """Close a room with an error event to its members: args ``room``, ``reason``."""
    KICK = "kick"
    """Remove a user from a room and close its connections there: args ``room``, ``user``."""
    REVOKE = "revoke"
    """Revoke tokens: args ``jti`` or ``user``, and ``exp`` (unix s until which to keep it)."""
    PUBLISH = "publish"
    """Broadcast a ``message`` event into a room as the server: args ``room``, ``kind``, ``body``."""
    STATS = "stats"
    """Engine counters (a map of integers): connections, sessions, rooms, event counts (PROTOCOL.md §10)."""
    USER_UPSERT = "user_upsert"
    """Create or patch the user with identity ``provider``/``subject``: args ``id`` (on create only),
    ``name``, ``meta`` (each only when given; ``null`` clears it). Result: the ``User``."""
    USER_GET = "user_get"
    """Read one user by exactly one of ``id``, ``provider`` + ``subject``, ``key``. Result: the ``User``."""
    USER_LINK_KEY = "user_link_key"
    """Link public ``key`` to user ``id`` (``conflict`` if another user holds it). Result: the ``User``."""
    USER_UNLINK_KEY = "user_unlink_key"
    """Unlink ``key`` from user ``id``; ``allow_empty`` to leave it with no way in. Result: the ``User``."""
    USER_MOVE_KEY = "user_move_key"
    """Move ``key`` to user ``to`` from whoever holds it, audited; ``merge`` (default true) merges a
    source left with no way in into ``to`` (rooms carry over, §15). Result: the target ``User``."""
    USER_LINK_IDENTITY = "user_link_identity"
    """Link ``provider``/``subject`` to user ``id`` (``conflict`` if another user holds it). Result: the ``User``."""
    USER_UNLINK_IDENTITY = "user_unlink_identity"
    """Unlink ``provider``/``subject`` from user ``id``; ``allow_empty`` as for keys. Result: the ``User``."""
    USERS = "users"
    """Page through every user by id: args ``cursor``, ``limit``. Result: a ``UsersPage``."""
    USER_AUDIT = "user_audit"
    """Page through user ``id``'s audit trail, newest last: args ``cursor``, ``limit``. Result: an ``AuditPage``."""
    NOTIFY = "notify"
    """Put an entry in one user's inbox and deliver it to the user's live sessions (PROTOCOL.md §16):
    args ``user``, ``kind``, ``body``; the result is the entry's ``id``, ``epoch``, ``seq``, ``ts``."""


# -- shared field specs ------------------------------------------------------------------------

_ID_CHARS = r"[A-Za-z0-9_\-]+"
REQUEST_ID = Int(0, 2**32 - 1)
ROOM_ID = Str(1, 64, _ID_CHARS)
ROOM_CODE = Str(1, 32, _ID_CHARS)
USER_ID = Str(1, 128)
DISPLAY_NAME = Str(0, 64)
MSG_ID = Str(1, 64, _ID_CHARS)
CLIENT_OP_ID = Str(1, 64)
CURSOR = Str(1, 256)
PAGE_LIMIT = Int(1, 100)
TOKEN = Str(1, 4096)
COUNT = Int(0, MAX_SAFE_INT)
SEQ = Int(0, MAX_SAFE_INT)
TIME_MS = Int(0, MAX_SAFE_INT)
KIND = Str(1, 64)
CHAT_TEXT = Str(1, "max_chat_chars")
OPAQUE = Opaque()
OPAQUE_MAP = Opaque(map_only=True)
ROOM_META = Opaque(map_only=True, max_bytes="max_meta_bytes")
PRESENCE_DATA = Opaque(max_bytes="max_presence_bytes")
CHAT_META = Opaque(map_only=True, max_bytes="max_chat_meta_bytes")
GAME_STATE = Opaque(max_bytes="max_state_bytes")
MAX_MEMBERS = Int(1, 100_000)
MEMBER_PAGE = 100
MAX_DIFF = 1000
HISTORY_PAGE = 100
LOBBY_PAGE = 100
PROVIDER = Str(1, 32, r"[a-z0-9_.\-]+")
SUBJECT = Str(1, 256)
PUBLIC_KEY = Str(43, 43, _ID_CHARS)
"""An Ed25519 public key: 32 bytes in base64url without padding."""
USER_META = Opaque(map_only=True, max_bytes="max_meta_bytes")
USER_IDENTITIES = 16
"""Identities one user may have linked at once."""
USER_KEYS = 32
"""Public keys one user may have linked at once."""
USER_MERGES = 64
"""Users merged into one that its record lists (the most recent; the audit trail has every one)."""
USERS_PAGE = 100
INBOX_BODY = Opaque(max_bytes="max_inbox_body_bytes")
INBOX_PAGE = 100
MY_ROOMS_PAGE = 100
RECEIPTS_MAX = 100
"""Message statuses in one ``receipts`` frame at most (the newest changed ones; older: ``chat_status``)."""
STATUS_PAGE = 100


_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, kw_only_default=True)
def _frame(cls: type[_T]) -> type[_T]:
    """Frames and records are frozen, slotted, keyword-only dataclasses."""
    return dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)


class Frame(WireRecord):
    """Base of all frames. ``TYPE`` is the wire value of ``t``."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""


class ClientFrame(Frame):
    """A frame a client sends to the server."""

    __slots__ = ()


class ServerFrame(Frame):
    """A frame the server sends to a client."""

    __slots__ = ()


class RoomEvent(ServerFrame):
    """A server frame that belongs to a room's ordered event stream ``(epoch, seq)``.

    Every subclass declares ``room``, ``epoch``, ``seq`` and ``ts`` first.
    """

    __slots__ = ()


# -- records (maps nested in frames and results) -----------------------------------------------


@_frame
class Member(WireRecord):
    """One member of a room as presence shows it: all of the user's sessions folded together."""

    user: str = spec_field(USER_ID)
    name: str = spec_field(DISPLAY_NAME)
    status: PresenceStatus = spec_field(Enum(PresenceStatus))
    last_seen: int = spec_field(TIME_MS)
    sessions: int = spec_field(Int(0, 1000), default=0)
    typing: bool = spec_field(Bool(), default=False)
    data: Any = spec_field(PRESENCE_DATA, default=None)


@_frame
class ChatMessage(WireRecord):
    """A chat message. ``n`` is the room-wide chat number: 1, 2, 3... with no gaps."""

    id: str = spec_field(MSG_ID)
    n: int = spec_field(SEQ)
    user: str = spec_field(USER_ID)
    name: str = spec_field(DISPLAY_NAME)
    text: str = spec_field(Str(0, "max_chat_chars"))
    ts: int = spec_field(TIME_MS)
    cid: str | None = spec_field(CLIENT_OP_ID, default=None)
    edited: int | None = spec_field(TIME_MS, default=None)
    deleted: bool = spec_field(Bool(), default=False)
    meta: dict[str, Any] | None = spec_field(CHAT_META, default=None)


@_frame
class RoomInfo(WireRecord):
    """A lobby entry: what anyone may see of a public room (or an operator of any room)."""

    room: str = spec_field(ROOM_ID)
    code: str = spec_field(ROOM_CODE)
    members: int = spec_field(COUNT)
    max: int = spec_field(MAX_MEMBERS)
    phase: Phase = spec_field(Enum(Phase))
    public: bool = spec_field(Bool())
    created: int = spec_field(TIME_MS)
    meta: dict[str, Any] | None = spec_field(ROOM_META, default=None)


@_frame
class RoomSnapshot(WireRecord):
    """Everything a member needs to render a room, as of event ``(epoch, seq)``.

    It is the result of ``create``/``join``/``join_or_create``, and the body of a ``sync`` resync.
    ``members`` is the first page of presence; page on with ``members`` requests from
    ``members_next``. ``chat_n`` is the newest chat number, ``read_n`` this user's read cursor and
    ``unread`` the number of messages after it.
    """

    room: str = spec_field(ROOM_ID)
    code: str = spec_field(ROOM_CODE)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    public: bool = spec_field(Bool())
    max: int = spec_field(MAX_MEMBERS)
    host: str | None = spec_field(USER_ID, default=None)
    phase: Phase = spec_field(Enum(Phase))
    version: int = spec_field(COUNT)
    state: Any = spec_field(GAME_STATE, default=None)
    members: tuple[Member, ...] = spec_field(ListOf(Record(Member), MEMBER_PAGE), default=())
    members_next: str | None = spec_field(CURSOR, default=None)
    member_count: int = spec_field(COUNT, default=0)
    chat_n: int = spec_field(SEQ, default=0)
    read_n: int = spec_field(SEQ, default=0)
    unread: int = spec_field(COUNT, default=0)
    logic: str | None = spec_field(KIND, default=None)
    inactive: InactivePolicy = spec_field(Enum(InactivePolicy), default=InactivePolicy.NONE)
    created: int = spec_field(TIME_MS)
    meta: dict[str, Any] | None = spec_field(ROOM_META, default=None)


@_frame
class LobbyPage(WireRecord):
    """Result of ``lobby`` (and of the admin ``rooms`` operation)."""

    rooms: tuple[RoomInfo, ...] = spec_field(ListOf(Record(RoomInfo), LOBBY_PAGE))
    next: str | None = spec_field(CURSOR, default=None)


@_frame
class MembersPage(WireRecord):
    """Result of ``members``: one page of the presence list, online members first."""

    members: tuple[Member, ...] = spec_field(ListOf(Record(Member), MEMBER_PAGE))
    next: str | None = spec_field(CURSOR, default=None)


@_frame
class ChatAck(WireRecord):
    """Result of ``chat_send``. ``dup`` is true when the ``cid`` was seen before (a retry)."""

    id: str = spec_field(MSG_ID)
    n: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    dup: bool = spec_field(Bool(), default=False)


@_frame
class HistoryPage(WireRecord):
    """Result of ``history``: messages oldest first; ``next`` is the ``before`` for the older page."""

    messages: tuple[ChatMessage, ...] = spec_field(ListOf(Record(ChatMessage), HISTORY_PAGE))
    next: int | None = spec_field(SEQ, default=None)


@_frame
class ResumeResult(WireRecord):
    """Result of ``resume``: ``replayed`` missed events follow the reply, or a ``sync`` follows."""

    replayed: int = spec_field(COUNT)
    resync: bool = spec_field(Bool(), default=False)


@_frame
class Identity(WireRecord):
    """A sign-in identity of a user: ``subject`` at auth ``provider`` (unique across users)."""

    provider: str = spec_field(PROVIDER)
    subject: str = spec_field(SUBJECT)
    linked_at: int = spec_field(TIME_MS)


@_frame
class LinkedKey(WireRecord):
    """An Ed25519 public key linked to a user (unique across users): a device that signs in with it."""

    key: str = spec_field(PUBLIC_KEY)
    linked_at: int = spec_field(TIME_MS)


@_frame
class User(WireRecord):
    """A user of the directory (service API only). ``id`` is the token ``sub``; guest ids start with ``~``.

    ``merged_into`` is set on a user that was merged into another (its rooms moved there; its
    messages keep its id); ``merged_from`` lists the most recent users merged into this one.
    """

    id: str = spec_field(USER_ID)
    name: str = spec_field(DISPLAY_NAME, default="")
    meta: dict[str, Any] | None = spec_field(USER_META, default=None)
    identities: tuple[Identity, ...] = spec_field(ListOf(Record(Identity), USER_IDENTITIES), default=())
    keys: tuple[LinkedKey, ...] = spec_field(ListOf(Record(LinkedKey), USER_KEYS), default=())
    guest: bool = spec_field(Bool(), default=False)
    merged_into: str | None = spec_field(USER_ID, default=None)
    merged_from: tuple[str, ...] = spec_field(ListOf(USER_ID, USER_MERGES), default=())
    created: int = spec_field(TIME_MS)
    updated: int = spec_field(TIME_MS)


@_frame
class UsersPage(WireRecord):
    """Result of the admin ``users`` operation: users in id order; ``next`` null at the end."""

    users: tuple[User, ...] = spec_field(ListOf(Record(User), USERS_PAGE))
    next: str | None = spec_field(CURSOR, default=None)


@_frame
class AuditEntry(WireRecord):
    """One change to a user's links: ``action`` is ``created``, ``seen``, ``key_linked``,
    ``key_unlinked``, ``key_moved_in``, ``key_moved_out``, ``identity_linked``, ``identity_unlinked``,
    ``merged_into`` or ``merged_from``; ``other`` is the other user of a move or merge."""

    n: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    action: str = spec_field(KIND)
    key: str | None = spec_field(PUBLIC_KEY, default=None)
    provider: str | None = spec_field(PROVIDER, default=None)
    subject: str | None = spec_field(SUBJECT, default=None)
    other: str | None = spec_field(USER_ID, default=None)


@_frame
class AuditPage(WireRecord):
    """Result of ``user_audit``: entries oldest first; ``next`` (the last ``n``) null at the end."""

    entries: tuple[AuditEntry, ...] = spec_field(ListOf(Record(AuditEntry), USERS_PAGE))
    next: str | None = spec_field(CURSOR, default=None)


@_frame
class InboxEntry(WireRecord):
    """One entry of a user's inbox (PROTOCOL.md §16): ``seq`` is its number in the inbox's ``epoch``."""

    id: str = spec_field(MSG_ID)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    kind: str = spec_field(KIND)
    body: Any = spec_field(INBOX_BODY, default=None)


@_frame
class InboxHead(WireRecord):
    """Where a user's inbox stands: its newest entry ``seq`` in ``epoch``, the oldest kept
    (``first``; ``seq + 1`` when none is kept), the read cursor ``read`` and the ``unread`` kept
    entries after it."""

    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    first: int = spec_field(SEQ)
    read: int = spec_field(SEQ)
    unread: int = spec_field(COUNT)


@_frame
class InboxPage(WireRecord):
    """Result of ``inbox_history``: entries oldest first; ``next`` is the ``before`` of the older page."""

    entries: tuple[InboxEntry, ...] = spec_field(ListOf(Record(InboxEntry), INBOX_PAGE))
    next: int | None = spec_field(SEQ, default=None)


@_frame
class InboxResumeResult(WireRecord):
    """Result of ``inbox_resume``: ``replayed`` missed ``inbox`` events follow the reply, or, with
    ``resync``, none do (entries after the position were dropped, or the epoch changed): page the
    inbox again with ``inbox_history``. ``head`` is the inbox as of the reply."""

    replayed: int = spec_field(COUNT)
    resync: bool = spec_field(Bool(), default=False)
    head: InboxHead = spec_field(Record(InboxHead))


@_frame
class MyRoom(WireRecord):
    """A room the user is a member of, with its chat position for the user (as in a snapshot)."""

    room: str = spec_field(ROOM_ID)
    code: str = spec_field(ROOM_CODE)
    chat_n: int = spec_field(SEQ, default=0)
    read_n: int = spec_field(SEQ, default=0)
    unread: int = spec_field(COUNT, default=0)


@_frame
class MyRoomsPage(WireRecord):
    """Result of ``my_rooms``: the user's rooms by id; ``next`` is the ``cursor`` of the next page."""

    rooms: tuple[MyRoom, ...] = spec_field(ListOf(Record(MyRoom), MY_ROOMS_PAGE))
    next: str | None = spec_field(CURSOR, default=None)


@_frame
class MessageStatus(WireRecord):
    """Delivery status of chat message ``n``: how many of the ``of`` other members have it delivered
    (their delivered or read cursor is at ``n`` or past it) and how many have read it."""

    n: int = spec_field(SEQ)
    delivered: int = spec_field(COUNT)
    read: int = spec_field(COUNT)
    of: int = spec_field(COUNT)


@_frame
class ChatStatusPage(WireRecord):
    """Result of ``chat_status``: the message's counts and, when ``who`` was asked, one page of the
    members (user ids, ascending) counted in it; ``next`` is the ``cursor`` for the next page."""

    n: int = spec_field(SEQ)
    delivered: int = spec_field(COUNT)
    read: int = spec_field(COUNT)
    of: int = spec_field(COUNT)
    users: tuple[str, ...] = spec_field(ListOf(USER_ID, STATUS_PAGE), default=())
    next: str | None = spec_field(USER_ID, default=None)


# -- client → server ---------------------------------------------------------------------------


@_frame
class Hello(ClientFrame):
    """First frame of every connection. ``token`` may be left out when it was in the URL query.

    ``hb`` is the heartbeat interval (ms) the client promises; the server expires a session that
    stays silent for about 2.5 intervals. ``session`` is a session token from an earlier
    ``welcome``, to take that session over (reconnect) instead of starting a new one. ``guest`` is a
    guest proof (PROTOCOL.md §9.3) instead of a token, where the server allows guests.
    """

    TYPE: ClassVar[str] = "hello"
    v: int = spec_field(Int(1, 65535))
    token: str | None = spec_field(TOKEN, default=None)
    hb: int | None = spec_field(Int(1000, 300_000), default=None)
    session: str | None = spec_field(Str(1, 512), default=None)
    agent: str | None = spec_field(Str(0, 128), default=None)
    guest: str | None = spec_field(TOKEN, default=None)

    def check(self) -> str | None:
        if self.token is not None and self.guest is not None:
            return "give a token or a guest proof, not both"
        return None


@_frame
class Refresh(ClientFrame):
    """Present a fresh token for the same user before the current one expires."""

    TYPE: ClassVar[str] = "refresh"
    id: int = spec_field(REQUEST_ID)
    token: str = spec_field(TOKEN)


@_frame
class Ping(ClientFrame):
    """Application heartbeat; the server answers ``pong``. Any frame also counts as a heartbeat."""

    TYPE: ClassVar[str] = "ping"


@_frame
class Create(ClientFrame):
    """Create a room; the creator joins it as host. ``max`` defaults to the server's setting."""

    TYPE: ClassVar[str] = "create"
    id: int = spec_field(REQUEST_ID)
    public: bool = spec_field(Bool(), default=False)
    max: int | None = spec_field(MAX_MEMBERS, default=None)
    logic: str | None = spec_field(KIND, default=None)
    inactive: InactivePolicy = spec_field(Enum(InactivePolicy), default=InactivePolicy.NONE)
    meta: dict[str, Any] | None = spec_field(ROOM_META, default=None)


@_frame
class Join(ClientFrame):
    """Join a room by ``room`` id or by ``code`` (exactly one). Joining twice is idempotent."""

    TYPE: ClassVar[str] = "join"
    id: int = spec_field(REQUEST_ID)
    room: str | None = spec_field(ROOM_ID, default=None)
    code: str | None = spec_field(ROOM_CODE, default=None)

    def check(self) -> str | None:
        if (self.room is None) == (self.code is None):
            return "exactly one of room and code is required"
        return None


@_frame
class JoinOrCreate(ClientFrame):
    """Join the room with ``code``, creating it (with the other fields) if it does not exist.

    Concurrent calls with the same code all end up in one room.
    """

    TYPE: ClassVar[str] = "join_or_create"
    id: int = spec_field(REQUEST_ID)
    code: str = spec_field(ROOM_CODE)
    public: bool = spec_field(Bool(), default=False)
    max: int | None = spec_field(MAX_MEMBERS, default=None)
    logic: str | None = spec_field(KIND, default=None)
    inactive: InactivePolicy = spec_field(Enum(InactivePolicy), default=InactivePolicy.NONE)
    meta: dict[str, Any] | None = spec_field(ROOM_META, default=None)


@_frame
class Leave(ClientFrame):
    """Leave a room for good (a dropped connection is not a leave)."""

    TYPE: ClassVar[str] = "leave"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)


@_frame
class Lobby(ClientFrame):
    """List public rooms, a page at a time. Private rooms are never listed."""

    TYPE: ClassVar[str] = "lobby"
    id: int = spec_field(REQUEST_ID)
    cursor: str | None = spec_field(CURSOR, default=None)
    limit: int | None = spec_field(PAGE_LIMIT, default=None)


@_frame
class Members(ClientFrame):
    """Page through a room's presence list (a joiner gets the first page in its snapshot)."""

    TYPE: ClassVar[str] = "members"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    cursor: str | None = spec_field(CURSOR, default=None)
    limit: int | None = spec_field(PAGE_LIMIT, default=None)


@_frame
class PresenceSet(ClientFrame):
    """Update one's own custom presence data and/or status (at least one)."""

    TYPE: ClassVar[str] = "presence_set"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    data: Any = spec_field(PRESENCE_DATA, default=None)
    status: Status | None = spec_field(Enum(Status), default=None)

    def check(self) -> str | None:
        if self.data is None and self.status is None:
            return "at least one of data and status is required"
        return None


@_frame
class Typing(ClientFrame):
    """Start or stop the typing indicator; it also stops by itself after a few seconds."""

    TYPE: ClassVar[str] = "typing"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    on: bool = spec_field(Bool())


@_frame
class ChatSend(ClientFrame):
    """Send a chat message. ``cid`` (client op id) makes a retried send idempotent."""

    TYPE: ClassVar[str] = "chat_send"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    cid: str = spec_field(CLIENT_OP_ID)
    text: str = spec_field(CHAT_TEXT)
    meta: dict[str, Any] | None = spec_field(CHAT_META, default=None)


@_frame
class ChatEdit(ClientFrame):
    """Edit one's own message."""

    TYPE: ClassVar[str] = "chat_edit"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    msg: str = spec_field(MSG_ID)
    text: str = spec_field(CHAT_TEXT)


@_frame
class ChatDelete(ClientFrame):
    """Delete one's own message (the host may delete any)."""

    TYPE: ClassVar[str] = "chat_delete"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    msg: str = spec_field(MSG_ID)


@_frame
class History(ClientFrame):
    """Page chat history backwards: messages with ``n < before`` (newest page when absent)."""

    TYPE: ClassVar[str] = "history"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    before: int | None = spec_field(SEQ, default=None)
    limit: int | None = spec_field(PAGE_LIMIT, default=None)


@_frame
class Read(ClientFrame):
    """Move one's read cursor forward to chat number ``n`` (it never moves back)."""

    TYPE: ClassVar[str] = "read"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    n: int = spec_field(SEQ)


@_frame
class Delivered(ClientFrame):
    """Move one's delivered cursor forward to chat number ``n``: every message up to ``n`` has reached
    this user's device. Never moves back nor past the newest message. Clients send the latest ``n``
    only, one in flight per room; the ``ok`` follows the commit that stored it (§17)."""

    TYPE: ClassVar[str] = "delivered"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    n: int = spec_field(SEQ)


class StatusList(enum.StrEnum):
    """Which members ``chat_status`` lists: those that have the message delivered, or read."""

    DELIVERED = "delivered"
    READ = "read"


@_frame
class ChatStatus(ClientFrame):
    """The delivery status of one chat message (counts; and a page of who, when ``who`` is given)."""

    TYPE: ClassVar[str] = "chat_status"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    n: int = spec_field(Int(1, MAX_SAFE_INT))
    who: StatusList | None = spec_field(Enum(StatusList), default=None)
    cursor: str | None = spec_field(USER_ID, default=None)
    limit: int | None = spec_field(PAGE_LIMIT, default=None)


@_frame
class Bye(ClientFrame):
    """End this session now (not a drop): every room it is attached to sees it leave at once
    (``presence`` ``reason: "ended"``), its session token no longer resumes, and the server closes
    the connection with 1000 (§17)."""

    TYPE: ClassVar[str] = "bye"


@_frame
class StateSet(ClientFrame):
    """Host only: compare-and-set the game state and/or phase. ``version`` is the current one."""

    TYPE: ClassVar[str] = "state_set"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    version: int = spec_field(COUNT)
    state: Any = spec_field(GAME_STATE, default=None)
    phase: Phase | None = spec_field(Enum(Phase), default=None)

    def check(self) -> str | None:
        if self.state is None and self.phase is None:
            return "at least one of state and phase is required"
        return None


@_frame
class Send(ClientFrame):
    """A game message for the room's logic (or, without logic, relayed as a ``message`` event)."""

    TYPE: ClassVar[str] = "send"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    kind: str = spec_field(KIND)
    body: Any = spec_field(OPAQUE, default=None)


@_frame
class Kick(ClientFrame):
    """Host only: remove a member from the room."""

    TYPE: ClassVar[str] = "kick"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    user: str = spec_field(USER_ID)


@_frame
class HostSet(ClientFrame):
    """Host only: hand hosting over to another member."""

    TYPE: ClassVar[str] = "host_set"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    user: str = spec_field(USER_ID)


@_frame
class Resume(ClientFrame):
    """After reconnecting, ask for a room's events after ``(epoch, seq)``.

    The server replies ``ok`` with a :class:`ResumeResult` and then sends exactly the missed events
    in order, or, when they are no longer held (or the epoch changed), one ``sync``.
    """

    TYPE: ClassVar[str] = "resume"
    id: int = spec_field(REQUEST_ID)
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)


@_frame
class AdminRequest(ClientFrame):
    """An operator request, authorised by the service credential ``key`` (not by the user token)."""

    TYPE: ClassVar[str] = "admin"
    id: int = spec_field(REQUEST_ID)
    key: str = spec_field(Str(1, 512))
    op: AdminOp = spec_field(Enum(AdminOp))
    args: dict[str, Any] | None = spec_field(OPAQUE_MAP, default=None)


@_frame
class InboxResume(ClientFrame):
    """Attach this session to the user's inbox after ``(epoch, seq)``: the server replies ``ok`` with
    an :class:`InboxResumeResult`, then sends exactly the missed entries in order, then every new one."""

    TYPE: ClassVar[str] = "inbox_resume"
    id: int = spec_field(REQUEST_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)


@_frame
class InboxRead(ClientFrame):
    """Move the inbox read cursor forward to entry ``n`` (it never moves back)."""

    TYPE: ClassVar[str] = "inbox_read"
    id: int = spec_field(REQUEST_ID)
    n: int = spec_field(SEQ)


@_frame
class InboxHistory(ClientFrame):
    """Page the inbox backwards: entries with ``seq < before`` (newest page when absent)."""

    TYPE: ClassVar[str] = "inbox_history"
    id: int = spec_field(REQUEST_ID)
    before: int | None = spec_field(SEQ, default=None)
    limit: int | None = spec_field(PAGE_LIMIT, default=None)


@_frame
class MyRooms(ClientFrame):
    """Page the rooms the user is a member of (``welcome.rooms`` is the first page)."""

    TYPE: ClassVar[str] = "my_rooms"
    id: int = spec_field(REQUEST_ID)
    cursor: str | None = spec_field(CURSOR, default=None)
    limit: int | None = spec_field(PAGE_LIMIT, default=None)


# -- server → client ---------------------------------------------------------------------------


@_frame
class Welcome(ServerFrame):
    """Answer to a good ``hello``: the connection is authenticated.

    ``session`` is the token to present in a later ``hello`` to take this session over; ``sid`` is
    its id. ``exp`` is the user token's expiry (unix s): refresh before it. ``limits`` tells the
    client the server's limits: ``frame``, ``burst``, ``rooms``, ``chat`` (ints) and ``rate`` (a float).
    ``inbox`` is where the user's inbox stands (its unread count); ``rooms`` the first page of the
    user's rooms with their unread chat counts, ``rooms_next`` the ``my_rooms`` cursor of the rest.
    """

    TYPE: ClassVar[str] = "welcome"
    v: int = spec_field(Int(1, 65535))
    sid: str = spec_field(Str(1, 64))
    session: str = spec_field(Str(1, 512))
    user: str = spec_field(USER_ID)
    name: str = spec_field(DISPLAY_NAME)
    hb: int = spec_field(Int(1000, 300_000))
    exp: int = spec_field(TIME_MS)
    time: int = spec_field(TIME_MS)
    resumed: bool = spec_field(Bool(), default=False)
    limits: dict[str, Any] | None = spec_field(OPAQUE_MAP, default=None)
    inbox: InboxHead | None = spec_field(Record(InboxHead), default=None)
    rooms: tuple[MyRoom, ...] = spec_field(ListOf(Record(MyRoom), MY_ROOMS_PAGE), default=())
    rooms_next: str | None = spec_field(CURSOR, default=None)


@_frame
class Ok(ServerFrame):
    """Success reply to request ``id``; ``result`` is the request's result record, if any."""

    TYPE: ClassVar[str] = "ok"
    id: int = spec_field(REQUEST_ID)
    result: Any = spec_field(Opaque(extra_depth=4), default=None)


@_frame
class ErrorReply(ServerFrame):
    """Failure reply to request ``id``, or (without ``id``) a connection-level error.

    ``code`` is an :class:`~roost.protocol.errors.ErrorCode` value; clients treat unknown codes as
    ``internal``. ``retry_ms`` accompanies ``rate_limited`` and ``unavailable``; ``url`` accompanies
    ``moved`` (the ``ws://`` or ``wss://`` address of the node that serves the room).
    """

    TYPE: ClassVar[str] = "error"
    id: int | None = spec_field(REQUEST_ID, default=None)
    code: str = spec_field(Str(1, 64, r"[a-z_]+"))
    message: str = spec_field(Str(0, 512), default="")
    retry_ms: int | None = spec_field(COUNT, default=None)
    url: str | None = spec_field(Str(1, 512, r"wss?://\S+"), default=None)


@_frame
class Pong(ServerFrame):
    """Answer to ``ping`` with the server's clock (ms since the Unix epoch)."""

    TYPE: ClassVar[str] = "pong"
    time: int = spec_field(TIME_MS)


@_frame
class PresenceDiff(RoomEvent):
    """Presence changes: members that joined, whose entry changed, and that left.

    ``reason`` says why the members in ``leave`` left when they did not leave themselves or time out:
    ``kicked`` (removed by the host or an operator), ``ended`` (its last session ended with ``bye``).
    A kicked user's sessions receive this diff as their last event of the room.
    """

    TYPE: ClassVar[str] = "presence"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    join: tuple[Member, ...] = spec_field(ListOf(Record(Member), MAX_DIFF), default=())
    update: tuple[Member, ...] = spec_field(ListOf(Record(Member), MAX_DIFF), default=())
    leave: tuple[str, ...] = spec_field(ListOf(USER_ID, MAX_DIFF), default=())
    reason: str | None = spec_field(KIND, default=None)


@_frame
class ChatEvent(RoomEvent):
    """A new chat message."""

    TYPE: ClassVar[str] = "chat"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    msg: ChatMessage = spec_field(Record(ChatMessage))


@_frame
class ChatEdited(RoomEvent):
    """A message was edited; ``msg`` is the message as it now stands."""

    TYPE: ClassVar[str] = "chat_edited"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    msg: ChatMessage = spec_field(Record(ChatMessage))


@_frame
class ChatDeleted(RoomEvent):
    """A message was deleted by ``by`` (its author or the host)."""

    TYPE: ClassVar[str] = "chat_deleted"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    msg: str = spec_field(MSG_ID)
    n: int = spec_field(SEQ)
    by: str = spec_field(USER_ID)


@_frame
class ReadReceipt(RoomEvent):
    """``user`` has read up to chat number ``n``."""

    TYPE: ClassVar[str] = "receipt"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    user: str = spec_field(USER_ID)
    n: int = spec_field(SEQ)


@_frame
class Receipts(ServerFrame):
    """Delivery status of the recipient's own messages that changed (not a room event: no ``seq``,
    sent only to the author's sessions, at most once per room per ``receipt_window``, §17)."""

    TYPE: ClassVar[str] = "receipts"
    room: str = spec_field(ROOM_ID)
    msgs: tuple[MessageStatus, ...] = spec_field(ListOf(Record(MessageStatus), RECEIPTS_MAX))


@_frame
class HostChanged(RoomEvent):
    """Hosting passed to ``user`` (absent when the room has no member left to host)."""

    TYPE: ClassVar[str] = "host"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    user: str | None = spec_field(USER_ID, default=None)


@_frame
class StateEvent(RoomEvent):
    """The game state and/or phase changed; carries the whole new state and its version."""

    TYPE: ClassVar[str] = "state"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    version: int = spec_field(COUNT)
    phase: Phase = spec_field(Enum(Phase))
    state: Any = spec_field(GAME_STATE, default=None)
    reason: str | None = spec_field(KIND, default=None)


@_frame
class MessageEvent(RoomEvent):
    """A game message broadcast by room logic, relayed from a member (``sender``), or published."""

    TYPE: ClassVar[str] = "message"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    kind: str = spec_field(KIND)
    body: Any = spec_field(OPAQUE, default=None)
    sender: str | None = spec_field(USER_ID, default=None)


@_frame
class RoomClosed(RoomEvent):
    """The room is gone (closed by its logic, an operator, too many crashes, or the reaper)."""

    TYPE: ClassVar[str] = "room_closed"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    code: str = spec_field(Str(1, 64, r"[a-z_]+"))
    message: str = spec_field(Str(0, 512), default="")


@_frame
class Sync(RoomEvent):
    """Full resync: forget what you held for this room and take ``snapshot`` (at ``epoch, seq``).

    Sent when a resume asks for events no longer held, after the room restarted from a snapshot,
    or when the epoch changed.
    """

    TYPE: ClassVar[str] = "sync"
    room: str = spec_field(ROOM_ID)
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    snapshot: RoomSnapshot = spec_field(Record(RoomSnapshot))
    reason: str | None = spec_field(KIND, default=None)


@_frame
class InboxEvent(ServerFrame):
    """A new entry of the user's inbox (or a missed one, replayed after ``inbox_resume``). Within
    one ``epoch`` a user's inbox ``seq`` grows by exactly one per entry."""

    TYPE: ClassVar[str] = "inbox"
    epoch: int = spec_field(SEQ)
    seq: int = spec_field(SEQ)
    ts: int = spec_field(TIME_MS)
    id: str = spec_field(MSG_ID)
    kind: str = spec_field(KIND)
    body: Any = spec_field(INBOX_BODY, default=None)


@_frame
class InboxUnread(ServerFrame):
    """The inbox read cursor moved (``inbox_read`` from another session of the same user)."""

    TYPE: ClassVar[str] = "inbox_unread"
    read: int = spec_field(SEQ)
    unread: int = spec_field(COUNT)


def _table(base: type[Frame]) -> dict[str, type[Frame]]:
    # From the module's names, not __subclasses__(): dataclass(slots=True) replaces each class,
    # and the discarded originals can linger in __subclasses__().
    found = [v for v in globals().values() if isinstance(v, type) and issubclass(v, base) and v.TYPE]
    return {cls.TYPE: cls for cls in sorted(found, key=lambda c: c.TYPE)}


CLIENT_FRAMES: dict[str, type[Frame]] = _table(ClientFrame)
"""Frame types a client may send, by ``t``."""
SERVER_FRAMES: dict[str, type[Frame]] = _table(ServerFrame)
"""Frame types the server may send, by ``t``."""
