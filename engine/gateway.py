"""The WebSocket gateway: listens, accepts, and runs each connection inside its own error boundary.

It also keeps the registry of authenticated sessions (by sid and by user) used for session take-over,
the per-user session cap, revocation sweeps and statistics. Connections are served in the gateway's
own nursery; a failure in one never reaches another connection or the listener (trio-websocket and
``trio.serve_listeners`` both let handler exceptions crash the server: reference trap 1).
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from roost.protocol.errors import CloseCode
from roost.protocol.tokens import SessionSigner

from .config import Config
from .connection import Connection, Phase
from .guests import Guests
from .http import Availability, Exposition, HttpService, Routes
from .outbox import SocketTransport, StreamTransport, Transport
from .reader import Reader, available
from .revocations import Revocations
from .router import Router
from .users import Directory
from .websocket import WsState

if TYPE_CHECKING:
    from .admin import Admin
    from .inbox import InboxService

__all__ = ["COUNTERS", "Gateway", "close_label"]

log = logging.getLogger("roost.gateway")

COUNTERS = (
    "connections_accepted",
    "sessions_opened",
    "auth_failures",
    "auth_timeouts",
    "handshakes_refused",
    "rate_limited",
    "slow_consumers",
    "service_auth_failures",
)
"""The gateway's event counters (admin ``stats``, PROTOCOL.md §10); a new counter is added here."""

_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


_CLOSE_LABELS = {code: str(code) for code in (*range(1000, 1016), *(int(c) for c in CloseCode))}
"""Close codes counted under their own label: RFC 6455's and the protocol's (PROTOCOL.md §8.2)."""


def close_label(connection: Connection) -> str:
    """How a connection ended, for metrics: the close code it sent or answered; ``1006`` (RFC 6455's
    "closed abnormally") when its WebSocket was open and TCP ended without a Close; ``none`` when it
    never was a WebSocket (an HTTP refusal, a plain HTTP request, a peer gone during the head).

    The trap: a peer that closes first chooses the code we answer with (any of 3000-4999), so its
    codes are labels only when the protocol defines them; the rest count as ``other`` (a client must
    not be able to mint a time series per code).
    """
    if connection.close_code is not None:
        return _CLOSE_LABELS.get(connection.close_code, "other")
    if connection.websocket.state in (WsState.OPEN, WsState.CLOSING):
        return "1006"
    return "none"


class Gateway:
    """Accepts connections and keeps the registry of live sessions.

    Socket connections are driven by one :class:`~roost.reader.Reader` task (where ``select.epoll``
    exists, :attr:`use_reader`); in-memory ones, and every one elsewhere, each run their own tasks
    (:meth:`serve_transport`). Both drive the same :class:`~roost.connection.Connection`.
    """

    use_reader = available()
    """Drive socket connections from one reader task (tests set it False to run the other driver)."""

    def __init__(self, config: Config, router: Router, revocations: Revocations, admin: Admin,
                 *, exposition: Exposition | None = None, routes: Routes | None = None,
                 users: Directory | None = None) -> None:
        self.config = config
        self.users = users if users is not None else admin.users
        """The user directory: backend ``sub``s are recorded on first sight, guests signed in by key."""
        self.guests = Guests(config, self.users)
        self.router = router
        self.revocations = revocations
        self.admin = admin
        self.inbox: InboxService | None = None
        """Personal inboxes and room index (engine/inbox.py), set by the engine: ``welcome`` and the
        ``inbox_*`` and ``my_rooms`` requests read it."""
        self.availability = Availability.STARTING
        """STARTING until the engine has restored its rooms (:meth:`serving`), DRAINING from
        :meth:`drain` on: only while SERVING are upgrades accepted and the service API answered."""
        self.http = HttpService(admin, config.limits, lambda: self.availability, exposition, routes)
        """Plain HTTP requests on the same port: health, metrics, the service API."""
        self.signer = SessionSigner(config.session_secret)
        self.connections: set[Connection] = set()
        self.by_sid: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = collections.defaultdict(set)
        self.pending_handshakes = 0
        self._dropped: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Sessions whose connection ended, by sid, with when (Trio clock), oldest first; kept for one
        reconnect grace: what ``session_kept`` needs to answer ``welcome.resumed`` truthfully."""
        self._ended: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Sessions ended with ``bye``, by sid, with when (Trio clock), oldest first; kept for one
        reconnect grace (longer than any other answer ``session_kept`` could give): never resumed."""
        self._started = -math.inf
        self.stats: collections.Counter[str] = collections.Counter(dict.fromkeys(COUNTERS, 0))
        """Event counters for admin ``stats``: every name of COUNTERS is there from the start (0), so a
        monitor sees the same keys before and after the first event (PROTOCOL.md §10)."""
        # Metrics (engine/metrics.py reads these at scrape time; nothing here touches prometheus_client).
        self.closes: collections.Counter[str] = collections.Counter()
        """Ended connections by close code (see :func:`close_label`)."""
        self.auth_failures: collections.Counter[str] = collections.Counter()
        """Connections refused a session, by reason word (never token text)."""
        self.requests: collections.Counter[str] = collections.Counter()
        """Frames after ``hello``, by frame type."""
        self.errors: collections.Counter[str] = collections.Counter()
        """Error replies sent by connections (not rooms), by error code."""
        self.closed_pushes = 0
        self.closed_bytes_sent = 0
        """``Outbox.pushes`` and ``bytes_sent`` of the connections that ended (live ones are read live)."""
        self._nursery: trio.Nursery | None = None
        self.reader: Reader | None = None
        self._accepting = trio.CancelScope()
        self._draining: set[Connection] = set()
        self._drained = trio.Event()
        revocations.listeners.append(self._sweep_revoked)
        self.sessions_elsewhere: Callable[[str], Awaitable[int]] | None = None
        """In a cluster: a user's live sessions on the other processes (the per-user session cap)."""
        self.sessions_changed: Callable[[str], None] | None = None
        """In a cluster: called when a user's sessions here change (the others are told)."""

    async def run(self, listener: socket.socket, *more: socket.socket,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on ``listener`` and ``more`` (bound, listening, non-blocking) until cancelled."""
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            self._nursery = nursery
            self._started = trio.current_time()
            if self.use_reader:
                self.reader = Reader(self, nursery, passes=self.router.passes)
                nursery.start_soon(self.reader.run)
            task_status.started()
            with self._accepting:
                if more:  # the first is shared with other workers (roost serve --workers): say so
                    async with trio.open_nursery(strict_exception_groups=True) as accepting:
                        for extra in more:
                            accepting.start_soon(self._accept_loop, extra, nursery)
                        await self._accept_loop(listener, nursery, shared=True)
                else:
                    await self._accept_loop(listener, nursery)
            # Not accepting any more (shutdown): the nursery ends once every connection has closed.
            if self.reader is not None:
                self.reader.stop()

    def serving(self) -> None:
        """The engine is ready (rooms restored): accept upgrades from now on."""
        self.availability = Availability.SERVING

    async def drain(self, code: CloseCode, reason: str, timeout: float) -> None:
        """Graceful shutdown, first step: close every connection with ``code``, wait (at most
        ``timeout``) until they are gone, while still accepting, so that health checks see
        ``draining`` and reconnecting clients get 503 + Retry-After instead of a refused connection.

        HTTP exchanges are not waited for (each is bounded by its own deadline).
        """
        self.availability = Availability.DRAINING
        self._draining = {c for c in self.connections if c.phase is not Phase.HTTP}
        self.close_all(code, reason)
        with trio.move_on_after(timeout):
            if self._draining:
                await self._drained.wait()

    def stop_accepting(self) -> None:
        """Stop taking new connections (after :meth:`drain`)."""
        self._accepting.cancel()

    async def _accept_loop(self, listener: socket.socket, nursery: trio.Nursery, *, shared: bool = False) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                log.error("accept failed (%s): retrying in 100 ms", errno.errorcode.get(exc.errno, exc.errno))
                await trio.sleep(0.1)
                continue
            remote = f"{address[0]}:{address[1]}"
            if self.reader is not None:
                try:
                    self.reader.add(SocketTransport(sock), remote, shared=shared)
                except OSError:  # the peer is already gone (setsockopt on a reset socket)
                    sock.close()
            else:
                nursery.start_soon(functools.partial(self.serve_transport, SocketTransport(sock), remote, shared=shared))

    def open_memory_connection(self) -> trio.abc.Stream:
        """Serve one connection over an in-memory stream; returns the client's end (test kit, embedding)."""
        if self._nursery is None:
            raise RuntimeError("the gateway is not running")
        # Imported here, not with the module: trio.testing imports pytest when it is installed
        # (trio.testing._raises_group), 70-100 ms of every ``roost serve`` start for a test helper.
        import trio.testing

        client, server = trio.testing.memory_stream_pair()
        self._nursery.start_soon(self.serve_transport, StreamTransport(server), "memory")
        return client

    async def serve_transport(self, transport: Transport, remote: str, *, shared: bool = False) -> None:
        """Run one connection to its end; nothing it raises escapes."""
        connection = Connection(self, transport, remote, shared=shared)
        self.opened(connection)
        try:
            await connection.serve()
        except Exception:  # serve() contains peer errors; this is the last line against our own bugs
            log.exception("connection %s crashed", remote)
        finally:
            self.closed(connection)

    def opened(self, connection: Connection) -> None:
        """A connection starts (either driver)."""
        self.connections.add(connection)
        self.pending_handshakes += 1
        self.stats["connections_accepted"] += 1

    def closed(self, connection: Connection) -> None:
        """A connection ended (either driver): its figures go to the totals, its session away."""
        if connection in self.connections:
            self.connections.discard(connection)
            # In the same step as the discard (no checkpoint between): a scrape sees the outbox's
            # figures either live or in the totals, never both nor neither.
            self.closed_pushes += connection.outbox.pushes
            self.closed_bytes_sent += connection.outbox.bytes_sent
            self.closes[close_label(connection)] += 1
            if not connection.registered:
                self.pending_handshakes -= 1
            self.unregister(connection)
            if connection in self._draining:
                self._draining.discard(connection)
                if not self._draining:
                    self._drained.set()

    def register(self, connection: Connection) -> None:
        """A connection authenticated: it leaves the pending count and becomes a live session."""
        self.pending_handshakes -= 1
        connection.registered = True
        previous = self.by_sid.get(connection.sid)
        if previous is not None and previous is not connection:
            previous.close(CloseCode.SUPERSEDED, "session taken over")
        self.by_sid[connection.sid] = connection
        self.by_user[connection.user].add(connection)
        self.stats["sessions_opened"] += 1
        if self.sessions_changed is not None:
            self.sessions_changed(connection.user)

    def end_session(self, connection: Connection) -> None:
        """The session of ``connection`` ended itself (``bye``): it will not be resumed."""
        now = trio.current_time()
        self._dropped.pop(connection.sid, None)
        self._ended[connection.sid] = now
        self._ended.move_to_end(connection.sid)
        horizon = now - self.config.reconnect_grace
        while self._ended and next(iter(self._ended.values())) <= horizon:
            self._ended.popitem(last=False)
        self.unregister(connection)

    def unregister(self, connection: Connection) -> None:
        """A session's connection ended: its memberships now live on only for the reconnect grace."""
        if self.by_sid.get(connection.sid) is connection:
            del self.by_sid[connection.sid]
            now = trio.current_time()
            if connection.sid not in self._ended:  # a session ended with bye is not kept for a resume
                self._dropped[connection.sid] = now
                self._dropped.move_to_end(connection.sid)
            horizon = now - self.config.reconnect_grace
            while self._dropped and next(iter(self._dropped.values())) <= horizon:
                self._dropped.popitem(last=False)
        sessions = self.by_user.get(connection.user)
        if sessions is not None:
            sessions.discard(connection)
            if not sessions:
                del self.by_user[connection.user]
            if self.sessions_changed is not None:
                self.sessions_changed(connection.user)

    def session_kept(self, sid: str) -> bool:
        """Whether session ``sid`` still has the memberships it had: its connection is still open, or
        it ended less than one reconnect grace ago (each room keeps a dropped member that long).

        A sid this process never saw was a session of an earlier process: a restart restarts every
        member's grace (§5.3), so it counts as dropped at the start. Conservative: a member kept by
        another session of the same user beyond this session's grace reads as not kept (``join``
        then reattaches it).
        """
        if sid in self._ended:
            return False
        if sid in self.by_sid:
            return True
        dropped = self._dropped.get(sid, self._started)
        return trio.current_time() < dropped + self.config.reconnect_grace

    def user_sessions(self, user: str) -> int:
        """Live sessions of ``user`` here (what the cluster is told: engine/bus.py SessionCounts)."""
        return sum(1 for c in self.by_user.get(user, ()) if c.phase is Phase.OPEN)

    def live_sessions(self, user: str, *, except_sid: str) -> int:
        """How many live sessions ``user`` has, not counting ``except_sid`` (which is being taken over)."""
        return sum(1 for c in self.by_user.get(user, ()) if c.sid != except_sid and c.phase is Phase.OPEN)

    def _sweep_revoked(self) -> None:
        for connection in list(self.by_sid.values()):
            if connection.claims is not None and self.revocations.is_revoked(connection.claims):
                connection.close(CloseCode.TOKEN_REVOKED, "revoked")

    def close_user(self, user: str, code: CloseCode, reason: str) -> None:
        """Close every live session of ``user`` (a merged guest: 4006)."""
        for connection in list(self.by_user.get(user, ())):
            connection.close(code, reason)

    def close_all(self, code: CloseCode, reason: str) -> None:
        """Start closing every connection (graceful shutdown)."""
        for connection in list(self.connections):
            connection.close(code, reason)
