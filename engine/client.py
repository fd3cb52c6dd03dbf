"""The Trio client for Roost: one WebSocket, requests matched to replies, ordered room events, resume.

``roost.client`` lives beside the sans-IO ``roost.protocol``, not inside it (as h11 and wsproto leave
I/O to their users): it does the I/O (over trio-websocket) and imports nothing of Roost but
``roost.protocol`` (tests/test_layering.py checks both), so it speaks the wire and nothing of the
server's internals. Everything it puts on the wire goes through :func:`roost.protocol.codec.encode` and everything it reads through
:func:`roost.protocol.codec.decode`, so it speaks exactly the contract of ``PROTOCOL.md``.

Shape (one client = one nursery, opened by :func:`open_client`)::

    supervisor task ── connect ─ hello ─ welcome ─┬─ reader   (this task: decode, settle replies,
         ▲                                        │            dedup + buffer room events)
         └── backoff + full jitter ◀── close ─────┼─ writer   (drains the bounded outbox)
                                                  ├─ heartbeat (ping when idle, detect a dead link)
                                                  └─ resume   (after a reconnect: resume rooms,
                                                               re-send in-flight chat_send)

Decisions worth knowing before using it:

- **The reader never blocks on the application.** trio-websocket's reader stops answering pings and
  close frames while its queue is full (trio-architecture.md, trap 2), so our reader hands events to
  a bounded buffer (``event_buffer``, default 1,024) with ``send_nowait``. When the application does
  not read events and the buffer fills, the client closes the connection (code 1000, reason
  ``event_buffer_full``) and fails with :class:`EventOverflow` rather than stall or silently drop
  events: a lost event would break the ``(epoch, seq)`` guarantee the application relies on.
- **Requests while reconnecting wait** for the next connection (bound them with ``trio.fail_after``);
  requests *in flight* when the link drops raise :class:`ConnectionLost`, except ``chat_send``, which
  is idempotent thanks to its ``cid`` and is re-sent after the rooms are resumed.
- **Errors in the background do not crash the caller's task.** A terminal close is recorded and
  raised to every waiter (as :class:`ConnectionClosedError`), and ``events()`` ends. Only bugs (an
  unexpected exception in a client task) propagate through the nursery.
- Timers use ``trio.current_time()``, so tests drive them with ``MockClock`` over in-memory streams.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import random
import ssl
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, NamedTuple, cast

import trio
import trio_websocket
from nacl.signing import SigningKey
from trio_websocket import ConnectionClosed, WebSocketConnection

from roost.protocol.codec import SERVER_LIMITS, Sender, decode, encode, load_record
from roost.protocol.errors import CloseCode, ErrorCode, RemoteProtocolError, may_reconnect
from roost.protocol.frames import (
    CLIENT_FRAMES,
    PROTOCOL_VERSION,
    AdminOp,
    AdminRequest,
    AuditPage,
    Bye,
    ChatAck,
    ChatDelete,
    ChatEdit,
    ChatEvent,
    ChatSend,
    ChatStatus,
    ChatStatusPage,
    ClientFrame,
    Create,
    Delivered,
    ErrorReply,
    Frame,
    Hello,
    History,
    HistoryPage,
    HostSet,
    InboxEvent,
    InboxHistory,
    InboxPage,
    InboxRead,
    InboxResume,
    InboxResumeResult,
    InboxUnread,
    Join,
    JoinOrCreate,
    Kick,
    Leave,
    Lobby,
    LobbyPage,
    Members,
    MembersPage,
    MyRooms,
    MyRoomsPage,
    Ok,
    Phase,
    Ping,
    Pong,
    PresenceDiff,
    PresenceSet,
    Read,
    Receipts,
    Refresh,
    Resume,
    ResumeResult,
    RoomClosed,
    RoomEvent,
    RoomSnapshot,
    Send,
    StateSet,
    Status,
    StatusList,
    Sync,
    Typing,
    User,
    UsersPage,
    Welcome,
)
from roost.protocol.schema import Limits, WireRecord
from roost.protocol.tokens import sign_guest_proof

__all__ = [
    "Client",
    "ClientError",
    "ClientStatistics",
    "ConnectionClosedError",
    "ConnectionLost",
    "Event",
    "EventOverflow",
    "HandshakeError",
    "ProtocolViolation",
    "RequestError",
    "RoomPosition",
    "StreamFactory",
    "TokenSource",
    "open_client",
    "start_client",
]

log = logging.getLogger(__name__)

TokenSource = Callable[[], Awaitable[str]]
"""An async callable returning a fresh user token; called before every connection attempt."""
StreamFactory = Callable[[], Awaitable[trio.abc.Stream]]
"""An async callable returning a new byte stream to speak WebSocket over (tests, custom transports)."""

_MAX_REQUEST_ID = 2**32 - 1
_MAX_MOVES = 3
"""``moved`` answers one request follows before giving up (two nodes that each say the other)."""
_OUTBOX_SIZE = 64
"""Frames queued for the writer; requesters wait when it is full (backpressure, never unbounded)."""
_SILENCE_FACTOR = 2.5
"""A link with no frame from the server for this many heartbeat intervals is considered dead.

Every ``ping`` is answered with ``pong``, so a live server is never silent that long; it mirrors the
server's own rule for expiring silent sessions (PROTOCOL.md §3.2). Without it a half-open TCP
connection (a phone switching networks) would hang the client forever.
"""
_FORGET_ON_RESUME = frozenset({ErrorCode.NOT_MEMBER, ErrorCode.NOT_FOUND})

Event = RoomEvent | InboxEvent | InboxUnread | Receipts
"""What the event stream carries: room events, and the user's inbox entries and read-cursor moves."""


# -- errors --------------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error the client raises (besides ``LocalProtocolError`` for invalid arguments)."""


class RequestError(ClientError):
    """The server answered a request with ``error``.

    Attributes:
        code: the :class:`~roost.protocol.errors.ErrorCode` (a ``str``); codes this client does not know
            read as ``internal``, as PROTOCOL.md asks, and ``wire_code`` keeps what was sent.
        message: the server's human-readable explanation.
        retry_ms: for ``rate_limited`` and ``unavailable``, how long to wait before retrying.
        request_id: the ``id`` the request carried on the wire.
        url: for ``moved``, the address of the node that serves the room (PROTOCOL.md §8.1).
    """

    def __init__(
        self, wire_code: str, message: str = "", retry_ms: int | None = None, request_id: int | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(wire_code, message, retry_ms, request_id)
        self.url = url
        try:
            self.code: ErrorCode = ErrorCode(wire_code)
        except ValueError:
            self.code = ErrorCode.INTERNAL
        self.wire_code = wire_code
        self.message = message
        self.retry_ms = retry_ms
        self.request_id = request_id

    def __str__(self) -> str:
        text = f"{self.wire_code}: {self.message}" if self.message else self.wire_code
        return text if self.retry_ms is None else f"{text} (retry in {self.retry_ms} ms)"


class ConnectionLost(ClientError):
    """The connection dropped while this request was in flight; it may or may not have taken effect.

    The client reconnects on its own; retry if the request is safe to repeat.
    """


class ConnectionClosedError(ClientError):
    """The client is closed for good: a terminal close code, a local close, or reconnecting disabled.

    Attributes:
        code: the WebSocket close code (1006 when the link dropped without a Close frame).
        reason: the close reason (a short word for logs, see PROTOCOL.md §8.2).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        name = _close_name(self.code)
        return f"connection closed with {self.code} ({name})" + (f": {self.reason}" if self.reason else "")


class HandshakeError(ConnectionClosedError):
    """The connection ended before ``welcome``: a refused token (45xx), a bad version, a failed upgrade.

    ``code`` is the server's close code, or 1006 when the transport failed (connection refused, HTTP
    rejection, timeout; the original error is the ``__cause__``), or 1002 when the server answered
    something other than ``welcome``. It is a :class:`ConnectionClosedError`, so code that handles
    "closed for good" handles it too.
    """


class EventOverflow(ClientError):
    """The application did not read events and the event buffer filled; the client closed itself.

    Raised by :meth:`Client.events` (after the buffered events) and to every waiter. Read events
    promptly, or open the client with a larger ``event_buffer``.
    """


class ProtocolViolation(ClientError):
    """The server sent something PROTOCOL.md does not allow (a server bug, or not a Roost server).

    A bad ``ok`` result fails only its request; an undecodable frame closes the client (1002),
    because the room event stream can no longer be trusted to be complete.
    """


def _close_name(code: int) -> str:
    try:
        return CloseCode(code).name.lower()
    except ValueError:
        return "abnormal_closure" if code == 1006 else "unknown"


def _fresh(error: ClientError) -> ClientError:
    """A copy of a shared terminal error, so each waiting task raises its own exception object.

    Raising one exception object in several tasks makes their tracebacks pile up on it.
    """
    clone = copy.copy(error)
    clone.__cause__ = error.__cause__
    return clone


# -- records -------------------------------------------------------------------------------------


class RoomPosition(NamedTuple):
    """The last room event processed: what ``resume`` asks to continue from."""

    epoch: int
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClientStatistics:
    """Counters for tests and diagnostics (Trio's ``statistics()`` convention)."""

    connections: int
    """Connections that reached ``welcome``."""
    events_delivered: int
    duplicates_dropped: int
    """Events already seen (same epoch, ``seq`` not newer): replays after a resume, typically."""
    pings_sent: int
    requests_resent: int
    """``chat_send`` requests re-sent after a reconnect."""
    pending_requests: int
    buffered_events: int
    inbox_resyncs: int = 0
    """``inbox_resume`` answers that said ``resync`` (entries missed while offline were dropped:
    page ``inbox_history`` again)."""
    delivered_sent: int = 0
    """``delivered`` cursors sent by the client itself (coalesced: one in flight per room)."""


# -- internals -----------------------------------------------------------------------------------


class _Pending:
    """One request awaiting its ``ok``/``error``: the one-shot reply slot (idiom 6)."""

    __slots__ = ("data", "done", "error", "frame", "request_id", "resend", "value")

    def __init__(self, frame: ClientFrame, request_id: int, data: bytes, *, resend: bool) -> None:
        self.frame = frame
        self.request_id = request_id
        self.data = data
        self.resend = resend
        self.done = trio.Event()
        self.value: Any = None
        self.error: ClientError | None = None

    def succeed(self, value: Any) -> None:
        if not self.done.is_set():
            self.value = value
            self.done.set()

    def fail(self, error: ClientError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclasses.dataclass(slots=True)
class _Ending:
    """How one connection attempt ended, for the supervisor to decide what comes next."""

    code: int
    reason: str
    welcomed: bool = False
    healthy: bool = False
    """The connection was welcomed and its rooms resumed: the backoff starts over."""
    cause: BaseException | None = None
    error: ClientError | None = None
    """A terminal error to end the client with, whatever ``code`` says."""


class _Violation(Exception):
    """The server broke the protocol during the handshake."""


class _Connection:
    """One welcomed WebSocket: its outbox, timers and the scope that ends it."""

    def __init__(self, ws: WebSocketConnection, outbox: trio.MemorySendChannel[bytes], interval: float) -> None:
        now = trio.current_time()
        self.ws = ws
        self.outbox = outbox
        self.interval = interval
        self.silence_limit = interval * _SILENCE_FACTOR
        self.last_sent = now
        self.last_received = now
        self.scope = trio.CancelScope()
        self.aborted: _Ending | None = None
        self.healthy = False
        self.alive = True
        self.ready = trio.Event()
        """Set once requests may go (after the resumes were sent): when ``delivered`` may go."""

    async def push(self, data: bytes) -> None:
        """Queue bytes for the writer. A dead connection swallows them: the supervisor settles the
        requests that were in flight on it (ConnectionLost, or re-send for chat_send)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.outbox.send(data)

    def abort(self, code: int, reason: str) -> None:
        """Drop the link without a close handshake (dead peer): treated like a 1006 drop."""
        if self.aborted is None:
            self.aborted = _Ending(code, reason, welcomed=True)
        self.scope.cancel()


_RESULT_RECORDS: dict[type[ClientFrame], type[WireRecord]] = {
    Create: RoomSnapshot,
    Join: RoomSnapshot,
    JoinOrCreate: RoomSnapshot,
    Lobby: LobbyPage,
    Members: MembersPage,
    ChatSend: ChatAck,
    History: HistoryPage,
    Resume: ResumeResult,
    InboxResume: InboxResumeResult,
    InboxHistory: InboxPage,
    MyRooms: MyRoomsPage,
    ChatStatus: ChatStatusPage,
}
_ADMIN_RECORDS: dict[AdminOp, type[WireRecord]] = {
    AdminOp.ROOMS: LobbyPage, AdminOp.ROOM: RoomSnapshot, AdminOp.USERS: UsersPage, AdminOp.USER_AUDIT: AuditPage,
    **{op: User for op in AdminOp if op.value.startswith("user_") and op is not AdminOp.USER_AUDIT},
}


_WELCOME_LIMITS = {
    "frame": "max_frame_bytes",
    "chat": "max_chat_chars",
    "meta": "max_meta_bytes",
    "data": "max_presence_bytes",
    "chat_meta": "max_chat_meta_bytes",
    "state": "max_state_bytes",
}
"""``welcome.limits`` keys the client applies to what it sends, and the Limits attribute of each."""


def _limits_from_welcome(limits: Mapping[str, Any] | None) -> Limits:
    """Encode with the server's announced limits, so a server configured for longer chat messages
    (or larger meta, presence data, game state) is not refused locally. Values that make no sense
    are ignored (the server checks anyway)."""
    values = {attr: limits[key] for key, attr in _WELCOME_LIMITS.items() if type((limits or {}).get(key)) is int}
    try:
        return Limits(**values)
    except ValueError:
        return Limits()


class _EventStream:
    """``async for`` over the client's events; a plain iterator object, not an async generator,
    so nothing is left suspended inside the client's scopes when the caller stops iterating."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> Event:
        event = await self._client._receive_event()
        if event is None:
            raise StopAsyncIteration
        return event


# -- the client ----------------------------------------------------------------------------------


class Client:
    """A Roost session: requests, room events and reconnection. Made by :func:`open_client` only.

    Methods that send a request wait for its reply and return its result record, or raise
    :class:`RequestError` (the server said no), :class:`ConnectionLost` (the link dropped meanwhile)
    or :class:`ConnectionClosedError` (the client is closed). Arguments the protocol refuses raise
    :class:`~roost.protocol.errors.LocalProtocolError` before anything is sent. None of them take a
    timeout: wrap calls in ``trio.fail_after``; a cancelled request is forgotten (its reply ignored).
    """

    def __init__(
        self,
        url: str,
        token: str | TokenSource | None,
        *,
        guest_key: SigningKey | None = None,
        guest_name: str | None = None,
        heartbeat_ms: int,
        reconnect: bool,
        agent: str | None,
        stream: trio.abc.Stream | StreamFactory | None,
        max_backoff: float,
        backoff_base: float,
        event_buffer: int,
        connect_timeout: float,
        disconnect_timeout: float,
        ssl_context: ssl.SSLContext | None,
        limits: Limits,
        deliver: bool = True,
        follow_hosts: Collection[str] = (),
    ) -> None:
        if not 1000 <= heartbeat_ms <= 300_000:
            raise ValueError("heartbeat_ms must be within 1000..300000 (PROTOCOL.md §3.2)")
        if event_buffer < 1:
            raise ValueError("event_buffer must be at least 1")
        self._set_address(url)
        self._follow_hosts = frozenset(host.lower() for host in (self._host, *follow_hosts))
        """Hosts ``moved`` may send this client to (its token goes wherever it connects)."""
        self._opened_secure = self._secure
        if (token is None) == (guest_key is None):
            raise ValueError("give a token or a guest_key (PROTOCOL.md §9.3), exactly one")
        self._token = token
        self._guest_key = guest_key
        self._guest_name = guest_name
        self._heartbeat_ms = heartbeat_ms
        self._reconnect = reconnect
        self._agent = agent
        self._single_stream: trio.abc.Stream | None = None
        self._stream_factory: StreamFactory | None = None
        if isinstance(stream, trio.abc.Stream):
            self._single_stream = stream
        else:
            self._stream_factory = stream
        self._stream_given = stream is not None
        self._max_backoff = max_backoff
        self._backoff_base = backoff_base
        self._connect_timeout = connect_timeout
        self._disconnect_timeout = disconnect_timeout
        self._ssl_context = ssl_context
        self._limits = limits
        self._send_limits = Limits()

        self._welcome: Welcome | None = None
        self._session: str | None = None
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._positions: dict[str, RoomPosition] = {}
        self._events_send, self._events_recv = trio.open_memory_channel[Event](event_buffer)
        self._inbox: RoomPosition | None = None
        """The last inbox entry processed (epoch, seq): what ``inbox_resume`` continues from."""
        self._inbox_attached = trio.Event()
        self._inbox_resyncs = 0
        self._ready_conn: _Connection | None = None
        self._ready_event = trio.Event()
        self._failure: ClientError | None = None
        self._close_frame: tuple[int, str] = (CloseCode.NORMAL, "")
        self._attempt_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._last_pong: Pong | None = None
        self._connections = 0
        self._events_delivered = 0
        self._duplicates = 0
        self._pings = 0
        self._resent = 0
        self._deliver = deliver
        self._delivery_want: dict[str, int] = {}
        """Per room, the newest chat number received: the delivered cursor to report."""
        self._delivery_acked: dict[str, int] = {}
        """Per room, the newest delivered cursor the server acknowledged."""
        self._delivery_ids: dict[int, tuple[str, int]] = {}
        """The ``delivered`` requests in flight (at most one per room), by request id."""
        self._delivery_wakeup = trio.Event()
        self._delivered_sent = 0
        self._moves = 0
        self._moving = False
        """A move's reconnection is under way: it waits no backoff."""

    def _set_address(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"a Roost URL is ws://HOST[:PORT]/ or wss://...; got {url!r}")
        self._url = url
        self._secure = parts.scheme == "wss"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._secure else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if parts.port is None else f"{host}:{self._port}"
        self._resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    # -- state ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The node this client connects to: the one it was opened with, or the one it last moved to."""
        return self._url

    @property
    def moves(self) -> int:
        """Times the client followed ``moved`` to another node of a cluster."""
        return self._moves

    @property
    def welcome(self) -> Welcome:
        """The latest ``welcome`` (replaced on each reconnect; ``resumed`` tells if the session survived)."""
        assert self._welcome is not None, "open_client yields the client after welcome"
        return self._welcome

    @property
    def user(self) -> str:
        """This connection's user id (the token's ``sub``)."""
        return self.welcome.user

    @property
    def sid(self) -> str:
        """The session id; it stays the same across reconnects that resume the session."""
        return self.welcome.sid

    @property
    def connected(self) -> bool:
        """Whether requests go out right now (false while reconnecting and once closed)."""
        return self._ready_conn is not None

    @property
    def close_error(self) -> ClientError | None:
        """Why the client ended, once it has (``ConnectionClosedError``, ``EventOverflow``...)."""
        return self._failure

    @property
    def rooms(self) -> dict[str, RoomPosition]:
        """The rooms this client follows and the last event processed in each: what it resumes."""
        return dict(self._positions)

    @property
    def last_pong(self) -> Pong | None:
        """The latest ``pong`` (its ``time`` is the server clock, to estimate offset and RTT)."""
        return self._last_pong

    def statistics(self) -> ClientStatistics:
        """Counters: connections, events delivered, duplicates dropped, pings, re-sent requests."""
        return ClientStatistics(
            connections=self._connections,
            events_delivered=self._events_delivered,
            duplicates_dropped=self._duplicates,
            pings_sent=self._pings,
            requests_resent=self._resent,
            pending_requests=len(self._pending),
            buffered_events=self._events_recv.statistics().current_buffer_used,
            inbox_resyncs=self._inbox_resyncs,
            delivered_sent=self._delivered_sent,
        )

    # -- events --------------------------------------------------------------------------------

    def events(self) -> _EventStream:
        """Iterate over room events (presence, chat, state, sync...), in order, without duplicates,
        and the user's inbox events (``InboxEvent``, ``InboxUnread``: no ``room`` field; PROTOCOL.md §16).

        The iteration ends when the client closes (a terminal close code or a local close); it
        raises :class:`EventOverflow` or :class:`ProtocolViolation` (after the buffered events) when
        events were lost. There is one stream per client: concurrent readers share it.

        ``receipts`` frames (the delivery status of this user's own messages, PROTOCOL.md §17) come
        in the same stream: they are not room events (no ``seq``), so nothing resumes them.
        """
        return _EventStream(self)

    async def next_event(self, kind: str | type[Event] | None = None) -> Event:
        """The next event, or the next one of ``kind`` (a ``t`` value such as ``"chat"``, or a frame
        class), **discarding** the events before it. Meant for tests and scripts.

        Raises:
            ConnectionClosedError: the client closed before such an event came (or another
                :class:`ClientError` explaining why it closed).
        """
        while True:
            event = await self._receive_event()
            if event is None:
                raise _fresh(self._failure or ConnectionClosedError(CloseCode.NORMAL, "closed"))
            if kind is None or (event.TYPE == kind if isinstance(kind, str) else isinstance(event, kind)):
                return event

    async def _receive_event(self) -> Event | None:
        try:
            return await self._events_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if isinstance(self._failure, (EventOverflow, ProtocolViolation)):
                raise _fresh(self._failure) from None
            return None

    # -- requests ------------------------------------------------------------------------------

    async def request(self, frame: ClientFrame | Mapping[str, Any]) -> Any:
        """Send any request and return its parsed result (a record where the protocol defines one).

        ``frame`` is a client frame whose ``id`` is replaced by a fresh one, or a map such as
        ``{"t": "join", "room": "r1"}`` without ``id``. Results are tracked like the typed helpers'
        (a ``join`` sent this way starts following the room).
        """
        if isinstance(frame, Mapping):
            frame = _frame_from_map(frame)
        return await self._call(frame)

    async def create(
        self,
        public: bool = False,
        max: int | None = None,
        meta: dict[str, Any] | None = None,
        logic: str | None = None,
        **fields: Any,
    ) -> RoomSnapshot:
        """Create a room and join it as host. ``fields`` passes further ``create`` fields through."""
        frame = Create(id=0, public=public, max=max, meta=meta, logic=logic, **fields)
        return cast(RoomSnapshot, await self._call(frame))

    async def join(self, room: str | None = None, code: str | None = None) -> RoomSnapshot:
        """Join a room by id or by code (exactly one); joining twice is harmless."""
        return cast(RoomSnapshot, await self._call(Join(id=0, room=room, code=code)))

    async def join_or_create(
        self,
        code: str,
        public: bool = False,
        max: int | None = None,
        meta: dict[str, Any] | None = None,
        logic: str | None = None,
        **fields: Any,
    ) -> RoomSnapshot:
        """Join the room with ``code``, creating it with the other fields if there is none."""
        frame = JoinOrCreate(id=0, code=code, public=public, max=max, meta=meta, logic=logic, **fields)
        return cast(RoomSnapshot, await self._call(frame))

    async def leave(self, room: str) -> None:
        """Leave a room for good (unlike a dropped connection); the client stops following it."""
        await self._call(Leave(id=0, room=room))

    async def lobby(self, cursor: str | None = None, limit: int | None = None) -> LobbyPage:
        """One page of public rooms; pass ``page.next`` as ``cursor`` for the next."""
        return cast(LobbyPage, await self._call(Lobby(id=0, cursor=cursor, limit=limit)))

    async def members(self, room: str, cursor: str | None = None, limit: int | None = None) -> MembersPage:
        """One page of a room's presence list (the snapshot holds the first)."""
        return cast(MembersPage, await self._call(Members(id=0, room=room, cursor=cursor, limit=limit)))

    async def set_presence(self, room: str, data: Any = None, status: Status | str | None = None) -> None:
        """Set one's custom presence data and/or status (``online``/``away``) in a room."""
        await self._call(PresenceSet(id=0, room=room, data=data, status=_enum_or_none(Status, status)))

    async def typing(self, room: str, on: bool) -> None:
        """Show or clear the typing indicator (it clears itself after a few seconds)."""
        await self._call(Typing(id=0, room=room, on=on))

    async def chat_send(
        self, room: str, text: str, meta: dict[str, Any] | None = None, cid: str | None = None
    ) -> ChatAck:
        """Post a chat message; the ack comes once the message is durable.

        ``cid`` (generated when absent) makes the send idempotent: if the connection drops before
        the ack, the client re-sends it with the same ``cid`` after reconnecting, and this call
        returns the final ack (``dup: true`` when the first attempt had gone through).
        """
        frame = ChatSend(id=0, room=room, cid=cid or uuid.uuid4().hex, text=text, meta=meta)
        return cast(ChatAck, await self._call(frame))

    async def chat_edit(self, room: str, msg_id: str, text: str) -> None:
        """Edit one of one's own messages."""
        await self._call(ChatEdit(id=0, room=room, msg=msg_id, text=text))

    async def chat_delete(self, room: str, msg_id: str) -> None:
        """Delete one's own message (the host may delete any); it stays as a tombstone."""
        await self._call(ChatDelete(id=0, room=room, msg=msg_id))

    async def history(self, room: str, before: int | None = None, limit: int | None = None) -> HistoryPage:
        """Page chat history backwards; pass ``page.next`` as ``before`` for the older page."""
        return cast(HistoryPage, await self._call(History(id=0, room=room, before=before, limit=limit)))

    async def read(self, room: str, n: int) -> None:
        """Move the read cursor forward to chat number ``n``."""
        await self._call(Read(id=0, room=room, n=n))

    async def delivered(self, room: str, n: int) -> None:
        """Move the delivered cursor forward to chat number ``n`` by hand. The client already does
        it by itself for every ``chat`` event it receives unless opened with ``deliver=False``."""
        await self._call(Delivered(id=0, room=room, n=n))

    async def chat_status(
        self, room: str, n: int, who: StatusList | str | None = None, cursor: str | None = None,
        limit: int | None = None,
    ) -> ChatStatusPage:
        """The delivery status of chat message ``n``: how many other members have it delivered and
        read; with ``who`` (``"delivered"`` or ``"read"``), one page of those members' ids too
        (pass ``page.next`` as ``cursor`` for the next). The author's own live view comes as
        ``receipts`` frames in :attr:`events`."""
        frame = ChatStatus(id=0, room=room, n=n, who=_enum_or_none(StatusList, who), cursor=cursor, limit=limit)
        return cast(ChatStatusPage, await self._call(frame))

    async def set_state(self, room: str, version: int, state: Any = None, phase: Phase | str | None = None) -> int:
        """Compare-and-set the game state (host only); returns the new version.

        Raises:
            RequestError: ``conflict`` when ``version`` is not the current one.
        """
        frame = StateSet(id=0, room=room, version=version, state=state, phase=_enum_or_none(Phase, phase))
        return cast(int, await self._call(frame))

    async def send(self, room: str, kind: str, body: Any = None) -> None:
        """Send a game message to the room's logic (relayed to members when it has none)."""
        await self._call(Send(id=0, room=room, kind=kind, body=body))

    async def kick(self, room: str, user: str) -> None:
        """Remove a member from the room (host only)."""
        await self._call(Kick(id=0, room=room, user=user))

    async def set_host(self, room: str, user: str) -> None:
        """Hand hosting over to another member (host only)."""
        await self._call(HostSet(id=0, room=room, user=user))

    async def admin(self, key: str, op: AdminOp | str, args: dict[str, Any] | None = None) -> Any:
        """Run an operator request with the service credential ``key``; the result depends on ``op``
        (``LobbyPage`` for ``rooms``, ``RoomSnapshot`` for ``room``, ``User`` for ``user_*``,
        ``UsersPage`` for ``users``, ``AuditPage`` for ``user_audit``, a map or ``None`` otherwise)."""
        return await self._call(AdminRequest(id=0, key=key, op=AdminOp(op), args=args))

    async def notify(self, key: str, user: str, kind: str, body: Any = None) -> dict[str, Any]:
        """Put an entry in ``user``'s inbox (admin ``notify``, service credential ``key``); returns its
        ``id``, ``epoch``, ``seq`` and ``ts`` once it is committed and delivered."""
        result: dict[str, Any] = await self.admin(key, AdminOp.NOTIFY, {"user": user, "kind": kind, "body": body})
        return result

    @property
    def inbox(self) -> RoomPosition | None:
        """The last inbox entry this client processed (None before its inbox is attached)."""
        return self._inbox

    async def inbox_ready(self) -> RoomPosition:
        """Wait until this connection's inbox is attached (right after each welcome: resumed from
        :attr:`inbox`, or from ``welcome.inbox`` on a first connection) and return the position."""
        while True:
            if self._failure is not None:
                raise _fresh(self._failure)
            attached = self._inbox_attached
            await attached.wait()
            if attached is self._inbox_attached and self._inbox is not None:
                return self._inbox

    async def inbox_read(self, n: int) -> dict[str, int]:
        """Move the inbox read cursor to entry ``n``; returns ``read`` and ``unread`` (every other
        session of the user gets an ``inbox_unread`` event)."""
        result: dict[str, int] = await self._call(InboxRead(id=0, n=n))
        return result

    async def inbox_history(self, before: int | None = None, limit: int | None = None) -> InboxPage:
        """A page of inbox entries with ``seq < before`` (the newest when None), oldest first."""
        return cast(InboxPage, await self._call(InboxHistory(id=0, before=before, limit=limit)))

    async def my_rooms(self, cursor: str | None = None, limit: int | None = None) -> MyRoomsPage:
        """A page of the rooms this user is a member of, with unread chat counts (``welcome.rooms``
        is the first page, ``welcome.rooms_next`` its cursor)."""
        return cast(MyRoomsPage, await self._call(MyRooms(id=0, cursor=cursor, limit=limit)))

    async def refresh(self, token: str) -> None:
        """Present a fresh token for the same user; later reconnects use it too."""
        await self._call(Refresh(id=0, token=token))
        self._token = token

    async def end(self) -> None:
        """End the session now (``bye``, PROTOCOL.md §17): the server removes this session from every
        room it is in at once (others see it leave with reason ``ended``, not after the reconnect
        grace), its session token no longer resumes, and it closes the connection with 1000. Then
        the client is closed, as by :meth:`aclose`. While reconnecting it waits (``disconnect_timeout``
        at most) for the connection; without one it just closes (the rooms then keep the grace)."""
        conn = self._ready_conn
        if conn is None and self._failure is None:
            with trio.move_on_after(self._disconnect_timeout), contextlib.suppress(ClientError):
                conn = await self._wait_ready()
        if conn is not None and self._failure is None:
            self._reconnect = False  # the server's 1000 ends the client even if a drop came first
            await conn.push(encode(Bye()))
            with trio.move_on_after(self._disconnect_timeout):
                await self._stopped.wait()  # the server's Close (1000) ends the supervisor
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (code 1000: not a leave, rooms keep the member for the grace period)
        and wait until the client's tasks are done. Idempotent."""
        self._shutdown(ConnectionClosedError(CloseCode.NORMAL, "closed by the client"))
        await self._stopped.wait()

    async def wait_closed(self) -> ClientError:
        """Wait until the client ends for good, and return why."""
        await self._stopped.wait()
        assert self._failure is not None
        return self._failure

    async def _call(self, frame: ClientFrame) -> Any:
        """Send one request and wait for its outcome; follow ``moved`` for a room request (below)."""
        moves = 0
        while True:
            try:
                return await self._call_once(frame)
            except RequestError as error:
                if error.code is not ErrorCode.MOVED or moves >= _MAX_MOVES or not self._move(frame, error):
                    raise
                moves += 1

    def _move(self, frame: ClientFrame, error: RequestError) -> bool:
        """Follow ``moved`` (PROTOCOL.md §8.1): reconnect to the room's node and send the request again.

        Only with no other request in flight: the move drops the connection, and a request the node
        already handled would be reported lost (a ``join_or_create`` that took a seat, say); the
        application gets ``moved`` and decides. Only to a host the client was given (``url``'s, or ``follow_hosts``), never from ``wss`` to
        ``ws``: the token goes to wherever the client connects, and the address comes from the
        cluster's directory, which a compromised Redis could fill. Only while the client is in no room: a connection serves the rooms
        of one node, so moving would drop the others (an app in rooms on several nodes opens a client
        per node, and gets the ``moved`` error with its ``url`` to do so). Only for the requests that
        place a client in a room, only with reconnection on and a transport the client opens itself.
        The session does not survive the move (sessions are a node's); there is nothing in it to keep.
        """
        if (not isinstance(frame, Create | Join | JoinOrCreate) or error.url is None or self._positions
                or not self._reconnect or self._stream_given
                or any(not isinstance(pending.frame, InboxResume) for pending in self._pending.values())):
            return False  # (another request in flight would be lost with the connection: raised instead;
            # the client's own inbox_resume is sent again by the next connection)
        try:
            parts = urllib.parse.urlsplit(error.url)
            hostname = (parts.hostname or "").lower()
        except ValueError:
            return False
        if (parts.scheme not in ("ws", "wss") or hostname not in self._follow_hosts
                or (self._opened_secure and parts.scheme != "wss")):
            log.warning("not following moved to %s: not a host this client was given, or not wss", error.url)
            return False
        try:
            self._set_address(error.url)
        except ValueError:
            return False
        self._moves += 1
        self._moving = True
        log.info("following the room to %s", error.url)
        conn, self._ready_conn = self._ready_conn, None
        if conn is not None:
            # Not ready from now on (the trap: the request sent again would otherwise take the old
            # connection, still "ready" until the supervisor sees it end, and be lost with it).
            if self._ready_event.is_set():
                self._ready_event = trio.Event()
            conn.abort(CloseCode.GOING_AWAY, "moved to the room's node")
        return True

    async def _call_once(self, frame: ClientFrame) -> Any:
        pending = self._prepare(frame, resend=isinstance(frame, ChatSend))
        conn = await self._wait_ready()
        # No checkpoint between _wait_ready's check and registering: either the request is in
        # _pending when the connection is declared lost, or it waits for the next connection.
        self._pending[pending.request_id] = pending
        try:
            await conn.push(pending.data)
            await pending.done.wait()
        finally:
            self._pending.pop(pending.request_id, None)
        return pending.outcome()

    def _prepare(self, frame: ClientFrame, *, resend: bool) -> _Pending:
        """Give the frame a fresh id and encode it, so a bad argument fails before anything waits."""
        if not any(f.name == "id" for f in dataclasses.fields(frame)):  # type: ignore[arg-type]
            raise TypeError(f"{frame.TYPE} is not a request (it has no id)")
        request_id = self._new_id()
        frame = dataclasses.replace(frame, id=request_id)  # type: ignore[type-var]
        return _Pending(frame, request_id, encode(frame, self._send_limits), resend=resend)

    def _new_id(self) -> int:
        self._next_id = self._next_id % _MAX_REQUEST_ID + 1
        # only after 2**32 requests, with one still waiting
        while self._next_id in self._pending or self._next_id in self._delivery_ids:
            self._next_id = self._next_id % _MAX_REQUEST_ID + 1
        return self._next_id

    async def _wait_ready(self) -> _Connection:
        while True:
            if self._failure is not None:
                raise _fresh(self._failure)
            if self._ready_conn is not None:
                return self._ready_conn
            await self._ready_event.wait()

    # -- frames from the server ----------------------------------------------------------------

    def _dispatch(self, frame: Frame) -> None:
        """Handle one server frame. Synchronous on purpose: the reader must never wait on the
        application, or trio-websocket's reader behind it stops answering pings and closes."""
        if isinstance(frame, RoomEvent):
            self._on_event(frame)
        elif isinstance(frame, InboxEvent | InboxUnread):
            self._on_inbox(frame)
        elif isinstance(frame, Ok):
            pending = self._pending.pop(frame.id, None)
            if pending is not None:
                self._settle_ok(pending, frame.result)
            elif frame.id in self._delivery_ids:
                room, n = self._delivery_ids.pop(frame.id)
                self._delivery_acked[room] = max(self._delivery_acked.get(room, 0), n)
                self._delivery_wakeup.set()  # the room's next cursor (the latest n) may go now
        elif isinstance(frame, ErrorReply):
            if frame.id is None:
                log.warning("server reported a connection-level error: %s %s", frame.code, frame.message)
                return
            pending = self._pending.pop(frame.id, None)
            if pending is not None:
                pending.fail(RequestError(frame.code, frame.message, frame.retry_ms, frame.id, frame.url))
            elif frame.id in self._delivery_ids:
                # Not retried now (a rate limit would loop): the room's next chat event sends the latest n.
                room, _n = self._delivery_ids.pop(frame.id)
                if frame.code in _FORGET_ON_RESUME:
                    self._delivery_want.pop(room, None)
        elif isinstance(frame, Receipts):
            self._hand_over(frame)
        elif isinstance(frame, Pong):
            self._last_pong = frame
        else:  # a second welcome
            self._violation(f"unexpected {frame.TYPE} frame after welcome")

    def _settle_ok(self, pending: _Pending, result: Any) -> None:
        frame = pending.frame
        try:
            value = self._parse_result(frame, result)
        except RemoteProtocolError as exc:
            error = ProtocolViolation(f"bad result for {frame.TYPE}: {exc}")
            error.__cause__ = exc
            pending.fail(error)
            return
        pending.succeed(value)

    def _parse_result(self, frame: ClientFrame, result: Any) -> Any:
        record_type = _RESULT_RECORDS.get(type(frame))
        if isinstance(frame, AdminRequest):
            record_type = _ADMIN_RECORDS.get(frame.op)
        if record_type is not None:
            record = load_record(record_type, result, self._limits)
            if isinstance(record, RoomSnapshot) and not isinstance(frame, AdminRequest):
                self._follow(record)
            elif isinstance(record, InboxResumeResult):
                if record.resync:  # what was missed is gone: continue from the head
                    self._inbox_resyncs += 1
                    self._inbox = RoomPosition(record.head.epoch, record.head.seq)
                elif self._inbox is None:
                    self._inbox = RoomPosition(record.head.epoch, record.head.seq - record.replayed)
            return record
        if isinstance(frame, StateSet):
            version = result.get("version") if type(result) is dict else None
            if type(version) is not int:
                raise RemoteProtocolError(ErrorCode.BAD_FIELD, "state_set result needs an integer version")
            return version
        if isinstance(frame, Leave):
            self._positions.pop(frame.room, None)
            self._delivery_want.pop(frame.room, None)
            self._delivery_acked.pop(frame.room, None)
        return result

    def _follow(self, snapshot: RoomSnapshot) -> None:
        """Start (or keep) following a room from a join/create snapshot. A newer position already
        reached through events of the same epoch wins: the snapshot is never ahead of them."""
        known = self._positions.get(snapshot.room)
        if known is None or known.epoch != snapshot.epoch or known.seq < snapshot.seq:
            self._positions[snapshot.room] = RoomPosition(snapshot.epoch, snapshot.seq)

    def _on_inbox(self, event: InboxEvent | InboxUnread) -> None:
        """An inbox entry (deduplicated by its position, like room events) or a read-cursor move."""
        if isinstance(event, InboxEvent):
            known = self._inbox
            if known is not None and known.epoch == event.epoch and event.seq <= known.seq:
                self._duplicates += 1
                return
            self._inbox = RoomPosition(event.epoch, event.seq)
        self._hand_over(event)

    def _on_event(self, event: RoomEvent) -> None:
        room: str = event.room  # type: ignore[attr-defined]
        if isinstance(event, Sync):
            self._positions[room] = RoomPosition(event.snapshot.epoch, event.snapshot.seq)
        else:
            epoch: int = event.epoch  # type: ignore[attr-defined]
            seq: int = event.seq  # type: ignore[attr-defined]
            known = self._positions.get(room)
            if known is not None and known.epoch == epoch and seq <= known.seq:
                self._duplicates += 1
                return
            # A new epoch is taken as is: the server sends the sync that comes with it.
            self._positions[room] = RoomPosition(epoch, seq)
            if isinstance(event, RoomClosed) or (isinstance(event, PresenceDiff) and self.user in event.leave):
                del self._positions[room]  # gone, or we were removed: nothing to resume
                self._delivery_want.pop(room, None)
                self._delivery_acked.pop(room, None)
            elif isinstance(event, ChatEvent) and self._deliver and event.msg.user != self.user:
                self._want_delivered(room, event.msg.n)
        self._hand_over(event)

    def _want_delivered(self, room: str, n: int) -> None:
        """Note that chat message ``n`` reached this device; the delivery task reports the latest
        number per room, one ``delivered`` in flight per room (a burst of events costs a frame or two)."""
        if n > self._delivery_want.get(room, 0):
            self._delivery_want[room] = n
            self._delivery_wakeup.set()

    async def _report_delivered(self, conn: _Connection) -> None:
        """The one task per connection that sends ``delivered`` cursors: for each room, the newest
        number received, when none is in flight there and it is past what the server acknowledged."""
        await conn.ready.wait()
        while True:
            await self._delivery_wakeup.wait()
            self._delivery_wakeup = trio.Event()
            busy = {room for room, _n in self._delivery_ids.values()}
            for room, n in list(self._delivery_want.items()):
                if room in busy or n <= self._delivery_acked.get(room, 0) or room not in self._positions:
                    continue
                request_id = self._new_id()
                self._delivery_ids[request_id] = (room, n)
                self._delivered_sent += 1
                await conn.push(encode(Delivered(id=request_id, room=room, n=n), self._send_limits))

    def _hand_over(self, event: Event) -> None:
        """Queue an event (or a ``receipts`` frame) for the application, never blocking the reader."""
        try:
            self._events_send.send_nowait(event)
        except trio.WouldBlock:
            buffer = self._events_recv.statistics().max_buffer_size
            error = EventOverflow(f"{buffer} events were buffered unread; the client closed")
            self._shutdown(error, (CloseCode.NORMAL, "event_buffer_full"))
            return
        except trio.ClosedResourceError:  # the application closed its side: nobody listens
            return
        self._events_delivered += 1

    def _violation(self, message: str, cause: BaseException | None = None) -> None:
        error = ProtocolViolation(message)
        error.__cause__ = cause
        self._shutdown(error, (CloseCode.PROTOCOL_ERROR, "bad_server_frame"))

    # -- lifecycle -----------------------------------------------------------------------------

    def _shutdown(self, error: ClientError, close: tuple[int, str] = (CloseCode.NORMAL, "")) -> None:
        """End the client for good: fail every waiter, end the event stream, stop the supervisor.

        Synchronous so the reader can call it; the supervisor then sends the Close frame
        (``close``: code and reason) under a bounded shielded scope, if the link is still open.
        """
        if self._failure is not None:
            return
        self._failure = error
        self._close_frame = close
        for pending in list(self._pending.values()):
            pending.fail(_fresh(error))
        self._pending.clear()
        self._ready_conn = None
        self._ready_event.set()  # waiters wake up and see the failure
        self._events_send.close()
        if self._attempt_scope is not None:
            self._attempt_scope.cancel()

    def _connection_lost(self) -> None:
        """The link dropped: in-flight requests fail with ConnectionLost, except those re-sent
        after the reconnect (chat_send, idempotent by cid)."""
        self._ready_conn = None
        if self._ready_event.is_set():
            self._ready_event = trio.Event()
        if self._inbox_attached.is_set():
            self._inbox_attached = trio.Event()
        self._delivery_ids.clear()  # their oks will not come: the next connection reports again
        self._delivery_wakeup.set()
        for request_id, pending in list(self._pending.items()):
            if not pending.resend:
                del self._pending[request_id]
                pending.fail(ConnectionLost(f"connection lost before the reply to {pending.frame.TYPE}"))

    def _set_ready(self, conn: _Connection) -> None:
        if conn.alive and self._failure is None:
            self._ready_conn = conn
            self._ready_event.set()
            conn.ready.set()

    def _can_reconnect(self, code: int) -> bool:
        reusable_transport = not self._stream_given or self._stream_factory is not None
        return self._reconnect and reusable_transport and may_reconnect(code)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: a restarted server is not hit by every client at once."""
        return random.uniform(0.0, min(self._max_backoff, self._backoff_base * 2 ** min(attempt, 32)))

    def _new_attempt_scope(self) -> trio.CancelScope:
        scope = trio.CancelScope()
        self._attempt_scope = scope
        if self._failure is not None:
            scope.cancel()
        return scope

    async def _supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, reconnect: the client's one long-running task.

        Errors before the first ``welcome`` come out of ``nursery.start`` (so ``open_client``
        raises them); after it they end the client instead of escaping into the caller's nursery.
        """
        attempt = 0
        started = False
        try:
            with self._events_send:
                while True:
                    ending = await self._connect_once(None if started else task_status)
                    if self._failure is not None:
                        return
                    assert ending is not None, "only _shutdown interrupts an attempt"
                    started = started or ending.welcomed
                    if not started:
                        error = ending.error or HandshakeError(ending.code, ending.reason)
                        if error.__cause__ is None:
                            error.__cause__ = ending.cause
                        self._shutdown(error)
                        raise error
                    if ending.error is not None or not self._can_reconnect(ending.code):
                        failure = ending.error
                        if failure is None:
                            kind = ConnectionClosedError if ending.welcomed else HandshakeError
                            failure = kind(ending.code, ending.reason)
                            failure.__cause__ = ending.cause
                        self._shutdown(failure)  # every waiter gets the terminal error
                        return
                    self._connection_lost()
                    attempt = 0 if ending.healthy else attempt + 1
                    delay = 0.0 if self._moving else self._backoff(attempt)  # a move is not a failure
                    self._moving = False
                    log.info("connection closed (%s %s); reconnecting in %.2f s", ending.code, ending.reason, delay)
                    with self._new_attempt_scope():
                        await trio.sleep(delay)
                    if self._failure is not None:
                        return
        finally:
            if self._failure is None:  # cancelled from outside
                self._shutdown(ConnectionClosedError(CloseCode.NORMAL, "client cancelled"))
            self._stopped.set()

    async def _open_stream(self) -> trio.abc.Stream:
        if self._stream_factory is not None:
            return await self._stream_factory()
        if self._single_stream is not None:
            stream, self._single_stream = self._single_stream, None
            return stream
        if self._secure:
            context = self._ssl_context or ssl.create_default_context()
            return await trio.open_ssl_over_tcp_stream(
                self._host, self._port, ssl_context=context, https_compatible=True
            )
        return await trio.open_tcp_stream(self._host, self._port)

    async def _connect_once(self, task_status: trio.TaskStatus[None] | None) -> _Ending | None:
        """One connection, from TCP connect to close. Returns how it ended (``None`` when the
        client was shut down meanwhile); never raises for network trouble: the supervisor decides
        between reconnecting and giving up."""
        stream: trio.abc.Stream | None = None
        with self._new_attempt_scope():
            try:
                with trio.fail_after(self._connect_timeout):
                    stream = await self._open_stream()
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                return _Ending(1006, f"cannot connect: {exc!r}"[:120], cause=exc)
        if stream is None:
            return None
        ending: _Ending | None = None
        try:
            # trio-websocket's reader runs in this nursery. _shutdown never cancels it, so the
            # close handshake can complete; once we are done, it is stopped (it may otherwise wait
            # for the server to close TCP).
            async with trio.open_nursery(strict_exception_groups=True) as ws_nursery:
                if self._failure is None:
                    ending = await self._run_websocket(ws_nursery, stream, task_status)
                ws_nursery.cancel_scope.cancel()
        except* trio_websocket.HandshakeError as group:  # HTTP rejection of the upgrade
            ending = _Ending(1006, f"websocket upgrade failed: {group.exceptions[0]!r}"[:120], cause=group)
        finally:
            with trio.move_on_after(self._disconnect_timeout, shield=True):
                await trio.aclose_forcefully(stream)
        return ending

    async def _run_websocket(
        self, ws_nursery: trio.Nursery, stream: trio.abc.Stream, task_status: trio.TaskStatus[None] | None
    ) -> _Ending | None:
        welcome: Welcome | None = None
        with self._new_attempt_scope():
            try:
                with trio.fail_after(self._connect_timeout):
                    ws = await trio_websocket.wrap_client_stream(
                        ws_nursery,
                        cast(trio.SocketStream, stream),  # any Stream works; the annotation is narrow
                        self._host_header,
                        self._resource,
                        max_message_size=self._limits.max_frame_bytes,
                        receive_buffer_size=None,
                    )
                    token, guest = None, None
                    if self._guest_key is not None:  # a fresh proof per attempt: each is single use
                        guest = sign_guest_proof(self._guest_key, aud=self._host_header, now=time.time(),
                                                 name=self._guest_name)
                    elif self._token is not None:
                        token = self._token if isinstance(self._token, str) else await self._token()
                    hello = Hello(
                        v=PROTOCOL_VERSION, token=token, hb=self._heartbeat_ms, session=self._session, agent=self._agent,
                        guest=guest,
                    )
                    await ws.send_message(encode(hello))
                    welcome = await self._receive_welcome(ws)
            except trio.TooSlowError as exc:
                return _Ending(1006, "timed out before welcome", cause=exc)
            except ConnectionClosed as exc:
                return _closed_ending(exc)
            except _Violation as exc:
                with trio.move_on_after(self._disconnect_timeout, shield=True):
                    await ws.aclose(CloseCode.PROTOCOL_ERROR, "bad_welcome")
                reason = str(exc)
                error = HandshakeError(CloseCode.PROTOCOL_ERROR, reason)
                return _Ending(CloseCode.PROTOCOL_ERROR, reason, error=error)
        if welcome is None:  # shut down during the handshake
            return None

        self._on_welcome(welcome)
        outbox, outbox_recv = trio.open_memory_channel[bytes](_OUTBOX_SIZE)
        conn = _Connection(ws, outbox, min(self._heartbeat_ms, welcome.hb) / 1000)
        conn.scope = self._new_attempt_scope()
        ending: _Ending | None = None
        try:
            with conn.scope, outbox, outbox_recv:
                async with trio.open_nursery(strict_exception_groups=True) as tasks:
                    tasks.start_soon(self._writer, conn, outbox_recv)
                    tasks.start_soon(self._heartbeat, conn)
                    tasks.start_soon(self._report_delivered, conn)
                    if task_status is not None:
                        conn.healthy = True
                        self._set_ready(conn)
                        if welcome.inbox is not None:
                            tasks.start_soon(self._attach_inbox, conn, welcome)
                        task_status.started()
                    else:
                        tasks.start_soon(self._resume, conn)
                    ending = await self._reader(conn)
                    tasks.cancel_scope.cancel()
        finally:
            conn.alive = False
            if self._ready_conn is conn:
                self._ready_conn = None
            if conn.aborted is None:  # a dead link gets no close handshake: it would only time out
                # Cancelled from outside (the effective deadline is -inf), trio-websocket's reader is
                # cancelled too and the server's Close reply would never be read: send ours, and do
                # not wait the whole disconnect timeout for the reply.
                outer_cancelled = trio.current_effective_deadline() == -math.inf
                bound = min(self._disconnect_timeout, 0.05) if outer_cancelled else self._disconnect_timeout
                code, reason = self._close_frame
                with trio.move_on_after(bound, shield=True):
                    await ws.aclose(code, reason)
        ending = ending or conn.aborted
        if ending is not None:
            ending.healthy = conn.healthy
        return ending

    async def _receive_welcome(self, ws: WebSocketConnection) -> Welcome:
        message = await ws.get_message()
        if isinstance(message, str):
            raise _Violation("text message before welcome")
        try:
            frame = decode(message, Sender.SERVER, self._limits)
        except RemoteProtocolError as exc:
            raise _Violation(f"undecodable first frame ({exc.code})") from exc
        if not isinstance(frame, Welcome):
            raise _Violation(f"expected welcome, got {frame.TYPE}")
        return frame

    def _on_welcome(self, welcome: Welcome) -> None:
        self._welcome = welcome
        self._session = welcome.session
        self._send_limits = _limits_from_welcome(welcome.limits)
        self._connections += 1

    async def _reader(self, conn: _Connection) -> _Ending:
        """Read and dispatch frames until the connection closes; drains trio-websocket promptly."""
        while True:
            try:
                message = await conn.ws.get_message()
            except ConnectionClosed as exc:
                ending = _closed_ending(exc)
                ending.welcomed = True
                return ending
            conn.last_received = trio.current_time()
            if isinstance(message, str):
                self._violation("text message from the server")
                continue  # the shutdown cancelled our scope: the next checkpoint ends the loop
            try:
                frame = decode(message, Sender.SERVER, self._limits)
            except RemoteProtocolError as exc:
                pending = self._pending.pop(exc.request_id, None) if exc.request_id is not None else None
                if pending is not None:  # a reply we cannot read fails its request only
                    error = ProtocolViolation(f"undecodable reply: {exc}")
                    error.__cause__ = exc
                    pending.fail(error)
                else:
                    self._violation(f"undecodable server frame: {exc}", exc)
                continue
            self._dispatch(frame)

    async def _writer(self, conn: _Connection, outbox_recv: trio.MemoryReceiveChannel[bytes]) -> None:
        """The only task writing to the socket, so a cancelled requester never leaves half a
        WebSocket frame on the wire."""
        async for data in outbox_recv:
            try:
                await conn.ws.send_message(data)
            except ConnectionClosed:
                return  # the reader sees the close and ends the connection
            conn.last_sent = trio.current_time()

    async def _heartbeat(self, conn: _Connection) -> None:
        """Ping when nothing was sent for one interval; abort the link when the server is silent."""
        ping = encode(Ping())
        last_ping = -math.inf
        while True:
            now = trio.current_time()
            if now - conn.last_received >= conn.silence_limit:
                conn.abort(1006, f"server silent for {conn.silence_limit:g} s")
                return
            due = max(conn.last_sent, last_ping) + conn.interval
            if now >= due:
                last_ping = now
                self._pings += 1
                await conn.push(ping)
                continue
            await trio.sleep_until(min(due, conn.last_received + conn.silence_limit))

    async def _resume(self, conn: _Connection) -> None:
        """After a reconnect: resume every followed room, re-send in-flight chat_sends, then let
        new requests through. Order matters: the replay must precede anything we send next."""
        resumes: list[tuple[str, _Pending]] = []
        welcome = self._welcome
        if welcome is not None and welcome.inbox is not None:
            resumes.append(("", await self._push_inbox_resume(conn, welcome)))
        for room, position in list(self._positions.items()):
            pending = self._prepare(Resume(id=0, room=room, epoch=position.epoch, seq=position.seq), resend=False)
            self._pending[pending.request_id] = pending
            resumes.append((room, pending))
            await conn.push(pending.data)
        for pending in [p for p in self._pending.values() if p.resend]:
            self._resent += 1
            await conn.push(pending.data)
        self._set_ready(conn)
        for room, pending in resumes:
            await pending.done.wait()
            if not room:  # the inbox: a refusal costs its live entries, never the connection
                if pending.error is None:
                    self._inbox_attached.set()
                elif isinstance(pending.error, RequestError):
                    log.warning("inbox_resume failed: %s", pending.error)
                else:
                    return
                continue
            if isinstance(pending.error, RequestError):
                if pending.error.code in _FORGET_ON_RESUME:
                    log.info("no longer a member of room %s; stopped following it", room)
                    self._positions.pop(room, None)
                    continue
                conn.abort(1006, f"resume failed: {pending.error.wire_code}")
                return
            if pending.error is not None:  # ConnectionLost: this connection is ending anyway
                return
        conn.healthy = True


    async def _push_inbox_resume(self, conn: _Connection, welcome: Welcome) -> _Pending:
        """Send ``inbox_resume`` from the last entry processed (a first connection: from the head
        ``welcome`` gave: entries before it are history, paged with ``inbox_history``)."""
        assert welcome.inbox is not None
        position = self._inbox or RoomPosition(welcome.inbox.epoch, welcome.inbox.seq)
        pending = self._prepare(InboxResume(id=0, epoch=position.epoch, seq=position.seq), resend=False)
        self._pending[pending.request_id] = pending
        await conn.push(pending.data)
        return pending

    async def _attach_inbox(self, conn: _Connection, welcome: Welcome) -> None:
        """First connection: attach the inbox beside the application's first requests."""
        pending = await self._push_inbox_resume(conn, welcome)
        await pending.done.wait()
        if pending.error is None:
            self._inbox_attached.set()
        elif isinstance(pending.error, RequestError):  # refused; a link that ended (closing, moving) is not news
            log.warning("inbox_resume failed: %s", pending.error)


def _closed_ending(exc: ConnectionClosed) -> _Ending:
    reason = exc.reason
    if reason is None:
        return _Ending(1006, "connection lost")
    return _Ending(reason.code, reason.reason or "")


def _enum_or_none(enum_type: type[Any], value: Any) -> Any:
    return None if value is None else enum_type(value)


def _frame_from_map(raw: Mapping[str, Any]) -> ClientFrame:
    frame_type = raw.get("t")
    cls = CLIENT_FRAMES.get(frame_type) if isinstance(frame_type, str) else None
    if cls is None:
        raise ValueError(f"not a client frame type: {frame_type!r}")
    fields = {key: value for key, value in raw.items() if key not in ("t", "id")}
    return cast(ClientFrame, cast(Any, cls)(id=0, **fields))


@contextlib.asynccontextmanager
async def open_client(
    url: str,
    token: str | TokenSource | None = None,
    *,
    guest_key: SigningKey | None = None,
    guest_name: str | None = None,
    heartbeat_ms: int = 10_000,
    reconnect: bool = True,
    agent: str | None = None,
    stream: trio.abc.Stream | StreamFactory | None = None,
    max_backoff: float = 10.0,
    backoff_base: float = 0.25,
    event_buffer: int = 1024,
    connect_timeout: float = 10.0,
    disconnect_timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits = SERVER_LIMITS,
    deliver: bool = True,
    follow_hosts: Collection[str] = (),
) -> AsyncIterator[Client]:
    """Connect to a Roost server and yield a :class:`Client` once it is welcomed.

    Args:
        url: ``ws://host:port/`` or ``wss://...``. With ``stream``, only its host and path are used
            (for the upgrade request).
        token: the user token, sent in ``hello`` (not in the URL, where proxies log it), or an async
            callable returning a fresh one for each connection attempt.
        guest_key: instead of a token, the device's own Ed25519 key: each attempt sends a fresh
            guest proof for the URL's host (PROTOCOL.md §9.3), where the server allows guests.
            Keep the key: it is the device's identity (the same key signs in as the same user).
        guest_name: the display name a new guest user gets.
        heartbeat_ms: the interval announced in ``hello``; the client pings after that long
            without sending anything (at the server's ``welcome.hb`` if that is shorter).
        reconnect: reconnect after a close whose code allows it (``may_reconnect``) or a drop.
        agent: a short client description for the server's logs.
        stream: a ready byte stream to speak WebSocket over instead of dialling ``url`` (tests use
            one end of ``trio.testing.memory_stream_pair()``), or an async factory of such streams,
            called for each attempt. A single stream cannot be reopened, so with one the client
            does not reconnect.
        max_backoff: cap of the reconnect delay (s); the delay is uniform in
            ``[0, min(max_backoff, backoff_base * 2**attempt)]`` (full jitter).
        event_buffer: room events held for the application; when it overflows the client closes
            with :class:`EventOverflow` instead of blocking its reader (see the module docstring).
        connect_timeout / disconnect_timeout: bounds on connecting up to ``welcome`` and on the
            close handshake (trio-websocket's own defaults are 60 s).
        deliver: report the delivered cursor by itself (``delivered``, PROTOCOL.md §17) for every
            room's ``chat`` events of others: coalesced, the latest number, one in flight per room.
        follow_hosts: hosts besides ``url``'s that a cluster's ``moved`` may send the client to (its
            other nodes). A ``moved`` elsewhere, or from ``wss`` to ``ws``, is raised as the
            ``RequestError`` instead of followed: following sends the token to that host.

    Raises:
        HandshakeError: the first connection ended before ``welcome`` (bad token: 4500, expired:
            4002, ...; 1006 when the server could not be reached).

    The client's tasks run in a strict nursery: an exception raised by the ``async with`` body
    comes out wrapped in an ``ExceptionGroup`` (use ``except*``). On exit the client closes with
    1000, which does not leave rooms (``leave`` does).
    """
    client = Client(
        url,
        token,
        guest_key=guest_key,
        guest_name=guest_name,
        heartbeat_ms=heartbeat_ms,
        reconnect=reconnect,
        agent=agent,
        stream=stream,
        max_backoff=max_backoff,
        backoff_base=backoff_base,
        event_buffer=event_buffer,
        connect_timeout=connect_timeout,
        disconnect_timeout=disconnect_timeout,
        ssl_context=ssl_context,
        limits=limits,
        deliver=deliver,
        follow_hosts=follow_hosts,
    )
    handshake_error: HandshakeError | None = None
    with client._events_recv:
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            try:
                await nursery.start(client._supervise)
            except HandshakeError as exc:
                handshake_error = exc
            else:
                try:
                    yield client
                finally:
                    # Close before the nursery sees an exception from the body and cancels the
                    # connection's tasks: the close handshake needs them. Bounded and shielded.
                    with trio.move_on_after(disconnect_timeout + 1.0, shield=True):
                        await client.aclose()
    if handshake_error is not None:
        raise handshake_error


async def start_client(nursery: trio.Nursery, url: str, token: str | TokenSource | None = None,
                       **options: Any) -> Client:
    """Open a client that lives in a task of ``nursery`` and return it once it is welcomed.

    A client holds a nursery of its own, which must be entered and left by one task; running it in a
    task of its own lets a test or an app hand the client around freely. It closes when ``nursery``
    is cancelled. ``options`` are those of :func:`open_client`; ``disconnect_timeout`` defaults to
    0.25 s here, as the other end is often gone already when such a nursery is cancelled.
    """
    options.setdefault("disconnect_timeout", 0.25)

    async def run(task_status: trio.TaskStatus[Client]) -> None:
        async with open_client(url, token, **options) as client:
            task_status.started(client)
            await trio.sleep_forever()

    client: Client = await nursery.start(run)
    return client
