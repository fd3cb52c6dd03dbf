"""The default store: LMDB on disk, one writer off the event loop, group commit.

Every room actor awaits :meth:`LmdbStore.commit` once per turn. Commits are not written one by one:
the writer task takes everything queued since its last commit and writes it in **one** LMDB write
transaction, in one worker thread (a write transaction must begin and end on one thread), with
``sync`` on, so one fsync makes a whole group durable. Measured here (reference/stack-limits.md
§A.3): one commit per write caps at ~2.5 k/s; groups of 100 reach ~120 k puts/s.

Rules from the same reference, followed here: the environment and its databases are opened once,
before any worker thread; writes go through a one-thread ``CapacityLimiter``; a cancelled
``run_sync`` still waits for its thread (never abandon a thread holding LMDB); the environment is
closed only after the writer is done; a full map grows (``set_mapsize`` with no transaction open)
and the write is retried, so nothing is dropped or corrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import trio

from . import Store, StoreStatistics, Write

__all__ = ["LmdbStore"]

T = TypeVar("T")

log = logging.getLogger("roost.store")

_SEP = b"\x00"
"""Room ids and keys never contain NUL (room ids are [A-Za-z0-9_-]), so ``room NUL key`` sorts by room."""


@dataclasses.dataclass(slots=True)
class _Pending:
    batch: Sequence[Write]
    done: trio.Event
    error: BaseException | None = None


class LmdbStore(Store):
    """LMDB-backed store. Run it (``await nursery.start(store.run)``) before using it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 1 << 30,
        max_map_size: int = 1 << 40,
        group_commit: bool = True,
    ) -> None:
        """``group_commit=False`` writes each commit in its own transaction (one fsync each): only
        for the benchmark's baseline."""
        self.path = Path(path)
        self._group_commit = group_commit
        self._map_size = map_size
        self._max_map_size = max_map_size
        self._env: lmdb.Environment | None = None
        self._rooms_db: Any = None
        self._global_db: Any = None
        self._queue: list[_Pending] = []
        self._wakeup = trio.Event()
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(4)
        self._running = False
        self._threads = 0
        self._threads_done = trio.Event()
        self._inflight: list[_Pending] = []
        self._commits = 0
        self._writes = 0
        self._groups = 0
        self.map_growths = 0

    # -- life cycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the environment and its databases (done by ``run``; public for tools and tests)."""
        self.path.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(
            str(self.path), map_size=self._map_size, max_dbs=4, sync=True, metasync=True, max_spare_txns=4
        )
        self._rooms_db = env.open_db(b"rooms")
        self._global_db = env.open_db(b"global")
        self._env = env
        info = env.info()
        self._map_size = info["map_size"]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store, then run its writer until cancelled; close the environment last."""
        self.open()
        self._running = True
        try:
            task_status.started()
            await self._writer()
        finally:
            self._running = False
            for pending in self._inflight + self._queue:  # never leave a committer waiting forever
                pending.error = RuntimeError("the store stopped before this batch was written")
                pending.done.set()
            self._queue.clear()
            # Closing the environment while a worker thread is inside a transaction "may crash the
            # interpreter" (py-lmdb): wait for every thread first (they finish; none is abandoned).
            with trio.move_on_after(10, shield=True):
                while self._threads:
                    await self._threads_done.wait()
            env, self._env = self._env, None
            if env is not None and not self._threads:
                env.close()

    async def _in_thread(self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter) -> T:
        """Run ``fn`` in a worker thread, counted so the environment outlives every thread using it."""
        if self._env is None:
            raise RuntimeError("the store is not running")
        self._threads += 1
        self._threads_done = trio.Event() if self._threads == 1 else self._threads_done
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
        finally:
            self._threads -= 1
            if not self._threads:
                self._threads_done.set()

    # -- writes ----------------------------------------------------------------------------------

    async def commit(self, batch: Sequence[Write]) -> None:
        if not batch:
            await trio.lowlevel.checkpoint()
            return
        if not self._running:
            raise RuntimeError("the store is not running")
        pending = _Pending(batch, trio.Event())
        self._queue.append(pending)
        self._wakeup.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def _writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._group_commit:
                group, self._queue = self._queue, []
            else:
                group, self._queue = self._queue[:1], self._queue[1:]
                if self._queue:
                    self._wakeup.set()
            if not group:
                continue
            self._inflight = group
            try:
                await self._write_group(group)
            except Exception as exc:  # a failed group fails its committers, not the store
                log.exception("store commit failed")
                for pending in group:
                    pending.error = exc
            self._inflight = []
            for pending in group:
                pending.done.set()

    async def _write_group(self, group: list[_Pending]) -> None:
        writes = [write for pending in group for write in pending.batch]
        while True:
            try:
                # Not abandon_on_cancel: a cancelled commit still waits for its thread to finish.
                await self._in_thread(self._write_sync, writes, limiter=self._write_limiter)
                break
            except lmdb.MapFullError:
                await self._in_thread(self._grow, limiter=self._write_limiter)
        self._commits += len(group)
        self._writes += len(writes)
        self._groups += 1

    def _write_sync(self, writes: list[Write]) -> None:
        assert self._env is not None
        rooms, globals_ = self._rooms_db, self._global_db
        puts: list[tuple[bytes, bytes]] = []
        global_puts: list[tuple[bytes, bytes]] = []
        with self._env.begin(write=True) as txn:
            for write in writes:
                if write.room is None:
                    key = write.key.encode()
                    if write.value is None:
                        txn.delete(key, db=globals_)
                    else:
                        global_puts.append((key, write.value))
                else:
                    key = write.room.encode() + _SEP + write.key.encode()
                    if write.value is None:
                        txn.delete(key, db=rooms)
                    else:
                        puts.append((key, write.value))
            # putmulti: one call into C for all the group's puts (py-lmdb retakes the GIL per call).
            if puts:
                txn.cursor(db=rooms).putmulti(puts)
            if global_puts:
                txn.cursor(db=globals_).putmulti(global_puts)

    def _grow(self) -> None:
        assert self._env is not None
        if self._map_size * 2 > self._max_map_size:
            raise lmdb.MapFullError("the store reached its maximum map size")
        self._map_size *= 2
        self._env.set_mapsize(self._map_size)
        self.map_growths += 1
        log.warning("store map grown to %d MiB", self._map_size >> 20)

    async def dispose_room(self, room: str) -> None:
        await self._in_thread(self._dispose_sync, room, limiter=self._write_limiter)
        self._commits += 1

    def _dispose_sync(self, room: str) -> None:
        assert self._env is not None
        prefix = room.encode() + _SEP
        with self._env.begin(write=True, db=self._rooms_db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                while cursor.key().startswith(prefix):
                    if not cursor.delete():
                        break

    # -- reads ------------------------------------------------------------------------------------

    async def load_room(self, room: str) -> dict[str, bytes]:
        return await self._in_thread(self._load_room_sync, room, limiter=self._read_limiter)

    def _load_room_sync(self, room: str) -> dict[str, bytes]:
        assert self._env is not None
        prefix = room.encode() + _SEP
        out: dict[str, bytes] = {}
        with self._env.begin(db=self._rooms_db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    out[key[len(prefix) :].decode()] = bytes(value)
        return out

    async def load_all_rooms(self) -> dict[str, dict[str, bytes]]:
        """Every room's records in one pass (restart recovery)."""
        return await self._in_thread(self._load_all_sync, limiter=self._read_limiter)

    def _load_all_sync(self) -> dict[str, dict[str, bytes]]:
        assert self._env is not None
        rooms: dict[str, dict[str, bytes]] = {}
        with self._env.begin(db=self._rooms_db) as txn:
            for key, value in txn.cursor():
                room, _, name = bytes(key).partition(_SEP)
                rooms.setdefault(room.decode(), {})[name.decode()] = bytes(value)
        return rooms

    async def load_global(self) -> dict[str, bytes]:
        return await self._in_thread(self._load_global_sync, limiter=self._read_limiter)

    def _load_global_sync(self) -> dict[str, bytes]:
        assert self._env is not None
        with self._env.begin(db=self._global_db) as txn:
            return {bytes(k).decode(): bytes(v) for k, v in txn.cursor()}

    async def room_ids(self) -> list[str]:
        return await self._in_thread(self._room_ids_sync, limiter=self._read_limiter)

    def _room_ids_sync(self) -> list[str]:
        assert self._env is not None
        ids: list[str] = []
        with self._env.begin(db=self._rooms_db) as txn:
            cursor = txn.cursor()
            found = cursor.first()
            while found:
                room = bytes(cursor.key()).partition(_SEP)[0]
                ids.append(room.decode())
                found = cursor.set_range(room + b"\x01")  # jump past every key of this room
        return ids

    def keys(self) -> Iterator[tuple[str | None, str]]:
        """Every stored (room, key), for tests and tools (synchronous: not for the event loop)."""
        assert self._env is not None
        with self._env.begin() as txn:
            for key, _value in txn.cursor(db=self._rooms_db):
                room, _, name = bytes(key).partition(_SEP)
                yield room.decode(), name.decode()
            for key, _value in txn.cursor(db=self._global_db):
                yield None, bytes(key).decode()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(commits=self._commits, writes=self._writes, rooms=None)

    @property
    def groups(self) -> int:
        """LMDB transactions written (each holds one or more commits)."""
        return self._groups
