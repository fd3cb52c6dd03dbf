"""The default store: LMDB on disk, written off the event loop, group commit.

Every room actor awaits :meth:`LmdbStore.commit` once per turn. Commits are not written one by one:
the first committer of a scheduler pass (the leader) takes everything queued in that pass and writes
it in **one** LMDB write transaction, in one worker thread (a write transaction must begin and end on
one thread), with ``sync`` on, so one fsync makes a whole group durable. Measured here (reference/stack-limits.md
§A.3): one commit per write caps at ~2.5 k/s; groups of 100 reach ~120 k puts/s.

Rules from the same reference, followed here: the environment and its databases are opened once,
before any worker thread; one group is written at a time, by its leader (room disposals are queued
like commits), in one thread hop per group, with the group's keys and values prepared on the loop so
the thread runs no Python loop; a cancelled leader still waits for its thread (never abandon a thread
holding LMDB); the environment is closed only after every thread is done; a full map grows
(``set_mapsize`` with no transaction open) and the write is retried, so nothing is dropped or
corrupted.

One process owns a store directory. Two writers on one LMDB would each acknowledge their own chat
``n=2`` and a restart would lose one (and LMDB forbids opening one environment twice even in one
process: closing either drops the other's POSIX locks). So :meth:`LmdbStore.open` first takes an
exclusive ``flock`` on ``<dir>/roost.lock`` and holds it until the environment is closed; a second
claimant, in this process or another, gets :class:`StoreLocked`. The trap avoided: a pid file alone
goes stale when its owner is SIGKILLed, and a stale pid can be reused by an unrelated process. The
kernel drops a ``flock`` with its last descriptor, however the owner died, so a restart after a
crash just works; the pid written in the file only names the holder in the error.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import queue
import socket
import threading
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import trio

from . import TABLES, Store, StoreError, StoreStatistics, Write

__all__ = ["LOCK_NAME", "LmdbStore", "StoreError", "StoreFailed", "StoreLocked", "StoreOpenError"]

T = TypeVar("T")

log = logging.getLogger("roost.store")

_SEP = b"\x00"
"""Room ids and keys never contain NUL (room ids are [A-Za-z0-9_-]), so ``room NUL key`` sorts by room."""

LOCK_NAME = "roost.lock"
"""The lock file in the store directory: ``flock``-ed by the owning process, which writes its pid in it."""


class StoreOpenError(StoreError):
    """The store directory cannot be opened: not a directory, unwritable, not (or no longer) an LMDB
    environment."""


class StoreFailed(StoreError):
    """LMDB refused a read or a write of an open store (a damaged page, a full disk)."""


class StoreLocked(StoreOpenError):
    """Another open store (another process, or another ``LmdbStore`` in this one) owns the directory."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process that has not yet written its pid"
        super().__init__(f"{path} is in use by another Roost store ({holder})")
        self.path = path
        self.pid = pid


@dataclasses.dataclass(slots=True)
class _Pending:
    batch: Sequence[Write]
    dispose: str | None = None
    """A room whose every key this commit deletes (before its batch, which is then empty)."""
    error: BaseException | None = None
    done: bool = False
    """Its group's transaction ended (committed, or failed with ``error``)."""
    task: trio.lowlevel.Task | None = None
    """The committer parked until ``done`` or until it leads; None once woken, or if it was cancelled
    (its batch is still written: it was queued)."""
    lead: bool = False
    """Woken to write the next group (the previous leader's batch is durable, this one's is not)."""


class _WriterThread:
    """One thread that runs the leader's transactions, one at a time (see ``LmdbStore._hop``)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.result: tuple[bool, Any] = (True, None)
        threading.Thread(target=self._run, name="roost store writer", daemon=True).start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            fn, args = job
            try:
                self.result = (True, fn(*args))
            except BaseException as exc:  # handed to the leader, which raises it
                self.result = (False, exc)
            self._wake_w.send(b"\0")
        self._wake_w.close()

    def stop(self) -> None:
        """Let the thread end (it is idle: the store closes only once no job runs)."""
        self.jobs.put(None)
        self.wake_r.close()


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
        self._lock_fd: int | None = None
        self._rooms_db: Any = None
        self._global_db: Any = None
        self._table_dbs: dict[str, Any] = {}
        self._queue: list[_Pending] = []
        self._writer: _WriterThread | None = None
        self._leading = False
        """A committer is writing groups (and every queued batch will be written by it or the next)."""
        self._read_limiter = trio.CapacityLimiter(4)
        self._running = False
        self._threads = 0
        self._threads_done = trio.Event()
        self._commits = 0
        self._writes = 0
        self._groups = 0
        self.map_growths = 0

    # -- life cycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Claim the directory, then open the environment and its databases.

        Done by ``run`` unless already done (``roost serve`` opens the store before it writes anything
        else in the data directory, so a second server is refused before it touches a file). Raises
        :class:`StoreLocked` if another store owns the directory, :class:`StoreOpenError` if it cannot
        be opened; either way nothing is left open.
        """
        if self._env is not None:
            return
        self._lock()
        env: lmdb.Environment | None = None
        try:
            env = lmdb.open(
                str(self.path), map_size=self._map_size, max_dbs=16, sync=True, metasync=True, max_spare_txns=4
            )
            self._check_length(env)
            self._rooms_db = env.open_db(b"rooms")
            self._global_db = env.open_db(b"global")
            self._table_dbs = {name: env.open_db(name.encode()) for name in TABLES}
            info = env.info()
        except (lmdb.Error, StoreOpenError) as exc:
            if env is not None:
                env.close()
            self._unlock()
            if isinstance(exc, StoreOpenError):
                raise
            raise StoreOpenError(f"cannot open the store in {self.path}: {_lmdb_reason(exc)}") from None
        self._env = env
        self._map_size = info["map_size"]

    def _check_length(self, env: lmdb.Environment) -> None:
        """Refuse a ``data.mdb`` shorter than the pages its meta page counts (a truncated copy). The
        trap: LMDB maps the file, and touching a mapped page past its end is SIGBUS, not an error."""
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = (self.path / "data.mdb").stat().st_size
        if size < needed:
            raise StoreOpenError(f"cannot open the store in {self.path}: data.mdb is truncated "
                                 f"({size} bytes, its pages need {needed})")

    def close(self) -> None:
        """Close the environment and release the directory (``run`` does it when it ends).

        Only for a store that is not running: closing under a worker thread may crash the interpreter,
        so while one still runs this does nothing (the process keeps both until it exits)."""
        if self._threads:
            return
        env, self._env = self._env, None
        if env is not None:
            env.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
        self._unlock()

    def _lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise StoreOpenError(f"cannot open the store in {self.path}: not a directory") from None
        except OSError as exc:
            raise StoreOpenError(f"cannot open the store in {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # e.g. ENOLCK on some network filesystems
                raise StoreOpenError(f"cannot lock the store in {self.path}: {exc.strerror}") from None
            raise StoreLocked(self.path, int(holder) if holder.strip().isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # the kernel releases the flock with the descriptor; the stale pid is harmless

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store (if not yet open), accept commits until cancelled; close the environment
        last, and only then release the directory. Commits are written by their committers (see
        ``_enqueue``): a group being written when this stops ends first; later ones fail."""
        self.open()
        self._running = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._running = False
            # Closing the environment while a worker thread is inside a transaction "may crash the
            # interpreter" (py-lmdb): wait for every thread first (they finish; none is abandoned).
            with trio.move_on_after(10, shield=True):
                while self._threads:
                    await self._threads_done.wait()
            if not self._threads:
                self.close()
            else:  # a thread still holds LMDB: no new thread may use it, and the directory stays
                self._env = None  # locked until the process exits, so no other store opens it under them

    async def _in_thread(self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter) -> T:
        """Run ``fn`` in a worker thread, counted so the environment outlives every thread using it."""
        if self._env is None:
            raise RuntimeError("the store is not running")
        self._threads += 1
        self._threads_done = trio.Event() if self._threads == 1 else self._threads_done
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
        except lmdb.Error as exc:
            raise StoreFailed(f"cannot read the store in {self.path}: {_lmdb_reason(exc)}") from None
        finally:
            self._threads -= 1
            if not self._threads:
                self._threads_done.set()

    # -- writes ----------------------------------------------------------------------------------

    async def commit(self, batch: Sequence[Write]) -> None:
        if not batch:
            await trio.lowlevel.checkpoint()
            return
        for write in batch:  # here, not in the group: one bad batch must not fail its group's others
            if write.table is not None and write.table not in self._table_dbs:
                raise KeyError(write.table)
        await self._enqueue(_Pending(batch))

    async def _enqueue(self, pending: _Pending) -> None:
        """Queue ``pending``; return once its group's transaction is durable (or raise its error).

        Leader and followers, no writer task: the first committer finding no group under way leads at
        once: it takes the queue as one group, writes it in one thread hop and wakes its followers.
        Commits queued meanwhile form the next group: the leader hands the lead to the first of them
        still waiting, which writes it when it wakes (a wake it needed anyway). This spares the Event
        hand-offs to and from a writer task (two task wakes per group; inbound-path.md counts ~44 k
        instructions each): a lone commit costs the committer one thread hop. There is no commit
        window (a scheduler pass waited for more committers once): the rooms' commits already come
        gathered, one per pass of the turn scheduler (engine/scheduler.py), and the window cost a
        whole scheduler pass per group (33 k of 643 k instructions per lone message:
        ``bench inbound --rooms 1 --members 10 --senders 1``).

        A follower's wait is cancellable (its batch is still written: it was queued; nobody is told).
        A leader's is not: its thread hop is uncancellable, so no group is ever left without a writer.
        """
        if not self._running:
            # A committer cancelled with the store (an engine cancelled at once) sees its Cancelled,
            # not this error: cancellation is what stopped both, and raising a RuntimeError out of a
            # cancelled task turns a clean cancel into a crash of its nursery.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise RuntimeError("the store is not running")
        self._queue.append(pending)
        if self._leading:
            pending.task = trio.lowlevel.current_task()

            def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
                pending.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            self._leading = pending.lead = True
        if pending.lead:
            await self._lead(pending)
        if pending.error is not None:
            raise pending.error

    async def _lead(self, me: _Pending) -> None:
        """Write groups until ``me`` is durable and someone waiting can take the lead (or none is left).

        The leader counts as a user of the environment from the moment it leads, like a thread: a
        store cancelled together with its committers (an engine cancelled at once) waits for it in
        ``run`` instead of closing LMDB between its lead and its hop, which failed the group with
        "the store is not running" although the store was still open when it was queued.
        """
        self._threads += 1
        if self._threads == 1:
            self._threads_done = trio.Event()
        try:
            await self._lead_groups(me)
        finally:
            self._threads -= 1
            if not self._threads:
                self._threads_done.set()

    async def _lead_groups(self, me: _Pending) -> None:
        group: list[_Pending] = []
        try:
            while True:
                if self._group_commit:
                    group, self._queue = self._queue, []
                else:
                    group, self._queue = self._queue[:1], self._queue[1:]
                try:
                    await self._write_group(group)
                except Exception as exc:  # a failed group fails its committers, not the store
                    log.exception("store commit failed")
                    for pending in group:
                        pending.error = exc
                for pending in group:
                    pending.done = True
                    if pending.task is not None and pending is not me:
                        task, pending.task = pending.task, None
                        trio.lowlevel.reschedule(task)
                if not self._queue:
                    self._leading = False
                    return
                if me.done:
                    for pending in self._queue:
                        if pending.task is not None:
                            task, pending.task = pending.task, None
                            pending.lead = True
                            trio.lowlevel.reschedule(task)
                            return
                # else: my batch is not written yet, or no one queued still waits: write on
        except BaseException as exc:  # not an Exception (e.g. KeyboardInterrupt): nobody may wait forever
            for pending in [*group, *self._queue]:
                if pending.done:
                    continue
                pending.error, pending.done = RuntimeError("the store stopped before this batch was written"), True
                if pending.task is not None:
                    task, pending.task = pending.task, None
                    trio.lowlevel.reschedule(task)
            self._queue.clear()
            self._leading = False
            raise exc

    async def _write_group(self, group: list[_Pending]) -> None:
        """Plan the group's transaction on the loop, then run it in one thread hop.

        Everything that is Python work (encoding keys, each key's last write, the put and delete
        lists) happens here, so the thread only calls into LMDB: every py-lmdb call releases the GIL
        and must take it back, and while the loop is busy each retake can wait a switch interval
        (stack-limits §A.3, the GIL convoy). A full map is grown and the write retried inside the same
        hop (``_write_plan``).
        """
        disposed, plan, writes = _plan(group, self._rooms_db, self._global_db, self._table_dbs)
        await self._hop(self._write_plan, disposed, plan)
        self._commits += len(group)
        self._writes += writes
        self._groups += 1

    def _write_plan(self, disposed: list[bytes], plan: list[tuple[Any, list[bytes], list[tuple[bytes, bytes]]]]) -> None:
        """In the worker thread: one transaction applying ``plan``; on a full map, grow and redo it."""
        assert self._env is not None
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for prefix in disposed:
                        cursor = txn.cursor(db=self._rooms_db)
                        if cursor.set_range(prefix):
                            while cursor.key().startswith(prefix):
                                if not cursor.delete():
                                    break
                    for db, deletes, puts in plan:
                        for key in deletes:
                            txn.delete(key, db=db)
                        # putmulti: one call into C for all the group's puts (py-lmdb retakes the GIL per call).
                        if puts:
                            txn.cursor(db=db).putmulti(puts)
                return
            except lmdb.MapFullError:  # the transaction was aborted: nothing of it is written
                self._grow()

    async def _hop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the store's writer thread: one wake-up of this task, nothing else.

        ``trio.to_thread.run_sync`` costs ~270 k instructions per round trip here (inbound-path.md:
        a limiter acquire that is itself a scheduler pass, a context copy, a cancellation check and
        a message loop for ``from_thread``), and even ``start_thread_soon`` returns through
        ``run_sync_soon``: the wake-up socket wakes Trio's entry-queue task, which reschedules this
        one a pass later. The leader needs none of it: one group is written at a time, so one
        persistent thread takes the job from a ``SimpleQueue`` (C, no GIL while it waits) and, when
        done, writes a byte to a socket pair this task waits on: its wake-up is this task's own.

        The trap: the wait must not be cancellable, or a cancelled store could close LMDB under a
        thread still inside a write transaction: it is shielded, and a cancellation is delivered at
        the committer's next checkpoint (as ``run_sync`` without ``abandon_on_cancel`` does).
        """
        if self._env is None:
            raise RuntimeError("the store is not running")
        if self._writer is None:
            self._writer = _WriterThread()
        writer = self._writer
        self._threads += 1
        self._threads_done = trio.Event() if self._threads == 1 else self._threads_done
        try:
            writer.jobs.put((fn, args))
            with trio.CancelScope(shield=True):
                await trio.lowlevel.wait_readable(writer.wake_r)
            writer.wake_r.recv(16)
            ok, value = writer.result
            writer.result = (True, None)
            if not ok:
                if isinstance(value, lmdb.Error):
                    raise StoreFailed(f"cannot write the store in {self.path}: {_lmdb_reason(value)}") from None
                raise value
            return value  # type: ignore[no-any-return]
        finally:
            self._threads -= 1
            if not self._threads:
                self._threads_done.set()

    def _grow(self) -> None:
        assert self._env is not None
        if self._map_size * 2 > self._max_map_size:
            raise lmdb.MapFullError("the store reached its maximum map size")
        self._map_size *= 2
        self._env.set_mapsize(self._map_size)
        self.map_growths += 1
        log.warning("store map grown to %d MiB", self._map_size >> 20)

    async def dispose_room(self, room: str) -> None:
        """Delete every key of ``room``, through the writer like any commit (in order with them, in
        the group's one transaction): LMDB has one writer, and a second write transaction begun in
        another thread would wait in C for the writer's lock."""
        await self._enqueue(_Pending((), dispose=room))

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
        """One read transaction over the rooms table. Keys come sorted, so a room's records are
        consecutive: its id is decoded and its dict found once per room, not once per record (16
        records a room in ``bench restart``; the cursor yields ``bytes`` already: no copies)."""
        assert self._env is not None
        rooms: dict[str, dict[str, bytes]] = {}
        last: bytes | None = None
        records: dict[str, bytes] = {}
        with self._env.begin(db=self._rooms_db) as txn:
            for key, value in txn.cursor():
                room, _, name = key.partition(_SEP)
                if room != last:
                    last = room
                    records = rooms.setdefault(room.decode(), {})
                records[name.decode()] = value
        return rooms

    async def load_global(self) -> dict[str, bytes]:
        return await self._in_thread(self._load_global_sync, limiter=self._read_limiter)

    def _load_global_sync(self) -> dict[str, bytes]:
        assert self._env is not None
        with self._env.begin(db=self._global_db) as txn:
            return {bytes(k).decode(): bytes(v) for k, v in txn.cursor()}

    async def get(self, table: str, key: str) -> bytes | None:
        return await self._in_thread(self._get_sync, table, key, limiter=self._read_limiter)

    def _get_sync(self, table: str, key: str) -> bytes | None:
        assert self._env is not None
        with self._env.begin(db=self._table_dbs[table]) as txn:
            value = txn.get(key.encode())
            return None if value is None else bytes(value)

    async def scan(self, table: str, *, prefix: str = "", after: str | None = None,
                   limit: int = 100) -> list[tuple[str, bytes]]:
        return await self._in_thread(self._scan_sync, table, prefix, after, limit, limiter=self._read_limiter)

    def _scan_sync(self, table: str, prefix: str, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        assert self._env is not None
        start = prefix.encode()
        out: list[tuple[str, bytes]] = []
        with self._env.begin(db=self._table_dbs[table]) as txn:
            cursor = txn.cursor()
            if after is None or after.encode() < start:
                found = cursor.set_range(start)
            else:
                found = cursor.set_range(after.encode())
                if found and bytes(cursor.key()) == after.encode():
                    found = cursor.next()
            while found and len(out) < limit:
                key = bytes(cursor.key())
                if not key.startswith(start):
                    break
                out.append((key.decode(), bytes(cursor.value())))
                found = cursor.next()
        return out

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


def _plan(group: Sequence[_Pending], rooms_db: Any, global_db: Any, table_dbs: dict[str, Any]
          ) -> tuple[list[bytes], list[tuple[Any, list[bytes], list[tuple[bytes, bytes]]]], int]:
    """The group's transaction: the key prefixes of disposed rooms (deleted first), then (db, keys to
    delete, (key, value) puts) per database; and the count of writes. It ends as the writes applied
    one by one would.

    A disposal drops the writes to its room queued before it (they would be deleted) and keeps the
    ones after it (they run after the prefix is deleted).

    The trap: deletes go through ``txn.delete`` and puts through one ``putmulti`` after them, so a put
    followed by a delete of the same key, applied as they come, would end with the put. A batch is an
    ordered list and batches are queued in commit order: each key's last write wins first, then the
    deletes and the puts run. Room keys are ``room NUL key``; the room's prefix is encoded once per
    run of writes of one room (a turn's batch is one room's). A table write goes to its table's
    database.
    """
    last: dict[bytes, bytes | None] = {}
    global_last: dict[bytes, bytes | None] = {}
    tables: dict[str, dict[bytes, bytes | None]] = {}
    count = 0
    prefix_room: str | None = None
    prefix = b""
    disposed: list[bytes] = []
    for pending in group:
        if pending.dispose is not None:
            gone = pending.dispose.encode() + _SEP
            disposed.append(gone)
            for key in [key for key in last if key.startswith(gone)]:
                del last[key]
            continue
        batch = pending.batch
        count += len(batch)
        for write in batch:
            room = write.room
            if room is None:
                if write.table is None:
                    global_last[write.key.encode()] = write.value
                else:  # a known table: commit() refused any other before queueing the batch
                    tables.setdefault(write.table, {})[write.key.encode()] = write.value
                continue
            if room != prefix_room:
                prefix_room, prefix = room, room.encode() + _SEP
            last[prefix + write.key.encode()] = write.value
    plan = []
    spaces = [(rooms_db, last), (global_db, global_last)]
    spaces += [(table_dbs[name], final) for name, final in tables.items()]
    for db, final in spaces:
        if final:
            deletes = [key for key, value in final.items() if value is None]
            puts = [(key, value) for key, value in final.items() if value is not None]
            plan.append((db, deletes, puts))
    return disposed, plan, count


def _lmdb_reason(exc: lmdb.Error) -> str:
    """py-lmdb's message without the path it repeats (``"db: MDB_INVALID: File is not an LMDB file"``)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    head, sep, tail = text.partition(": ")
    return tail if sep and tail else text
