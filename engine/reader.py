"""One reader task per gateway: every socket connection read from one level-triggered inner epoll.

Measured (reference/inbound-path.md §3 (f)): a Trio task per connection costs ~40 k instructions per
inbound message (``wait_readable`` → epoll event → reschedule → task step) plus one ``epoll_ctl``
(Trio re-arms EPOLLONESHOT on every wait); one task over an inner epoll where every socket is
registered once costs ~1.6 k and no ``epoll_ctl``. So the :class:`Reader` owns, for every socket
connection of its gateway:

- **reading**: Trio waits on the inner epoll's own descriptor (``wait_readable``: the inner epoll is
  readable while any socket in it is); each wake ``recv``-s every ready socket once (at most
  ``READ_BYTES``: a flooding peer cannot starve the others; level-triggered, what it left is seen on
  the next pass) and runs :meth:`Connection.feed` synchronously;
- **deadlines** (auth, heartbeat, token expiry, close): one heap, lazy like the old watchdog: an entry
  is only a hint, re-checked against :meth:`Connection._deadline` when it pops (so a message, which
  moves the heartbeat deadline later, costs no heap work). A second task sleeps until the heap's first
  entry: a cancel scope with a deadline around every wait of the reader cost ~60 k instructions per
  lone message (measured with cProfile: Trio registers and unregisters each such deadline through a
  generator context manager and its own heap), so the reader's wait has no scope at all;
- **parking**: a request that must await (admin call, room creation, a full room inbox, an HTTP
  exchange) takes the socket out of the inner epoll and runs in a task of its own; the connection
  reads on when it is done, with the bytes it had already received (its requests keep their order);
- **ending**: a connection that is done is removed from the epoll and wound down (flush the Close,
  linger, close, log) in a short task.

An idle connection costs no task at all: its outbox starts a writer task only while it has a backlog.

Each connection's failure stays its own: an exception while feeding one closes that one (1011).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import select
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import trio

from .connection import Connection, Step
from .outbox import SocketTransport

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["READ_BYTES", "Reader", "available"]

log = logging.getLogger("roost.reader")

READ_BYTES = 65536
"""At most this much is read from one socket per pass (what ``receive_some`` read per call before)."""


class Passes(Protocol):
    """What the reader needs of the turn scheduler (engine/scheduler.py), handed down by the gateway:
    the rooms its pass makes ready run once, after it, and in its step when the scheduler is idle."""

    def hold(self) -> None: ...
    def release(self) -> None: ...


def available() -> bool:
    """Whether this system has ``select.epoll`` (Linux): elsewhere every connection runs its own tasks."""
    return hasattr(select, "epoll")


class Reader:
    """Reads and times every socket connection of one gateway, in one task (:meth:`run`)."""

    def __init__(self, gateway: Gateway, nursery: trio.Nursery, passes: Passes | None = None) -> None:
        self.gateway = gateway
        self._passes = passes
        self._nursery = nursery
        self._epoll = select.epoll()
        self._by_fd: dict[int, Connection] = {}
        """Connections whose socket is in the inner epoll (not parked, not ending)."""
        self.connections: set[Connection] = set()
        """Every connection this reader owns, until it is wound down."""
        self._heap: list[tuple[float, int, Connection]] = []
        self._order = itertools.count()
        self._wait: trio.CancelScope | None = None
        """The timer task's sleep (until the heap's first entry), while it sleeps."""
        self._running = trio.CancelScope()
        """Around the reader's loop: cancelled once stopping and the last connection is gone."""
        self._stopping = False
        self.parks = 0
        """Steps that had to await in a task of their own (for tests and benchmarks)."""

    # -- connections --------------------------------------------------------------------------------

    def add(self, transport: SocketTransport, remote: str, *, shared: bool = False) -> Connection:
        """Take a new socket connection: register it once, arm its auth deadline."""
        connection = Connection(self.gateway, transport, remote, reader=self, shared=shared)
        fd = transport.fileno()
        self._epoll.register(fd, select.EPOLLIN)  # first: if it fails (OSError), nothing is left behind
        self._by_fd[fd] = connection
        self.gateway.opened(connection)
        self.connections.add(connection)
        self.arm(connection, connection._deadline())
        return connection

    def spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` in a task of the gateway's nursery (an outbox's on-demand writer): an
        exception in it is logged, never let through to the nursery (it would end the gateway)."""
        self._nursery.start_soon(self._guarded, work)

    @staticmethod
    async def _guarded(work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except Exception:
            log.exception("writer task failed")

    def end(self, connection: Connection) -> None:
        """Stop reading ``connection`` and wind it down (idempotent; from any task)."""
        if connection not in self.connections or connection.parked is False:  # not ours, or winding down
            return
        if connection.parked is not None:
            connection.parked.cancel()  # the parked task winds it down when it has unwound
            return
        self._unregister(connection)
        connection.parked = False
        self._nursery.start_soon(self._wind_down, connection)

    def _unregister(self, connection: Connection) -> None:
        fd = connection.transport.fileno()  # type: ignore[attr-defined]
        if self._by_fd.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    async def _wind_down(self, connection: Connection) -> None:
        try:
            await connection.wind_down()
        except Exception:  # wind_down() contains peer errors; this is the last line against our own bugs
            log.exception("connection %s crashed", connection.remote)
        finally:
            self.connections.discard(connection)
            self.gateway.closed(connection)
            if self._stopping and not self.connections:
                self._running.cancel()

    # -- parking ------------------------------------------------------------------------------------

    def _park(self, connection: Connection, step: Step) -> None:
        self.parks += 1
        self._unregister(connection)
        connection.parked = trio.CancelScope()
        self._nursery.start_soon(self._run_parked, connection, step)

    async def _run_parked(self, connection: Connection, step: Step | None) -> None:
        scope = connection.parked
        assert isinstance(scope, trio.CancelScope)
        crashed = False
        try:
            with scope:
                try:
                    while step is not None:
                        await step
                        step = None if connection.ended else connection.resume()
                except Exception:
                    connection.failed()
                    crashed = True
        except BaseException:  # cancelled from outside (the engine stops at once): close, as serve() would
            connection.parked = False
            await self._closed(connection)
            raise
        connection.parked = None
        if crashed or connection.ended or scope.cancel_called or self._epoll.closed:
            connection.parked = False
            await self._wind_down(connection)
            return
        fd = connection.transport.fileno()  # type: ignore[attr-defined]
        self._by_fd[fd] = connection
        self._epoll.register(fd, select.EPOLLIN)  # level-triggered: bytes that came meanwhile wake us

    # -- deadlines ----------------------------------------------------------------------------------

    def arm(self, connection: Connection, deadline: float) -> None:
        """Make sure ``connection``'s deadlines are checked at ``deadline`` at the latest.

        Lazy: nothing happens when an entry at or before it is already in the heap (it re-checks
        and re-arms when it pops)."""
        if deadline >= connection.armed:
            return
        connection.armed = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), connection))
        wait = self._wait
        if wait is not None and deadline < wait.deadline:
            wait.deadline = deadline  # the timer sleeps until a later deadline: wake it sooner

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, connection = heapq.heappop(heap)
            if deadline != connection.armed or connection not in self.connections:
                continue  # stale: a newer entry stands for this connection, or it is gone
            connection.armed = math.inf
            if connection.parked is False:
                continue  # winding down: its own task bounds it
            if now >= connection._deadline():
                try:
                    connection._on_deadline()
                except Exception:
                    connection.failed()
                    self.end(connection)
                    continue
                if connection.ended:
                    self.end(connection)
                    continue
            self.arm(connection, connection._deadline())

    # -- the task -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Return from :meth:`run` once every connection has been wound down (graceful shutdown)."""
        self._stopping = True
        if not self.connections:
            self._running.cancel()

    async def run(self) -> None:
        """Read and time every connection until :meth:`stop` (and the last one is gone) or cancelled."""
        epoll_fd = self._epoll.fileno()
        try:
            with self._running:
                async with trio.open_nursery(strict_exception_groups=True) as timer:
                    timer.start_soon(self._timer)
                    while True:
                        await trio.lowlevel.wait_readable(epoll_fd)
                        self._read_ready()
        finally:
            await self._abandon()

    async def _timer(self) -> None:
        """Sleep until the first deadline in the heap, expire what is due, again (see :meth:`arm`)."""
        while True:
            with trio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf) as wait:
                self._wait = wait
                await trio.sleep_forever()
            self._wait = None
            self._expire(trio.current_time())

    def _read_ready(self) -> None:
        """One pass over the ready sockets, inside one ``hold`` of the turn scheduler: every room the
        pass makes ready runs in one scheduler pass after it (one commit for all of them), in this
        step when the scheduler was idle (``TurnScheduler.release``)."""
        passes = self._passes
        if passes is None:
            self._read_sockets()
            return
        passes.hold()
        try:
            self._read_sockets()
        finally:
            passes.release()

    def _read_sockets(self) -> None:
        by_fd = self._by_fd
        now = trio.current_time()  # once per pass: every connection fed in it shares it
        for fd, _ in self._epoll.poll(0):
            connection = by_fd.get(fd)
            if connection is None:
                continue  # parked or ended earlier in this pass
            data = connection.transport.recv_now(READ_BYTES)  # type: ignore[attr-defined]
            if data is None:
                continue  # spurious readiness
            if not data:
                self.end(connection)
                continue
            try:
                step = connection.feed(data, now)
            except Exception:
                connection.failed()
                self.end(connection)
                continue
            if step is not None:
                self._park(connection, step)
            elif connection.ended:
                self.end(connection)

    async def _abandon(self) -> None:
        """Cancelled (the engine stops at once): close every socket still in the epoll, each as its
        task would have (sessions ended, descriptor closed, one log line), within one second."""
        for fd in list(self._by_fd):
            self._epoll.unregister(fd)
        idle, self._by_fd = list(self._by_fd.values()), {}
        self._epoll.close()
        with trio.move_on_after(1, shield=True):
            async with trio.open_nursery() as nursery:
                for connection in idle:
                    connection.parked = False
                    nursery.start_soon(self._closed, connection)

    async def _closed(self, connection: Connection) -> None:
        try:
            await connection._closed()
        finally:
            self.connections.discard(connection)
            self.gateway.closed(connection)
