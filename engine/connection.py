"""One client connection: Roost on the WebSocket layer (engine/websocket.py): auth, limits, routing.

Each connection runs two tasks in its own nursery: this reader, and the outbox writer (which only works
when the socket pushed back). The reader owns every per-connection deadline (auth, heartbeat, token
expiry, closing) as the deadline of the cancel scope around its one ``receive_some``: no timer tasks.

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
from typing import TYPE_CHECKING

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
    Join,
    JoinOrCreate,
    Lobby,
    Ok,
    Pong,
    Refresh,
    ServerFrame,
    Welcome,
)
from roost.protocol.frames import (
    Ping as PingFrame,
)
from roost.protocol.tokens import Claims, SessionClaims, TokenError, unverified_kid, verify

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

__all__ = ["Connection"]

log = logging.getLogger("roost.connection")

_CLOSE_KINDS = {int(code): code.name.lower() for code in CloseCode} | {1005: "no_status"}
"""The ``reason`` word of the connection-closed log line, by close code."""

_BAD_FRAME_WINDOW = 60.0
_LINGER_SECONDS = 1.0
"""After the closing handshake (or a failure), how long TCP waits for the peer's FIN (§7.1.1)."""
_LINGER_BYTES = 1024 * 1024
"""... and how many bytes it discards meanwhile (a peer in the middle of a large frame)."""


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    HTTP = "http"
    """A plain HTTP request (engine/http.py): one exchange within the auth deadline, then close."""
    AWAIT_HELLO = "await_hello"
    OPEN = "open"
    CLOSING = "closing"
    DONE = "done"


class Connection(Peer):
    """The server side of one client connection."""

    def __init__(self, gateway: Gateway, transport: Transport, remote: str) -> None:
        config = gateway.config
        self.gateway = gateway
        self.config = config
        self.remote = remote
        self.transport = transport
        self.outbox = Outbox(
            transport, max_frames=config.outbox_max_frames, max_bytes=config.outbox_max_bytes,
            on_overflow=self._slow_consumer,
        )
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
        self._reader_scope = trio.CancelScope()
        self._reader_done = False
        self._watchdog_wakeup = trio.Event()
        self._query_token: str | None = None
        self._http: RequestReader | None = None
        """While a plain HTTP request is being read (None once it is complete)."""
        now = trio.current_time()
        self._started = now
        self._auth_deadline = now + config.auth_timeout
        self._close_deadline = math.inf
        self._heartbeat = config.heartbeat_default_ms / 1000
        self._last_heard = now
        self._token_deadline = math.inf
        self._tokens = float(config.burst)
        self._tokens_at = now
        self._over_since: float | None = None
        self._last_refused = -math.inf
        self._bad_frames: collections.deque[float] = collections.deque()
        self.requests = 0

    # -- Peer -------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.phase is Phase.OPEN

    @property
    def last_heard_ms(self) -> int:
        # _last_heard is on the Trio clock (set per receive, no syscall); map it onto the wall clock.
        return int((self.config.wall_clock() - (trio.current_time() - self._last_heard)) * 1000)

    def push(self, data: bytes) -> None:
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
            self._reader_scope.cancel()
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
        """Run the connection to its end. Never raises for anything the peer does."""
        try:
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                nursery.start_soon(self.outbox.run_writer)
                nursery.start_soon(self._watchdog)
                with self._reader_scope:
                    try:
                        await self._read_loop()
                    except Exception:
                        log.exception("connection %s failed", self.remote)
                        self.close(CloseCode.INTERNAL_ERROR, "internal error")
                self._reader_done = True
                self._rearm_watchdog()
                self._end_sessions()
                # Let the writer flush what is queued (the Close frame at least), within a bound.
                self.outbox.finish()
                nursery.cancel_scope.deadline = min(self._close_deadline, trio.current_time() + self.config.close_timeout)
            finished = self.websocket.state in (WsState.CLOSED, WsState.HTTP)
            if finished and self.outbox.idle and not self.outbox.broken:
                # Our last bytes (a Close, an HTTP answer) are flushed: make sure they arrive.
                await self.transport.linger_close(_LINGER_SECONDS, _LINGER_BYTES)
        finally:
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
        self._watchdog_wakeup.set()

    async def _watchdog(self) -> None:
        """The connection's one timer: auth deadline, heartbeat expiry, token expiry, close deadline.

        Lazy: the reader only records when it last heard from the peer (no timer work per frame); when
        the armed deadline passes, the watchdog recomputes it and sleeps again unless it has really
        expired. ``close()`` wakes it because it moves the deadline earlier.
        """
        while not self._reader_done:
            with trio.move_on_at(self._deadline()):
                await self._watchdog_wakeup.wait()
                self._watchdog_wakeup = trio.Event()
                continue
            if self._reader_done or trio.current_time() < self._deadline():
                continue
            self._on_deadline()
            if self.phase is Phase.DONE:
                self._reader_scope.cancel()
                return

    async def _read_loop(self) -> None:
        websocket = self.websocket
        while self.phase is not Phase.DONE and not self.outbox.broken:
            data = await self.transport.receive_some()
            if not data:
                return
            if self.phase is not Phase.CLOSING:  # the answer to our Close is not activity (last_seen)
                self._last_heard = trio.current_time()
            for message in websocket.receive(data):
                if isinstance(message, str):
                    websocket.fail(CloseCode.UNSUPPORTED_DATA, "binary frames only")
                else:
                    await self._on_frame(message)
                if self.phase is Phase.DONE:
                    return
            if websocket.state is WsState.CLOSED:
                self._websocket_closed()
            elif websocket.state is WsState.HTTP:
                await self._serve_http(websocket.http_bytes)
                return

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

    async def _on_frame(self, data: bytes) -> None:
        if self.phase is Phase.AWAIT_HELLO:
            try:
                frame = decode(data, Sender.CLIENT, self.config.limits)
            except RemoteProtocolError:
                self.gateway.auth_failures["bad_hello"] += 1
                self.close(CloseCode.BAD_FRAME, "bad first frame")
                return
            if not isinstance(frame, Hello):
                self.gateway.auth_failures["bad_hello"] += 1
                self.close(CloseCode.BAD_FRAME, "first frame must be hello")
                return
            self._authenticate(frame)
            return
        if self.phase is not Phase.OPEN:
            return
        self.requests += 1
        try:
            frame = decode(data, Sender.CLIENT, self.config.limits)
        except RemoteProtocolError as error:
            self._bad_frame(error)
            return
        assert isinstance(frame, ClientFrame)  # decode(..., Sender.CLIENT) returns client frames only
        self.gateway.requests[frame.TYPE] += 1
        if not self._take_token(frame):
            return
        try:
            await self._dispatch(frame)
        except RoomError as error:
            self.send_error(getattr(frame, "id", None), error.code, error.message, error.retry_ms)
        except LocalProtocolError as error:
            # A reply this server cannot encode (a page or record over the server limits) is its own
            # fault, not the caller's: refuse this one request in band, as rooms do, and keep the
            # connection (before, it closed with 1011 and logged a traceback).
            log.warning("cannot reply to %s from %s: %s", frame.TYPE, self.remote, error)
            code = ErrorCode.TOO_LARGE if error.code is ErrorCode.TOO_LARGE else ErrorCode.INTERNAL
            self.send_error(getattr(frame, "id", None), code, "the reply cannot be sent within the server's limits")

    def send_error(self, request_id: int | None, code: ErrorCode, message: str, retry_ms: int | None = None) -> None:
        """Answer a request with an ``error`` frame (counted by code for metrics)."""
        self.gateway.errors[code.value] += 1
        self.send_frame(ErrorReply(id=request_id, code=code.value, message=message[:512], retry_ms=retry_ms))

    def _bad_frame(self, error: RemoteProtocolError) -> None:
        if error.close_code is not None:  # pragma: no cover - size is checked before decode
            self.close(error.close_code, error.code.value)
            return
        now = trio.current_time()
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
        now = trio.current_time()
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

    def _authenticate(self, hello: Hello) -> None:
        gateway, config = self.gateway, self.config
        if hello.v != PROTOCOL_VERSION:
            gateway.auth_failures["version"] += 1
            self.close(CloseCode.UNSUPPORTED_VERSION, f"protocol version {PROTOCOL_VERSION} only")
            return
        token = hello.token or self._query_token
        if token is None:
            gateway.auth_failures["missing"] += 1
            log.info("auth failed", extra={"remote": self.remote, "reason": "missing", "kid": None})
            self.close(CloseCode.BAD_TOKEN, "missing token")
            return
        now = config.wall_clock()
        try:
            claims = verify(token, config.keyring, now, leeway=config.token_leeway)
        except TokenError as error:
            gateway.stats["auth_failures"] += 1
            gateway.auth_failures[error.reason] += 1
            log.info("auth failed", extra={"remote": self.remote, "reason": error.reason, "kid": unverified_kid(token)})
            self.close(error.close_code or CloseCode.BAD_TOKEN, error.reason)
            return
        if gateway.revocations.is_revoked(claims):
            gateway.stats["auth_failures"] += 1
            gateway.auth_failures["revoked"] += 1
            log.info("auth failed", extra={"remote": self.remote, "reason": "revoked", "kid": claims.kid,
                                           "user": claims.sub, "jti": claims.jti})
            self.close(CloseCode.TOKEN_REVOKED, "revoked")
            return
        sid, resumed = self._session_for(hello.session, claims, now)
        if gateway.live_sessions(claims.sub, except_sid=sid) >= config.max_sessions_per_user:
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

    async def _dispatch(self, frame: ClientFrame) -> None:
        gateway = self.gateway
        if isinstance(frame, PingFrame):
            self.send_frame(Pong(time=int(self.config.wall_clock() * 1000)))
        elif isinstance(frame, Hello):
            self.send_error(None, ErrorCode.INVALID_STATE, "already authenticated")
        elif isinstance(frame, Refresh):
            self._refresh(frame)
        elif isinstance(frame, Bye):
            self._bye()
        elif isinstance(frame, Lobby):
            page = gateway.router.lobby(frame.cursor, frame.limit or self.config.page_default)
            self.send_frame(Ok(id=frame.id, result=dump_record(page)))
        elif isinstance(frame, AdminRequest):
            result = await gateway.admin.call(frame.op, frame.args, frame.key, remote=self.remote)
            self.send_frame(Ok(id=frame.id, result=result))
        elif isinstance(frame, Create | JoinOrCreate):
            if self.room_scope is not None and isinstance(frame, Create):
                raise RoomError(ErrorCode.FORBIDDEN, "the token is scoped to one room")
            if len(self.rooms) >= self.config.max_rooms_per_connection:
                raise RoomError(ErrorCode.LIMIT_REACHED, "too many rooms on this connection")
            options = RoomOptions(
                public=frame.public, max_members=frame.max or self.config.default_max_members,
                meta=frame.meta, logic=frame.logic, inactive=frame.inactive,
            )
            if isinstance(frame, Create):
                runtime = await gateway.router.create(options)
            elif self.room_scope is not None and normalize_code(self.room_scope) != normalize_code(frame.code):
                # A new room could never be in scope (its id is fresh): join an existing one or
                # refuse, never create a room the token may not enter (it would stay, empty).
                existing = gateway.router.by_code(frame.code)
                if existing is None or existing.closed:
                    raise RoomError(ErrorCode.FORBIDDEN, "the token is scoped to another room")
                runtime = existing
            else:
                runtime = await gateway.router.get_or_create(frame.code, options)
            await self._to_room(runtime, frame)
        elif isinstance(frame, Join):
            await self._to_room(gateway.router.find(frame.room, frame.code), frame)
        else:
            room_id = getattr(frame, "room", None)
            target = gateway.router.get(room_id) if room_id is not None else None
            if target is None:
                raise RoomError(ErrorCode.NOT_FOUND, "no such room")
            await self._to_room(target, frame)

    async def _to_room(self, runtime: RoomRuntime, frame: ClientFrame) -> None:
        """Hand a request to its room; wait only when the room's inbox is full (backpressure).

        ``send_nowait`` first: an awaited ``send`` always yields to the scheduler, a whole extra pass
        per request, and this reader checkpoints in its next ``receive_some`` anyway.
        """
        request = Request(self, frame)
        try:
            try:
                runtime.send_channel.send_nowait(request)
            except trio.WouldBlock:
                await runtime.send_channel.send(request)
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
        """End the session now (PROTOCOL.md §15): the gateway forgets it (its session token no longer
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
