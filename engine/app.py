"""The engine: one object an app starts in its own nursery, or that ``roost serve`` runs.

``await nursery.start(engine.serve)`` binds the listener, starts every part, and returns the bound
``(host, port)`` once the rooms in the store are restored and clients are admitted (the listener
answers from before that: ``GET /health`` says ``starting`` and upgrades get 503 meanwhile). Nested
nurseries give an orderly teardown (the hypercorn shape): the gateway innermost, then the rooms, with
the store outermost. The library never installs signal handlers; the CLI does.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import coredis
import msgpack
import trio

from roost.protocol.errors import CloseCode

from .admin import Admin
from .bus import ClusterLobby, RevocationBus, SessionCounts
from .config import Config
from .gateway import Gateway
from .http import Exposition, Routes
from .inbox import InboxService
from .metrics import Metrics
from .operations import Operations
from .placement import ClusterMismatch, Placement, ShardHeld, ShardOwner
from .revocations import Revocations
from .room import RoomRuntime
from .router import Router
from .state import LAYOUT, LAYOUT_KEY, RoomState
from .store import Store, StoreError, Write
from .store.memory import MemoryStore
from .supervisor import Supervisor
from .users import Directory

__all__ = ["Engine"]

SHARD_KEY = "shard"
"""Global store key: this store's shard id in a cluster (made at its first start in one)."""
FENCE_KEY = "fence"
"""Global store key: the last lease token this store's owner took (the floor of the next one)."""
EPOCH_KEY = "epoch"
"""Global store key: the cluster directory's epoch this store's owner last saw (a directory without
one, seen by a process that knew one, lost its keys: it recovers before anything is claimed)."""

log = logging.getLogger("roost")


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Engine:
    """A Roost engine. Create it with a :class:`Config` (and optionally a store), then ``serve`` it."""

    def __init__(self, config: Config | None = None, *, store: Store | None = None) -> None:
        self.config = config or Config()
        self.store: Store = store or MemoryStore()
        self.revocations = Revocations(self.store, self.config.wall_clock)
        self.users = Directory(self.store, self.config.wall_clock)
        """The user directory (PROTOCOL.md §15); ``engine.ops`` has its service operations."""
        self.inbox = InboxService(self.store, self.config)
        """Every user's personal inbox and room index (engine/inbox.py); ``ops.notify`` writes to it."""
        self._router: Router | None = None
        self._gateway: Gateway | None = None
        self._operations: Operations | None = None
        self._supervisor: Supervisor | None = None
        self.address: tuple[str, int] | None = None
        self._shutdown = trio.Event()
        self.metrics = Metrics(self)
        """This engine's Prometheus metrics."""
        self.metrics_exposition: Exposition | None = self.metrics.exposition
        """What ``GET /metrics`` serves (body, content type): this engine's metrics unless replaced
        before ``serve``; None answers 404."""
        self.cluster: ShardOwner | None = None
        self.takeover = False
        """Set by a supervisor restarting a worker it reaped (roost.workers): the worker takes its lease
        over at once, and serves before Redis answers (engine/placement.py ShardOwner.start)."""
        """In a cluster (``config.cluster``), this process as its shard's owner (engine/placement.py)."""
        self.listeners: tuple[socket.socket, ...] = ()
        """Listening sockets bound by the caller, set before ``serve`` (``roost serve --workers``: the port
        every worker shares, then this worker's own); empty: ``serve`` binds ``host:port`` itself.
        The last one is this process's own address: what the cluster directory sends clients to."""
        self.http_routes: Routes | None = None
        """Extra GET routes on the port, set before ``serve`` (``roost serve --dev``: the demo site)."""

    def request_shutdown(self) -> None:
        """Stop gracefully: ``serve`` closes clients with 1001 "resume", lets rooms commit, and returns.

        Cancelling ``serve`` instead stops at once (nothing acknowledged is lost either way: replies
        wait for their commit).
        """
        self._shutdown.set()

    @property
    def shutdown_requested(self) -> bool:
        """Whether ``request_shutdown`` was called."""
        return self._shutdown.is_set()

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the running engine."""
        if self.address is None:
            raise RuntimeError("the engine is not serving")
        host, port = self.address
        return f"ws://{host}:{port}/"

    @property
    def ops(self) -> Operations:
        """In-process operations: publish, kick, close a room, read its state, revoke tokens."""
        if self._operations is None:
            raise RuntimeError("the engine is not serving")
        return self._operations

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError("the engine is not serving")
        return self._gateway

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError("the engine is not serving")
        return self._router

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``task_status.started`` gets the bound ``(host, port)`` once rooms are
        restored and clients are admitted.

        The listener accepts as soon as the store is open, before the rooms in it are restored, so that
        an orchestrator's health check gets an answer (``GET /health``: 503 ``starting``) instead of a
        refused connection. Until the restore is complete, WebSocket upgrades and the service API
        answer 503 with ``Retry-After``: no client reaches a room before every room is back (a client
        that reconnects right after a restart then finds its room and resyncs: the event replay
        buffer is in memory). :attr:`address` is set from the moment the listener accepts.
        """
        config = self.config
        listeners = self.listeners or (_listen(config.host, config.port),)
        try:
            async with contextlib.AsyncExitStack() as stack:
                redis = None
                if config.cluster is not None:
                    redis = await stack.enter_async_context(coredis.Redis.from_url(
                        config.cluster, connect_timeout=2, stream_timeout=2, verify_version=False))
                await self._serve(listeners, redis, task_status)
        finally:
            if not self.listeners:  # the caller's are the caller's to close
                listeners[0].close()
            self.address = None

    async def _serve(self, listeners: tuple[socket.socket, ...], redis: coredis.Redis[bytes] | None,
                     task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        listener = listeners[0]
        config = self.config
        async with trio.open_nursery(strict_exception_groups=True) as store_nursery:
            await store_nursery.start(self.store.run)
            await self.revocations.load()
            if redis is not None:  # every process of the cluster hears every revocation (engine/bus.py)
                bus = RevocationBus(redis, config.cluster_prefix, self.revocations)
                self.revocations.publish = bus.publish
                await store_nursery.start(bus.run)
            users_nursery = await store_nursery.start(self._run_inside, self.users.run)
            inbox_nursery = await store_nursery.start(self._run_inside, self.inbox.run)
            cluster = None if redis is None else await self._shard_owner(redis, listeners[-1])
            async with trio.open_nursery(strict_exception_groups=True) as rooms_nursery:
                self._supervisor = Supervisor(rooms_nursery, self.store, config, self._room_gone,
                                              stats=self.metrics.rooms, notifier=self.inbox,
                                              on_disposed=None if cluster is None else
                                              (lambda runtime: cluster.forget(runtime.room_id, runtime.code)))
                self._router = Router(config, self._supervisor, cluster=cluster)
                self.inbox.rooms = self._router.get
                operations = Operations(self._router, self.revocations, self.users, self.inbox)
                admin = Admin(config.service_key, operations, self.statistics,
                              on_refused=self._service_auth_refused, limits=config.limits)
                self._gateway = Gateway(config, self._router, self.revocations, admin,
                                        exposition=self.metrics_exposition, routes=self.http_routes,
                                        users=self.users)
                gateway = self._gateway
                operations.close_sessions = lambda user: gateway.close_user(
                    user, CloseCode.USER_MERGED, "merged into another user")
                self._gateway.inbox = self.inbox
                by_user = self._gateway.by_user
                self.inbox.sessions = lambda user: by_user.get(user, ())
                async with trio.open_nursery(strict_exception_groups=True) as gateway_nursery:
                    await gateway_nursery.start(self._gateway.run, *listeners)
                    host, port = listener.getsockname()[:2]
                    self.address = (host, port)
                    log.info("roost listening on ws://%s:%d/ (restoring rooms)", host, port)
                    await self._restore_rooms()
                    if cluster is not None:  # now that its rooms are known: claim the shard, register them
                        assert redis is not None
                        counts = SessionCounts(redis, cluster, gateway.user_sessions)
                        cluster.registered.append(counts.republish)
                        router = self._router
                        lobby = ClusterLobby(redis, cluster, lambda: {
                            room_id: runtime.info for room_id, runtime in router.rooms.items()
                            if runtime.public and runtime.info is not None and not runtime.closed})
                        cluster.registered.append(lobby.republish)
                        router.cluster_lobby = lobby
                        await store_nursery.start(lobby.run)
                        gateway.sessions_elsewhere = counts.elsewhere
                        gateway.sessions_changed = counts.changed
                        await store_nursery.start(counts.run)
                        try:
                            await cluster.start()
                        except ShardHeld as exc:
                            raise StoreError(f"this data directory's shard {cluster.shard} is served at "
                                             f"{exc.holder.address}: is this a copy of another node's data "
                                             "directory? Each node needs its own") from None
                        except ClusterMismatch as exc:
                            raise StoreError(str(exc)) from None
                        await store_nursery.start(cluster.run)
                    self._operations = operations  # engine.ops too: not before every room is back
                    self._gateway.serving()
                    log.info("roost serving on ws://%s:%d/", host, port)
                    task_status.started((host, port))
                    await self._shutdown.wait()
                    # Graceful shutdown, outside in: close every client with "going away" and a
                    # resume hint, still accepting (health says "draining", upgrades get 503)...
                    log.info("shutting down: closing %d connections", len(self._gateway.connections))
                    await self._gateway.drain(CloseCode.GOING_AWAY, "resume", config.close_timeout + 1)
                    # ...then stop accepting, drop what came in meanwhile (the gateway returns
                    # once every connection is gone; an HTTP exchange within its deadline)...
                    self._gateway.stop_accepting()
                    self._gateway.close_all(CloseCode.GOING_AWAY, "resume")
                    gateway_nursery.cancel_scope.deadline = trio.current_time() + config.close_timeout + 1
                # ...then let every room finish its turn: its last writes are committed...
                self._supervisor.stop()  # sleeping rooms stay asleep (nothing to finish)
                for runtime in list(self._router.rooms.values()):
                    runtime.stop()
                rooms_nursery.cancel_scope.deadline = trio.current_time() + config.close_timeout + 1
            if cluster is not None:  # ...give the shard up: other nodes answer "unavailable" at once...
                await cluster.release()
            # ...then let the inbox writer commit what is queued (room logic posts with its turns)...
            self.inbox.stop()
            inbox_nursery.cancel_scope.deadline = trio.current_time() + config.close_timeout + 1
            # ...and the directory (a turn in flight is committed: a store leader is shielded)...
            users_nursery.cancel_scope.cancel()
            # ...and stop the store last (its writer has nothing left to write).
            store_nursery.cancel_scope.cancel()
        log.info("stopped")

    async def _shard_owner(self, redis: coredis.Redis[bytes], listener: socket.socket) -> ShardOwner:
        """This process as its store's shard owner in the cluster: the shard's id and last token are
        kept in the store itself (the environment is what a shard is), the lease taken at ``start``."""
        config = self.config
        stored = await self.store.load_global()
        if SHARD_KEY in stored:
            shard = msgpack.unpackb(stored[SHARD_KEY])
        else:
            shard = "s" + secrets.token_hex(8)
            await self.store.commit([Write(None, SHARD_KEY, msgpack.packb(shard))])
        floor = msgpack.unpackb(stored[FENCE_KEY]) if FENCE_KEY in stored else 0
        epoch = msgpack.unpackb(stored[EPOCH_KEY]) if EPOCH_KEY in stored else ""
        address = config.advertise_url
        if address is None:
            host, port = listener.getsockname()[:2]
            address = f"ws://[{host}]:{port}/" if ":" in host else f"ws://{host}:{port}/"
        placement = Placement(redis, config.cluster_prefix, lease_ms=int(config.lease_period * 1000), epoch=epoch)

        async def record(token: int, epoch: str) -> None:
            await self.store.commit([Write(None, FENCE_KEY, msgpack.packb(token)),
                                     Write(None, EPOCH_KEY, msgpack.packb(epoch))])

        def rooms() -> list[tuple[str, str]]:
            router = self._router
            return [] if router is None else [(room.room_id, room.code) for room in router.rooms.values() if not room.closed]

        def lost(reason: str) -> None:
            log.error("stopping: %s", reason)
            self.request_shutdown()

        self.cluster = ShardOwner(placement, shard, address, floor=floor, rooms=rooms, record=record,
                                  on_lost=lost, takeover=self.takeover)
        return self.cluster

    async def _run_inside(self, run: Callable[..., Awaitable[None]], *,
                          task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
        """A store user (the inbox writer, the directory) in a nursery of its own, inside the store's,
        so it stops after the rooms (whose logic posts to it) and before the store. The trap: in the
        store's own nursery it would be cancelled with the store, and a commit of its last turn could
        reach a store that is already closing ("the store is not running")."""
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            await nursery.start(run)
            task_status.started(nursery)

    async def _restore_rooms(self) -> None:
        assert self._router is not None
        await self._check_layout()
        records = await self.store.load_all_rooms()
        now = trio.current_time()
        # Restoring allocates ~15 long-lived objects per record: with the collector on, it runs
        # full collections over a heap that only grows (measured: 1.5 s of 4.5 s for 10 k rooms).
        collecting = gc.isenabled()
        gc.disable()
        try:
            for room_id, room_records in records.items():
                if "meta" not in room_records:
                    log.warning("room %s has stored keys but no meta: skipped", room_id)
                    continue
                try:
                    state = RoomState.restore(room_records, now=now, grace=self.config.reconnect_grace,
                                              history_limit=self.config.history_limit,
                                              replay_limit=self.config.replay_events)
                except Exception as exc:  # refuse to start rather than drop a room's acknowledged data
                    raise StoreError(f"cannot restore room {room_id}: its stored records do not decode "
                                     f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
                self._router.restore(state)
                if len(self._router.rooms) % 500 == 0:
                    await trio.lowlevel.checkpoint()  # a long restore must not freeze an embedding app
        finally:
            # The restored rooms are long-lived: freeze them (move them out of the collector's
            # generations), or the first full collection after re-enabling walks them all (~1 s).
            gc.freeze()
            if collecting:
                gc.enable()
        if records:
            log.info("restored %d rooms", len(self._router.rooms))

    async def _check_layout(self) -> None:
        """Refuse a data directory written by a later build (``state.LAYOUT``); mark an earlier or new
        one as this build's before any room writes to it."""
        stored = (await self.store.load_global()).get(LAYOUT_KEY)
        layout = 1 if stored is None else msgpack.unpackb(stored)
        if type(layout) is not int or layout > LAYOUT:
            raise StoreError(f"the store was written by a later Roost (data layout {layout!r}; this build "
                             f"reads layouts up to {LAYOUT}): start that build, or a later one")
        if layout < LAYOUT:
            await self.store.commit([Write(None, LAYOUT_KEY, msgpack.packb(LAYOUT))])

    def _service_auth_refused(self) -> None:
        if self._gateway is not None:
            self._gateway.stats["service_auth_failures"] += 1

    def _room_gone(self, runtime: RoomRuntime) -> None:
        if self._router is not None:
            self._router.forget(runtime)

    def connect_memory(self) -> trio.abc.Stream:
        """A client stream served by this engine without a socket (the test kit uses it with MockClock)."""
        return self.gateway.open_memory_connection()

    def statistics(self) -> dict[str, Any]:
        """Counters for the admin ``stats`` operation and metrics."""
        gateway, router = self.gateway, self.router
        store = self.store.statistics()
        return {
            "connections": len(gateway.connections),
            "sessions": len(gateway.by_sid),
            "rooms": len(router.rooms),
            "restarts": self._supervisor.restarts if self._supervisor else 0,
            "store_commits": store.commits,
            "revocations": len(self.revocations),
            **dict(gateway.stats),
        }
