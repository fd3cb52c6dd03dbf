"""One client connection: Roost on the WebSocket layer (engine/websocket.py): auth, limits, routing.

One state machine, two drivers. :meth:`Connection.feed` takes the bytes the peer sent and runs
everything that needs no await (WebSocket layer, auth, rate limit, decode, hand-off to a room with
``send_nowait``); when a request must await (an admin call, a room being created, a full room inbox,
an HTTP exchange) it returns that step, and the driver runs it, then :meth:`Connection.resume` goes on
with the bytes already received, so a connection's requests keep their order.

- On Linux, socket connections are driven by the gateway's one reader task (engine/reader.py): one
  inner epoll over every socket, one heap of deadlines, no task per idle connection.
- Other transports (in-memory streams: roost.testing, embedding) and other systems run
  :meth:`Connection.serve`: three tasks in its own nursery (this reader, the outbox writer, a watchdog
  holding every per-connection deadline: auth, heartbeat, token expiry, closing).

Everything that can go wrong with one connection ends that connection (with the right close code) and
nothing else: the gateway wraps each connection in its own error boundary.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import secrets
import urllib.parse
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Any

import trio
from wsproto.events import RejectConnection
from wsproto.events import Request as HandshakeRequest

from roost.protocol.codec import SERVER_LIMITS, Sender, decode, dump_record, encode
from roost.protocol.errors import CloseCode, ErrorCode, LocalProtocolError, RemoteProtocolError
from roost.protocol.frames import (
    PROTOCOL_VERSION,
    AdminRequest,
    Bye,
    ClientFrame,
    Create,
    ErrorReply,
    Hello,
    InboxHistory,
    InboxRead,
    InboxResume,
    Join,
    JoinOrCreate,
    Lobby,
    MyRooms,
    Ok,
    Pong,
    Refresh,
    ServerFrame,
    Welcome,
)
from roost.protocol.frames import (
    Ping as PingFrame,
)
from roost.protocol.tokens import (
    GUEST_PREFIX,
    Claims,
    SessionClaims,
    TokenError,
    TokenMalformed,
    unverified_kid,
    verify,
)

from .codes import normalize_code
from .errors import RoomError
from .http import Availability, HttpError, HttpResponse, RequestReader, render
from .outbox import Outbox, Transport, ws_frame
from .peer import Peer
from .room import Request, RoomRuntime
from .state import RoomOptions
from .websocket import WebSocket, WsState

if TYPE_CHECKING:
    from .gateway import Gateway
    from .reader import Reader

__all__ = ["Connection"]

log = logging.getLogger("roost.connection")

_CLOSE_KINDS = {int(code): code.name.lower() for code in CloseCode} | {1005: "no_status"}
"""The ``reason`` word of the connection-closed log line, by close code."""

_BAD_FRAME_WINDOW = 60.0
_LINGER_SECONDS = 1.0
"""After the closing handshake (or a failure), how long TCP waits for the peer's FIN (§7.1.1)."""
_LINGER_BYTES = 1024 * 1024
"""... and how many bytes it discards meanwhile (a peer in the middle of a large frame)."""

_NO_MESSAGES: Iterator[bytes | str] = iter(())

Step = Awaitable[None]
"""What :meth:`Connection.feed` returns when the connection must await before reading on."""


class _ReservedSub(TokenMalformed):
    """A user token whose ``sub`` starts with the guest prefix (``~``): refused like a malformed one."""

    reason = "reserved_sub"


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    HTTP = "http"
    """A plain HTTP request (engine/http.py): one exchange within the auth deadline, then close."""
    AWAIT_HELLO = "await_hello"
    OPEN = "open"
    CLOSING = "closing"
    DONE = "done"


_AWAIT_HELLO, _OPEN, _CLOSING, _DONE, _HTTP = Phase.AWAIT_HELLO, Phase.OPEN, Phase.CLOSING, Phase.DONE, Phase.HTTP
_WS_CLOSED, _WS_HTTP = WsState.CLOSED, WsState.HTTP
_CLIENT = Sender.CLIENT
"""Module globals for the members the per-message path compares with: in CPython 3.11 every
attribute read on an Enum class (``Phase.OPEN``) goes through ``EnumType.__getattr__``'s slow hook,
~200 ns against ~17 for a global, and a chat message read nine of them (1.8 µs; callgrind:
``slot_tp_getattr_hook`` was 4.3 % of a message's instructions)."""


class Connection(Peer):
    """The server side of one client connection."""

    def __init__(self, gateway: Gateway, transport: Transport, remote: str, *, reader: Reader | None = None,
                 shared: bool = False) -> None:
        config = gateway.config
        self.gateway = gateway
        self.config = config
        self.remote = remote
        self.shared = shared
        """Came in through the port the workers of a node share (``roost serve --workers``): its room
        requests are all answered ``moved`` to the worker that serves the room (this one included), so
        that members always use their room's worker's own port, which a reconnect reaches again."""
        self.transport = transport
        self.reader = reader
        """The gateway's reader task when it drives this connection (None: :meth:`serve` does)."""
        self.outbox = Outbox(
            transport, max_frames=config.outbox_max_frames, max_bytes=config.outbox_max_bytes,
            on_overflow=self._slow_consumer, spawn=None if reader is None else reader.spawn,
        )
        self.push = self.outbox.push  # type: ignore[method-assign]
        """:meth:`Peer.push` is the outbox's own: a room's broadcast calls it per member, and the
        method below would be one more Python frame per delivery (~10 % of a push)."""
        self.websocket = WebSocket(self.outbox, max_message_bytes=config.max_frame_bytes, accept=self._accept,
                                   on_ping=self._websocket_ping, http=True)
        """The WebSocket layer (upgrade, pings, limits, closing handshake); this class speaks Roost on it."""
        self.phase = Phase.HANDSHAKE
        self.sid = ""
        self.user = ""
        self.name = ""
        self.room_scope: str | None = None
        self.role: str | None = None
        self.claims: Claims | None = None
        self.rooms: set[str] = set()
        self.registered = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by: str | None = None
        """Who started the close: ``server`` or ``client`` (None: TCP ended without a Close)."""
        self._reader_scope: trio.CancelScope | None = None
        self._reader_done = False
        self._watchdog_wakeup: trio.Event | None = None
        self._messages = _NO_MESSAGES
        """What is left of the last chunk's messages while a step is awaited (see :meth:`resume`)."""
        self.armed = math.inf
        """The reader's heap holds an entry for this connection at this time (lazy: see engine/reader.py)."""
        self.parked: trio.CancelScope | bool | None = None
        """Reader-driven only: None while read; while a step is awaited in its own task, that task's
        scope (cancelled when the connection must end meanwhile); False once it is winding down."""
        self._query_token: str | None = None
        self._host: str | None = None
        """The upgrade's ``Host`` header: the audience of guest proofs unless ``guest_audience`` is set."""
        self._http: RequestReader | None = None
        """While a plain HTTP request is being read (None once it is complete)."""
        now = trio.current_time()
        self._started = now
        self._auth_deadline = now + config.auth_timeout
        self._close_deadline = math.inf
        self._heartbeat = config.heartbeat_default_ms / 1000
        self._last_heard = now
        self._fed_at = now
        self._token_deadline = math.inf
        self._tokens = float(config.burst)
        self._tokens_at = now
        self._over_since: float | None = None
        self._last_refused = -math.inf
        self._bad_frames: collections.deque[float] | None = None
        """When the last bad frames came (made at the first one: most connections never send one)."""
        self.requests = 0

    # -- Peer -------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.phase is Phase.OPEN

    @property
    def last_heard_ms(self) -> int:
        # _last_heard is on the Trio clock (set per receive, no syscall); map it onto the wall clock.
        return int((self.config.wall_clock() - (trio.current_time() - self._last_heard)) * 1000)

    def push(self, data: bytes) -> None:  # shadowed per instance by the outbox's (see __init__)
        self.outbox.push(data)

    def close(self, code: CloseCode, reason: str) -> None:
        """Send a Close frame (once) and give the peer ``close_timeout`` to answer it.

        An HTTP exchange is left to finish within its own deadline (a shutdown must not cut an
        admin call off between its effect and its answer).
        """
        if self.phase in (Phase.CLOSING, Phase.DONE, Phase.HTTP):
            return
        self.close_code, self.close_reason, self.closed_by = int(code), reason, "server"
        if not self.websocket.close(int(code), reason):
            self.phase = Phase.DONE  # no WebSocket yet: nothing to say, just drop TCP
            self._stop_reading()
            return
        self.phase = Phase.CLOSING
        self._close_deadline = trio.current_time() + self.config.close_timeout
        self._rearm_watchdog()
        log.debug("closing %s user=%s code=%d reason=%s", self.remote, self.user or "-", int(code), reason)

    def _websocket_closed(self) -> None:
        """The WebSocket layer ended the connection itself: failed it, or answered the peer's Close."""
        websocket = self.websocket
        if self.phase is not Phase.CLOSING and websocket.close_code is not None:
            self.close_code, self.close_reason = websocket.close_code, websocket.close_reason
            self.closed_by = "server" if websocket.peer_code is None else "client"
            if websocket.peer_code is None:
                log.debug("failing %s user=%s code=%d reason=%s", self.remote, self.user or "-",
                         websocket.close_code, websocket.close_reason)
        self.phase = Phase.DONE

    def _slow_consumer(self) -> None:
        """The outbox overflowed. It has dropped the frames never begun and refuses new ones, so the
        Close goes right behind the frame being sent (its bounds keep room for it)."""
        self.gateway.stats["slow_consumers"] += 1
        self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def send_frame(self, frame: ServerFrame) -> None:
        """Encode, frame and push one server frame."""
        self.outbox.push(ws_frame(encode(frame, SERVER_LIMITS)))

    # -- main loop --------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection to its end in its own tasks (the task-per-connection driver: any
        transport). Never raises for anything the peer does."""
        self._reader_scope = trio.CancelScope()
        self._watchdog_wakeup = trio.Event()
        try:
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                nursery.start_soon(self.outbox.run_writer)
                nursery.start_soon(self._watchdog)
                with self._reader_scope:
                    try:
                        await self._read_loop()
                    except Exception:
                        self.failed()
                self._reader_done = True
                self._rearm_watchdog()
                self._end_sessions()
                # Let the writer flush what is queued (the Close frame at least), within a bound.
                self.outbox.finish()
                nursery.cancel_scope.deadline = self._flush_deadline()
            await self._linger()
        finally:
            await self._closed()

    async def wind_down(self) -> None:
        """The end of a reader-driven connection, in a short task of its own: flush what is queued
        (the Close frame at least) within the close bound, linger, close, log. Never raises for
        anything the peer does."""
        try:
            self._end_sessions()
            self.outbox.finish()
            with trio.move_on_at(self._flush_deadline()):
                await self.outbox.flush()
            await self._linger()
        finally:
            await self._closed()

    def failed(self) -> None:
        """Our own bug while handling this connection's bytes: log it, close 1011 (this one only)."""
        log.exception("connection %s failed", self.remote)
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    @property
    def ended(self) -> bool:
        """Nothing more is read: the connection is done, or its socket broke under a write."""
        return self.phase is _DONE or self.outbox.broken

    def _flush_deadline(self) -> float:
        return min(self._close_deadline, trio.current_time() + self.config.close_timeout)

    async def _linger(self) -> None:
        finished = self.websocket.state in (WsState.CLOSED, WsState.HTTP)
        if finished and self.outbox.idle and not self.outbox.broken:
            # Our last bytes (a Close, an HTTP answer) are flushed: make sure they arrive.
            await self.transport.linger_close(_LINGER_SECONDS, _LINGER_BYTES)

    async def _closed(self) -> None:
        self.phase = Phase.DONE
        self._end_sessions()
        with trio.move_on_after(1, shield=True):
            await self.transport.aclose()
        self._log_closed()

    def _log_closed(self) -> None:
        """The one line per connection (engine/logs.py formats it). ``reason`` is a stable word: the
        close code's name (``heartbeat_timeout``, ``slow_consumer``...; ``other`` for a code of the
        peer's own), ``no_close`` when TCP ended without a Close. A connection that never had a
        session nor a Close (an HTTP request, a refused upgrade, a port scan) logs at debug only."""
        code = self.close_code
        reason = "no_close" if code is None else _CLOSE_KINDS.get(code, "other")
        level = logging.INFO if self.sid or code is not None else logging.DEBUG
        log.log(level, "connection closed", extra={
            "remote": self.remote, "user": self.user or None, "sid": self.sid or None,
            "duration": trio.current_time() - self._started, "code": code, "by": self.closed_by, "reason": reason,
        })

    def _deadline(self) -> float:
        if self.phase in (Phase.HANDSHAKE, Phase.AWAIT_HELLO, Phase.HTTP):
            return self._auth_deadline
        if self.phase is Phase.CLOSING:
            return self._close_deadline
        return min(self._last_heard + self._heartbeat * self.config.heartbeat_factor, self._token_deadline)

    def _rearm_watchdog(self) -> None:
        """The deadline may have moved earlier: re-arm the driver's timer for it."""
        if self.reader is not None:
            self.reader.arm(self, self._deadline())
        elif self._watchdog_wakeup is not None:
            self._watchdog_wakeup.set()

    def _stop_reading(self) -> None:
        """The connection is DONE: stop its driver reading (it winds the connection down)."""
        if self.reader is not None:
            self.reader.end(self)
        elif self._reader_scope is not None:
            self._reader_scope.cancel()

    async def _watchdog(self) -> None:
        """The connection's one timer: auth deadline, heartbeat expiry, token expiry, close deadline.

        Lazy: the reader only records when it last heard from the peer (no timer work per frame); when
        the armed deadline passes, the watchdog recomputes it and sleeps again unless it has really
        expired. ``close()`` wakes it because it moves the deadline earlier.
        """
        while not self._reader_done:
            assert self._watchdog_wakeup is not None
            with trio.move_on_at(self._deadline()):
                await self._watchdog_wakeup.wait()
                self._watchdog_wakeup = trio.Event()
                continue
            if self._reader_done or trio.current_time() < self._deadline():
                continue
            self._on_deadline()
            if self.phase is Phase.DONE:
                self._stop_reading()
                return

    async def _read_loop(self) -> None:
        while not self.ended:
            data = await self.transport.receive_some()
            if not data:
                return
            step = self.feed(data)
            while step is not None:
                await step
                step = self.resume()

    def feed(self, data: bytes, now: float | None = None) -> Step | None:
        """Handle ``data`` from the peer as far as it goes without awaiting.

        Returns None when every message in it is handled; else the step to await first (a request
        that waits for an admin call, a room's creation, a full room inbox, or an HTTP exchange), then
        call :meth:`resume` (and again for each step it returns) before feeding more bytes. Stop
        feeding once :attr:`ended`. Both drivers call this: the rules live here once. ``now`` is the
        Trio clock when the caller has read it already (the reader, once per pass for every socket).
        """
        self._fed_at = now = trio.current_time() if now is None else now
        if self.phase is not _CLOSING:  # the answer to our Close is not activity (last_seen)
            self._last_heard = now
        self._messages = self.websocket.receive(data)
        return self.resume()

    def resume(self) -> Step | None:
        """Go on with the messages already received (after a step of :meth:`feed`); same contract."""
        websocket = self.websocket
        if self.phase is _DONE:
            return None
        for message in self._messages:
            if isinstance(message, str):
                websocket.fail(CloseCode.UNSUPPORTED_DATA, "binary frames only")
            else:
                step = self._on_frame(message)
                if step is not None:
                    return step  # the rest waits, unparsed, in the generator
            if self.phase is _DONE:
                return None
        self._messages = _NO_MESSAGES
        state = websocket.state
        if state is _WS_CLOSED:
            self._websocket_closed()
        elif state is _WS_HTTP and self.phase is not _HTTP:
            return self._http_exchange(websocket.http_bytes)
        return None

    async def _http_exchange(self, data: bytes) -> None:
        await self._serve_http(data)
        self.phase = Phase.DONE  # one request per connection (also when the peer left mid-request)

    def _on_deadline(self) -> None:
        now = trio.current_time()
        if self.phase is Phase.CLOSING:
            self.phase = Phase.DONE
        elif self.phase is Phase.HTTP:
            if self._http is not None:  # the request is still incomplete: nothing has happened
                self.outbox.push_final(render(HttpResponse.error(408, ErrorCode.MALFORMED, "request timeout"),
                                              head_only=self._http.head_only))
            # else the request is being served: an answer now could contradict its effect; just close
            self.phase = Phase.DONE
        elif self.phase in (Phase.HANDSHAKE, Phase.AWAIT_HELLO):
            self.gateway.stats["auth_timeouts"] += 1
            self.gateway.auth_failures["timeout"] += 1
            self.close(CloseCode.AUTH_TIMEOUT, "auth timeout")
        elif now >= self._token_deadline:
            self.close(CloseCode.TOKEN_EXPIRED, "token expired")
        else:
            self.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")

    def _accept(self, request: HandshakeRequest) -> RejectConnection | None:
        """The upgrade hook: refuse (503) over the pending-handshake cap or while the engine is not
        serving (restoring rooms, draining), else note a query token."""
        gateway = self.gateway
        over_cap = gateway.pending_handshakes > self.config.max_pending_handshakes
        if over_cap or gateway.availability is not Availability.SERVING:
            gateway.stats["handshakes_refused"] += 1
            return RejectConnection(status_code=503, headers=[(b"retry-after", b"1")])
        query = urllib.parse.urlsplit(request.target).query
        tokens = urllib.parse.parse_qs(query).get("token")
        self._query_token = tokens[0] if tokens else None
        self._host = request.host
        self.phase = Phase.AWAIT_HELLO
        return None

    async def _serve_http(self, data: bytes) -> None:
        """Read, serve and answer one plain HTTP request (engine/http.py); the caller then closes.

        Bounded like the upgrade: the head within MAX_REQUEST_HEAD (the WebSocket layer), one slot of
        the pending-handshake cap, the auth deadline for the whole exchange (408 while the request is
        incomplete), the body within ``max_http_body_bytes``.
        """
        gateway = self.gateway
        self.phase = Phase.HTTP
        reader = self._http = RequestReader(max_body=self.config.max_http_body_bytes)
        try:
            request = reader.receive(data)
            if gateway.pending_handshakes > self.config.max_pending_handshakes:
                gateway.stats["handshakes_refused"] += 1
                response = HttpResponse.error(503, ErrorCode.RATE_LIMITED, "too many connections", ("retry-after", "1"))
            else:
                while request is None:
                    if reader.interim:
                        self.outbox.push(reader.interim)
                        reader.interim = b""
                    data = await self.transport.receive_some()
                    if not data:
                        return
                    request = reader.receive(data)
                self._http = None
                try:
                    response = await gateway.http.respond(request, self.remote)
                except Exception:  # our bug: answer it as one (the WebSocket path closes with 1011)
                    log.exception("HTTP %s %s from %s failed", request.method, request.path, self.remote)
                    response = HttpResponse.error(500, ErrorCode.INTERNAL, "internal error")
        except HttpError as error:
            response = error.response
        self._http = None
        self.outbox.push_final(render(response, head_only=reader.head_only))
        self.phase = Phase.DONE

    # -- frames -----------------------------------------------------------------------------------

    def _on_frame(self, data: bytes) -> Step | None:
        phase = self.phase
        if phase is _AWAIT_HELLO:
            try:
                frame = decode(data, Sender.CLIENT, self.config.limits)
            except RemoteProtocolError:
                self.gateway.auth_failures["bad_hello"] += 1
                self.close(CloseCode.BAD_FRAME, "bad first frame")
                return None
            if not isinstance(frame, Hello):
                self.gateway.auth_failures["bad_hello"] += 1
                self.close(CloseCode.BAD_FRAME, "first frame must be hello")
                return None
            if frame.guest is not None and frame.v == PROTOCOL_VERSION and self._query_token is None:
                return self._guest_sign_in(frame)  # a directory write: awaited, the connection parked
            return self._authenticate(frame)
        if phase is not _OPEN:
            return None
        self.requests += 1
        try:
            frame = decode(data, _CLIENT, self.config.limits)
        except RemoteProtocolError as error:
            self._bad_frame(error)
            return None
        assert isinstance(frame, ClientFrame)  # decode(..., Sender.CLIENT) returns client frames only
        self.gateway.requests[frame.TYPE] += 1
        if not self._take_token(frame):
            return None
        try:
            step = self._dispatch(frame)
        except (RoomError, LocalProtocolError) as error:
            self._refuse(frame, error)
            return None
        return None if step is None else self._awaited(frame, step)

    async def _guest_sign_in(self, hello: Hello) -> None:
        claims = await self.gateway.guests.sign_in(self, hello, self._host)
        if claims is not None and self.phase is Phase.AWAIT_HELLO:  # the deadline may have passed
            step = self._authenticate(hello, claims)
            if step is not None:
                await step

    async def _awaited(self, frame: ClientFrame, step: Step) -> None:
        try:
            await step
        except (RoomError, LocalProtocolError) as error:
            self._refuse(frame, error)

    def _refuse(self, frame: ClientFrame, error: RoomError | LocalProtocolError) -> None:
        if isinstance(error, RoomError):
            self.send_error(getattr(frame, "id", None), error.code, error.message, error.retry_ms, error.url)
        else:
            # A reply this server cannot encode (a page or record over the server limits) is its own
            # fault, not the caller's: refuse this one request in band, as rooms do, and keep the
            # connection (before, it closed with 1011 and logged a traceback).
            log.warning("cannot reply to %s from %s: %s", frame.TYPE, self.remote, error)
            code = ErrorCode.TOO_LARGE if error.code is ErrorCode.TOO_LARGE else ErrorCode.INTERNAL
            self.send_error(getattr(frame, "id", None), code, "the reply cannot be sent within the server's limits")

    def send_error(self, request_id: int | None, code: ErrorCode, message: str, retry_ms: int | None = None,
                   url: str | None = None) -> None:
        """Answer a request with an ``error`` frame (counted by code for metrics)."""
        self.gateway.errors[code.value] += 1
        self.send_frame(ErrorReply(id=request_id, code=code.value, message=message[:512], retry_ms=retry_ms, url=url))

    def _bad_frame(self, error: RemoteProtocolError) -> None:
        if error.close_code is not None:  # pragma: no cover - size is checked before decode
            self.close(error.close_code, error.code.value)
            return
        now = trio.current_time()
        if self._bad_frames is None:
            self._bad_frames = collections.deque()
        self._bad_frames.append(now)
        while self._bad_frames and self._bad_frames[0] < now - _BAD_FRAME_WINDOW:
            self._bad_frames.popleft()
        self.send_error(error.request_id, error.code, error.message)
        if len(self._bad_frames) > self.config.max_bad_frames:
            self.close(CloseCode.BAD_FRAME, "too many bad frames")

    def _websocket_ping(self) -> None:
        """A WebSocket ping takes a token like any frame: answered below the bucket, pings at line
        rate would cost a core per client for ever. Over the rate it is still answered (RFC 6455
        §5.5.2) without an ``error`` frame, until staying over closes the connection (4001)."""
        if self.phase is Phase.OPEN:
            self._spend_token()

    def _take_token(self, frame: ClientFrame) -> bool:
        """Token bucket: False (and an error reply) when over the rate; close if it goes on."""
        if self._spend_token():
            return True
        if self.phase is Phase.OPEN:  # not closed by the bucket: say when to retry
            retry_ms = math.ceil((1 - self._tokens) / self.config.rate * 1000)
            self.send_error(getattr(frame, "id", None), ErrorCode.RATE_LIMITED, "too many requests", retry_ms)
        return False

    def _spend_token(self) -> bool:
        """Take one token; False when over the rate (closes 4001 once over for ``rate_close_after``)."""
        config = self.config
        now = self._fed_at  # the time the request's bytes were fed (no clock read per request)
        self._tokens = min(float(config.burst), self._tokens + (now - self._tokens_at) * config.rate)
        self._tokens_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            if self._over_since is not None and now - self._last_refused > 1.0:
                self._over_since = None  # a whole second without a refusal: the flood is over
            return True
        self.gateway.stats["rate_limited"] += 1
        self._last_refused = now
        if self._over_since is None:
            self._over_since = now
        elif now - self._over_since > config.rate_close_after:
            self.close(CloseCode.RATE_LIMITED, "rate limited")
        return False

    def _authenticate(self, hello: Hello, guest: Claims | None = None) -> Step | None:
        """Check a ``hello``: its user token's claims, or ``guest``'s (claims the guest sign-in made,
        engine/guests.py, once its proof was checked). With inboxes, the welcome needs the user's
        inbox head and rooms from the store first: a step (the connection reads nothing meanwhile)."""
        gateway, config = self.gateway, self.config
        if hello.v != PROTOCOL_VERSION:
            gateway.auth_failures["version"] += 1
            self.close(CloseCode.UNSUPPORTED_VERSION, f"protocol version {PROTOCOL_VERSION} only")
            return
        now = config.wall_clock()
        if guest is not None:
            claims = guest
        else:
            token = hello.token or self._query_token
            if token is None:
                gateway.auth_failures["missing"] += 1
                log.info("auth failed", extra={"remote": self.remote, "reason": "missing", "kid": None})
                self.close(CloseCode.BAD_TOKEN, "missing token")
                return
            try:
                claims = verify(token, config.keyring, now, leeway=config.token_leeway)
                if claims.sub.startswith(GUEST_PREFIX):  # ids Roost makes (guests): no backend may claim one
                    raise _ReservedSub(f"a sub starting with {GUEST_PREFIX!r} is reserved for guests")
            except TokenError as error:
                gateway.stats["auth_failures"] += 1
                gateway.auth_failures[error.reason] += 1
                log.info("auth failed", extra={"remote": self.remote, "reason": error.reason, "kid": unverified_kid(token)})
                self.close(error.close_code or CloseCode.BAD_TOKEN, error.reason)
                return
            gateway.users.note_seen(claims.sub, claims.name)
        if gateway.revocations.is_revoked(claims):
            gateway.stats["auth_failures"] += 1
            gateway.auth_failures["revoked"] += 1
            log.info("auth failed", extra={"remote": self.remote, "reason": "revoked", "kid": claims.kid,
                                           "user": claims.sub, "jti": claims.jti})
            self.close(CloseCode.TOKEN_REVOKED, "revoked")
            return
        if gateway.sessions_elsewhere is not None:
            return self._welcome_in_cluster(hello, claims)
        if gateway.inbox is not None:
            return self._welcome_with_inbox(hello, claims)
        self._open_session(hello, claims, now, {})
        return None

    async def _welcome_in_cluster(self, hello: Hello, claims: Claims) -> None:
        """In a cluster, the session cap counts the user's sessions on the other processes too."""
        assert self.gateway.sessions_elsewhere is not None
        elsewhere = await self.gateway.sessions_elsewhere(claims.sub)
        if self.phase is not Phase.AWAIT_HELLO:  # closed meanwhile (auth deadline, shutdown)
            return
        if self.gateway.inbox is not None:
            await self._welcome_with_inbox(hello, claims, elsewhere)
        else:
            self._open_session(hello, claims, self.config.wall_clock(), {}, elsewhere)

    async def _welcome_with_inbox(self, hello: Hello, claims: Claims, elsewhere: int = 0) -> None:
        """The user's inbox head and rooms (PROTOCOL.md §16), read from the store, then the session."""
        assert self.gateway.inbox is not None
        head, rooms = await self.gateway.inbox.welcome(claims.sub)
        if self.phase is not Phase.AWAIT_HELLO:  # closed meanwhile (auth deadline, shutdown)
            return
        about_user = {"inbox": head, "rooms": rooms.rooms, "rooms_next": rooms.next}
        self._open_session(hello, claims, self.config.wall_clock(), about_user, elsewhere)

    def _open_session(self, hello: Hello, claims: Claims, now: float, about_user: dict[str, Any],
                      elsewhere: int = 0) -> None:
        """Register the session of an authenticated ``hello`` and send its ``welcome``. ``elsewhere``:
        the user's live sessions on the cluster's other processes."""
        gateway, config = self.gateway, self.config
        sid, resumed = self._session_for(hello.session, claims, now)
        if gateway.live_sessions(claims.sub, except_sid=sid) + elsewhere >= config.max_sessions_per_user:
            gateway.auth_failures["too_many_sessions"] += 1
            self.close(CloseCode.TOO_MANY_SESSIONS, "too many sessions")
            return
        self.claims, self.sid, self.user, self.name = claims, sid, claims.sub, claims.name
        self.room_scope, self.role = claims.room, claims.role
        hb_ms = min(max(hello.hb or config.heartbeat_default_ms, config.heartbeat_min_ms), config.heartbeat_max_ms)
        self._heartbeat = hb_ms / 1000
        self._set_token_deadline(claims, now)
        gateway.register(self)
        self.phase = Phase.OPEN
        # The watchdog sleeps until the auth deadline it armed before the hello; the heartbeat
        # deadline (2.5 × hb, as little as 2.5 s) can be earlier: wake it to re-arm.
        self._rearm_watchdog()
        session_exp = int(claims.exp + config.token_leeway + config.reconnect_grace)
        self.send_frame(Welcome(
            v=PROTOCOL_VERSION, sid=sid, session=gateway.signer.mint(SessionClaims(sub=claims.sub, sid=sid, exp=session_exp)),
            user=claims.sub, name=claims.name, hb=hb_ms, exp=claims.exp, time=int(now * 1000), resumed=resumed,
            limits={"frame": config.max_frame_bytes, "rate": config.rate, "burst": config.burst,
                    "rooms": config.max_rooms_per_connection, "chat": config.max_chat_chars,
                    "meta": config.max_meta_bytes, "data": config.max_presence_bytes,
                    "chat_meta": config.max_chat_meta_bytes, "state": config.max_state_bytes},
            **about_user,
        ))

    def _session_for(self, session_token: str | None, claims: Claims, now: float) -> tuple[str, bool]:
        """The session to run: the one ``session_token`` names if its memberships survived, else a new one.

        A valid session token alone is not enough for ``resumed: true``: the token outlives the
        session's grace (it lives until the user token's ``exp`` + leeway + grace), and saying
        "resumed" after the grace removed every membership sends the client into ``resume``
        requests that all answer ``not_member``.
        """
        if session_token is not None:
            try:
                session = self.gateway.signer.check(session_token, now)
            except TokenError:
                session = None
            if session is not None and session.sub == claims.sub and self.gateway.session_kept(session.sid):
                return session.sid, True
        return "s" + secrets.token_urlsafe(12), False

    def _set_token_deadline(self, claims: Claims, wall_now: float) -> None:
        remaining = claims.exp + self.config.token_leeway - wall_now
        self._token_deadline = trio.current_time() + max(remaining, 0.0)

    def _dispatch(self, frame: ClientFrame) -> Step | None:
        """Handle one request through its handler in :data:`_DISPATCH` (any other frame names a room,
        and goes to it); returns the step to await when it cannot finish without awaiting.

        A table, not an ``isinstance`` chain: room traffic (chat, presence, state) is the bulk of all
        requests and came last, after nine checks (8 % of an inbound message's instructions went to
        this method and its neighbours; ``bench inbound --layers``, reader pass glue).
        """
        handler = _DISPATCH.get(type(frame))
        if handler is None:
            room_id = getattr(frame, "room", None)
            target = self.gateway.router.get(room_id) if room_id is not None else None
            if target is None:
                raise RoomError(ErrorCode.NOT_FOUND, "no such room")
            return self._to_room(target, frame)
        return handler(self, frame)

    def _on_ping(self, frame: PingFrame) -> None:
        self.send_frame(Pong(time=int(self.config.wall_clock() * 1000)))

    def _on_hello(self, frame: Hello) -> None:
        self.send_error(None, ErrorCode.INVALID_STATE, "already authenticated")

    def _on_bye(self, frame: Bye) -> None:
        self._bye()

    def _on_lobby(self, frame: Lobby) -> Step | None:
        router = self.gateway.router
        if router.cluster_lobby is not None:  # every process's public rooms, from the directory
            return self._lobby_anywhere(frame)
        page = router.lobby(frame.cursor, frame.limit or self.config.page_default)
        self.send_frame(Ok(id=frame.id, result=dump_record(page)))
        return None

    async def _lobby_anywhere(self, frame: Lobby) -> None:
        page = await self.gateway.router.lobby_anywhere(frame.cursor, frame.limit or self.config.page_default)
        self.send_frame(Ok(id=frame.id, result=dump_record(page)))

    def _on_create(self, frame: Create | JoinOrCreate) -> Step | None:
        gateway = self.gateway
        if self.room_scope is not None and isinstance(frame, Create):
            raise RoomError(ErrorCode.FORBIDDEN, "the token is scoped to one room")
        if len(self.rooms) >= self.config.max_rooms_per_connection:
            raise RoomError(ErrorCode.LIMIT_REACHED, "too many rooms on this connection")
        options = RoomOptions(
            public=frame.public, max_members=frame.max or self.config.default_max_members,
            meta=frame.meta, logic=frame.logic, inactive=frame.inactive,
        )
        if self.shared:
            return self._to_rooms_worker(None, frame.code if isinstance(frame, JoinOrCreate) else None, create=True)
        if isinstance(frame, Create):
            return self._then_to_room(gateway.router.create(options), frame)
        if self.room_scope is not None and normalize_code(self.room_scope) != normalize_code(frame.code):
            # A new room could never be in scope (its id is fresh): join an existing one or
            # refuse, never create a room the token may not enter (it would stay, empty).
            existing = gateway.router.by_code(frame.code)
            if existing is None or existing.closed:
                if gateway.router.cluster is not None:  # it may live on another node
                    return self._then_to_room(self._scoped_elsewhere(frame.code), frame)
                raise RoomError(ErrorCode.FORBIDDEN, "the token is scoped to another room")
            return self._to_room(existing, frame)
        return self._then_to_room(gateway.router.get_or_create(frame.code, options), frame)

    async def _scoped_elsewhere(self, code: str) -> RoomRuntime:
        try:
            return await self.gateway.router.locate(None, code)
        except RoomError as error:
            if error.code is ErrorCode.NOT_FOUND:
                raise RoomError(ErrorCode.FORBIDDEN, "the token is scoped to another room") from None
            raise

    async def _to_rooms_worker(self, room: str | None, code: str | None, *, create: bool) -> None:
        raise await self.gateway.router.send_to_owner(room, code, create=create)

    def _on_join(self, frame: Join) -> Step | None:
        router = self.gateway.router
        if self.shared:
            return self._to_rooms_worker(frame.room, frame.code, create=False)
        if router.cluster is not None:  # a room served here is found without a round trip (locate)
            return self._then_to_room(router.locate(frame.room, frame.code), frame)
        return self._to_room(router.find(frame.room, frame.code), frame)

    async def _admin(self, frame: AdminRequest) -> None:
        result = await self.gateway.admin.call(frame.op, frame.args, frame.key, remote=self.remote)
        self.send_frame(Ok(id=frame.id, result=result))

    async def _inbox_request(self, frame: InboxResume | InboxRead | InboxHistory | MyRooms) -> None:
        """The user's own inbox and rooms (engine/inbox.py): resume and read are answered by the
        inbox writer (in its order), the pages here."""
        inbox = self.gateway.inbox
        if inbox is None:
            raise RoomError(ErrorCode.UNSUPPORTED, "this server has no inboxes")
        if isinstance(frame, InboxResume):
            await inbox.resume(self, frame.id, frame.epoch, frame.seq)
        elif isinstance(frame, InboxRead):
            await inbox.read(self, frame.id, frame.n)
        elif isinstance(frame, InboxHistory):
            page = await inbox.history(self.user, frame.before, frame.limit or self.config.page_default)
            self.send_frame(Ok(id=frame.id, result=dump_record(page)))
        else:
            rooms = await inbox.my_rooms(self.user, frame.cursor, frame.limit or self.config.page_default)
            self.send_frame(Ok(id=frame.id, result=dump_record(rooms)))

    async def _then_to_room(self, room: Awaitable[RoomRuntime], frame: ClientFrame) -> None:
        step = self._to_room(await room, frame)
        if step is not None:
            await step

    def _to_room(self, runtime: RoomRuntime, frame: ClientFrame) -> Step | None:
        """Hand a request to its room; returns a step (wait) only when the room's inbox is full
        (backpressure): the connection then reads nothing more until the room took it.

        ``send_nowait`` first: an awaited ``send`` always yields to the scheduler, a whole extra pass
        per request, and the reader checkpoints before its next read anyway.
        """
        request = Request(self, frame)
        try:
            runtime.inbox.send_nowait(request)
        except trio.WouldBlock:
            return self._to_full_room(runtime, request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RoomError(ErrorCode.NOT_FOUND, "the room is closed") from None
        return None

    async def _to_full_room(self, runtime: RoomRuntime, request: Request) -> None:
        try:
            await runtime.inbox.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RoomError(ErrorCode.NOT_FOUND, "the room is closed") from None

    def _refresh(self, frame: Refresh) -> None:
        """Extend the connection's lifetime with a fresh token of the same ``sub``, ``room``, ``role``, ``name``.

        A refresh only moves ``exp`` (and the ``jti`` revocation is checked against). It never changes
        what the connection may do: applying a new ``room`` scope would mean detaching the session
        from rooms it already sits in while its requests to them wait in their inboxes, and a new
        ``role`` would change a member's rights in the middle of a game. A client that needs other
        claims reconnects with the new token (and its session token: §5.3), where ``join`` and
        ``resume`` check them. Refused changes answer ``forbidden``; the old token keeps its old ``exp``.
        """
        now = self.config.wall_clock()
        try:
            claims = verify(frame.token, self.config.keyring, now, leeway=self.config.token_leeway)
        except TokenError as error:
            raise RoomError(error.code, f"token {error.reason}") from None
        if claims.sub != self.user:
            raise RoomError(ErrorCode.FORBIDDEN, "the new token is for another user")
        current = self.claims
        assert current is not None  # refresh is only read once the connection is OPEN
        if (claims.room, claims.role, claims.name) != (current.room, current.role, current.name):
            raise RoomError(ErrorCode.FORBIDDEN, "refresh cannot change the room, role or name claims; reconnect")
        if self.gateway.revocations.is_revoked(claims):
            raise RoomError(ErrorCode.UNAUTHORIZED, "token revoked")
        self.claims = claims
        self._set_token_deadline(claims, now)
        self._rearm_watchdog()  # the new exp may be earlier than the old one
        self.send_frame(Ok(id=frame.id, result={"exp": claims.exp}))

    def _bye(self) -> None:
        """End the session now (PROTOCOL.md §17): the gateway forgets it (its session token no longer
        resumes), every room it is attached to removes its presence at once (reason ``ended``,
        not after the grace), and the connection closes with 1000. The rooms are told before the
        close, so the drop that the close would report never reaches them (``rooms`` is emptied)."""
        self.gateway.end_session(self)
        for room_id in list(self.rooms):
            runtime = self.gateway.router.get(room_id)
            if runtime is not None:
                runtime.notify_end(self)
        self.rooms.clear()
        self.close(CloseCode.NORMAL, "bye")

    def _end_sessions(self) -> None:
        """Tell every room this session dropped (once), and leave the gateway's registry."""
        if self.sid:
            self.gateway.unregister(self)
        for room_id in list(self.rooms):
            runtime = self.gateway.router.get(room_id)
            if runtime is not None:
                runtime.notify_disconnect(self)
        self.rooms.clear()


_DISPATCH: dict[type[ClientFrame], Any] = {
    PingFrame: Connection._on_ping,
    Hello: Connection._on_hello,
    Refresh: Connection._refresh,
    Bye: Connection._on_bye,
    Lobby: Connection._on_lobby,
    InboxResume: Connection._inbox_request,
    InboxRead: Connection._inbox_request,
    InboxHistory: Connection._inbox_request,
    MyRooms: Connection._inbox_request,
    AdminRequest: Connection._admin,
    Create: Connection._on_create,
    JoinOrCreate: Connection._on_create,
    Join: Connection._on_join,
}
"""The connection's own requests by frame type; every other client frame is a room request."""
