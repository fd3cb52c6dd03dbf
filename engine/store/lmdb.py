"""The default store: LMDB on disk behind a write-ahead log, written off the event loop, group commit.

Every room actor's turn is committed through :meth:`LmdbStore.commit` (the turn scheduler gathers the
turns of a pass into one batch). Commits are not written one by one: the first committer finding no
group under way (the leader) takes everything queued and makes it durable as **one** group, in one
hop to the store's writer thread.

A group is durable once it is one record of the store's log (engine/store/wal.py: one ``pwrite`` and
one ``fdatasync`` of a sequential file). An LMDB transaction with ``sync`` costs two syncs and a
``pwrite`` per B-tree page it dirtied, scattered over the file: measured here, a group of nine rooms'
turns cost ~360 µs of kernel CPU and 1.7 ms of wall time as an LMDB transaction, against ~50 µs and
0.2 ms as a log record, and the fsync's wall time is what sets how fast groups follow each other.
LMDB still holds everything, applied by **checkpoints**: one write transaction (``sync`` on, in a
thread of its own) applies every record logged since the last one, each dirty page written once per
checkpoint rather than once per commit. A checkpoint runs once ``checkpoint_bytes`` (512 KiB) were logged
or at the first commit ``checkpoint_interval`` (0.5 s) after the last one, and whenever a read needs LMDB to hold every
acknowledged write (a room's load, a scan): reads wait for it, except a table ``get``, answered from
the records logged since the checkpoint. Opening the store replays the records after LMDB's last
applied one (crash recovery), and a clean stop applies the rest.

Rules from the same reference (stack-limits.md §A.3), followed here: the environment and its databases
are opened once, before any worker thread; one group is written at a time, by its leader (room
disposals are queued like commits), in one thread hop per group, with the group's keys, values and log
record prepared on the loop so the thread runs no Python loop; a cancelled leader still waits for its
thread (never abandon a thread holding LMDB or the log); the environment is closed only after every
thread is done; a full map grows (``set_mapsize`` with no transaction open) and the transaction is
retried, so nothing is dropped or corrupted.

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
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgpack
import trio

from . import TABLES, Store, StoreError, StoreStatistics, Write
from .wal import Log, LogGap, encode_record

__all__ = ["LOCK_NAME", "LmdbStore", "StoreError", "StoreFailed", "StoreLocked", "StoreOpenError"]

T = TypeVar("T")

log = logging.getLogger("roost.store")

_SEP = b"\x00"
"""Room ids and keys never contain NUL (room ids are [A-Za-z0-9_-]), so ``room NUL key`` sorts by room."""

LOCK_NAME = "roost.lock"
"""The lock file in the store directory: ``flock``-ed by the owning process, which writes its pid in it."""

_PUTS_WAIT = 0.5
"""At most this long the event loop stands still for a checkpoint's puts (see ``_run_checkpoint``);
past it the loop goes on and the rest of the puts run contended."""

_INLINE_SYNC_MAX = 0.0005
"""Default bound (s) on the recent appends' time for a commit to be written on the loop's thread
(``LmdbStore.commit_now``): this machine's disk syncs a record in ~0.18 ms (p99 0.25); a disk over it
(a network volume: 1-10 ms) commits through the writer thread and the loop never waits for it."""

_SYNC_DECAY = 0.9
"""Per append, the sync estimate falls to this fraction of itself unless the append took longer:
after one 5 ms sync, ~22 appends (through the thread) bring it back under 0.5 ms."""

_APPLIED = b"applied"
"""Key, in LMDB's ``wal`` database, of the seq of the last log record applied (8 bytes, little-endian)."""

_Plan = list[tuple[str, list[bytes], list[tuple[bytes, bytes]]]]
"""A group's writes by database name (``rooms``, ``global`` or a table): (name, keys to delete, puts)."""

_Logged = tuple[int, list[bytes], _Plan]
"""A logged group not yet applied to LMDB: (seq, disposed room prefixes, plan)."""


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
        log: bool = True,
        checkpoint_bytes: int = 512 << 10,
        checkpoint_interval: float = 0.5,
        inline_sync_max: float = _INLINE_SYNC_MAX,
    ) -> None:
        """``group_commit=False`` writes each commit on its own (one fsync each): only for the
        benchmark's baselines. ``log=False`` commits every group straight to LMDB, as before the
        log (its two fsyncs and scattered pages per group): also only for benchmarks. A checkpoint
        applies the log to LMDB once ``checkpoint_bytes`` were logged since the last one, or
        at the first commit ``checkpoint_interval`` seconds after it, or when a read needs it. The size
        bounds what one checkpoint's transaction holds in memory (LMDB copies every page it dirties
        into malloc'd memory until the commit, and the process keeps that peak): measured with
        ``bench memory`` (10 k rooms created), 2 MiB gave 4.2-4.5 KB per idle room, 512 KiB 3.8,
        256 KiB 3.6 (target 4); at 200x1@30, 256 KiB's several checkpoints a second cost CPU and p50.
        ``inline_sync_max`` (s): a commit with no other under way writes its record on the loop's own
        thread while the log's recent syncs took no longer than this (``commit_now``); 0: never."""
        self.path = Path(path)
        self._group_commit = group_commit
        self._map_size = map_size
        self._max_map_size = max_map_size
        self._env: lmdb.Environment | None = None
        self._lock_fd: int | None = None
        self._rooms_db: Any = None
        self._global_db: Any = None
        self._table_dbs: dict[str, Any] = {}
        self._dbs: dict[str, Any] = {}
        """Every database a plan names, by name: ``rooms``, ``global`` and each table."""
        self._wal_db: Any = None
        self._queue: list[_Pending] = []
        self._writer: _WriterThread | None = None
        self._leading = False
        """A committer is writing groups (and every queued batch will be written by it or the next)."""
        self._read_limiter = trio.CapacityLimiter(4)
        self._remap = threading.Condition()
        """Held by ``_grow`` while it waits for reads in threads to end and remaps (``_read_sync``)."""
        self._readers = 0
        self._remapping = False
        self._running = False
        self._threads = 0
        self._threads_done = trio.Event()
        self._commits = 0
        self._writes = 0
        self._groups = 0
        self.map_growths = 0
        # -- the log (engine/store/wal.py) and its checkpoints --
        self._use_log = log
        self._log: Log | None = None
        self._checkpoint_bytes = checkpoint_bytes
        self._checkpoint_interval = checkpoint_interval
        self._seq = 0
        """The seq of the last record logged (durable)."""
        self._applied = 0
        """The seq of the last record applied to LMDB (``wal/applied`` there)."""
        self._unapplied: list[tuple[int, bytes]] = []
        """Logged groups not yet applied, in seq order, as their packed payloads: one bytes object
        a group, where its plan was hundreds of tuples and bytes objects the collector tracks (and
        whose peak stays in the process's RSS: measured +2 KB per room created in ``bench memory``).
        The checkpoint decodes them. The loop appends; a checkpoint thread applies
        a prefix and deletes it (``_apply_upto``, under ``_apply_lock``): both single list operations."""
        self._logged_bytes = 0
        """Bytes logged to the active segment since the last checkpoint began."""
        self._last_checkpoint = time.monotonic()
        self._appending = False
        """A record is being written (the writer thread uses the log's offset: no switch meanwhile)."""
        self._applying = False
        self._inactive_clean = True
        """Every record of the inactive segment is applied: a switch may overwrite it."""
        self._checkpoint_wanted = False
        self._apply_lock = threading.Lock()
        self._applied_event = trio.Event()
        """Set (and replaced) whenever a checkpoint ends, well or not."""
        self._apply_error: BaseException | None = None
        self._log_error: StoreFailed | None = None
        self._tables_logged: dict[tuple[str, bytes], tuple[int, bytes | None]] = {}
        """Table records logged but not yet applied: ``(table, key) -> (seq, value or None)``. ``get``
        reads them here, so a user or inbox lookup never waits for a checkpoint."""
        self._inline_sync_max = inline_sync_max
        self._sync_estimate = 2 * inline_sync_max
        """A decaying maximum of how long the log's appends took (s), in either thread: one slow
        sync sends the commits after it through the writer thread until the estimate decays. It
        starts over the bound: an opened store proves its disk quick (a few appends through the
        thread) before the loop ever waits for a sync (a slow disk after a restart would have
        blocked it once)."""
        self.inline_commits = 0
        """Commits written on the loop's thread (``commit_now``), of ``groups``."""
        self._nursery: trio.Nursery | None = None
        self.checkpoints = 0
        """Checkpoints done since start (transactions that applied the log to LMDB)."""

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
            self._wal_db = env.open_db(b"wal")
            self._dbs = {"rooms": self._rooms_db, "global": self._global_db, **self._table_dbs}
            info = env.info()
            self._env = env
            self._map_size = info["map_size"]
            if self._use_log:
                self._recover()
        except BaseException as exc:  # whatever failed, nothing stays open (the lock least of all)
            self._env = None
            if self._log is not None:
                self._log.close()
                self._log = None
            if env is not None:
                env.close()
            self._unlock()
            if isinstance(exc, StoreOpenError):
                raise
            if isinstance(exc, lmdb.Error):
                raise StoreOpenError(f"cannot open the store in {self.path}: {_lmdb_reason(exc)}") from None
            if isinstance(exc, (OSError, LogGap)):
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise StoreOpenError(f"cannot open the store in {self.path}: {reason}") from None
            raise

    def _recover(self) -> None:
        """Open the log and apply to LMDB what it holds beyond LMDB's last applied record (the
        groups acknowledged since the last checkpoint before a crash), in one transaction."""
        assert self._env is not None
        with self._env.begin(db=self._wal_db) as txn:
            raw = txn.get(_APPLIED)
        applied = 0 if raw is None else int.from_bytes(raw, "little")
        wal = self._log = Log(self.path)
        wal.open()
        records = wal.recover(applied)
        if records:
            for seq, payload in records:
                self._decode_replayed(seq, payload)  # every record checked before any is applied
            self._unapplied = list(records)
            self._apply_upto(records[-1][0])
        # Appends restart at log.0's start: neither segment may keep bytes behind the new chain (wal.py)
        wal.wipe(0)
        wal.wipe(1)
        self.replayed = len(records)
        """Log records applied when the store opened (groups acknowledged after the last checkpoint)."""
        self._seq = self._applied = wal.last_seq

    def _decode_replayed(self, seq: int, payload: bytes) -> _Logged:
        """A replayed record, checked before anything of it is applied. The trap: its CRC holds, but
        a payload of another build (a table this one lacks) or a crafted one raised msgpack, Key or
        Type errors from deep inside open."""
        try:
            logged = _decode_logged(seq, payload)
            for name, deletes, puts in logged[2]:
                if name not in self._dbs:
                    raise ValueError(f"unknown database {name!r}")
                if not all(isinstance(key, bytes) for key in deletes) or not all(
                        isinstance(key, bytes) and isinstance(value, bytes) for key, value in puts):
                    raise ValueError("a key or value is not bytes")
            if not all(isinstance(prefix, bytes) for prefix in logged[1]):
                raise ValueError("a disposed room is not bytes")
        except Exception as exc:
            raise StoreOpenError(f"cannot open the store in {self.path}: record {seq} of its log cannot be "
                                 f"replayed ({exc})") from None
        return logged

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
        if self._env is not None and self._unapplied and self._log_error is None:
            try:  # a clean stop leaves LMDB complete (the log would replay it at the next open anyway)
                self._apply_upto(self._seq)
            except Exception:
                log.exception("store checkpoint at close failed (the log keeps the writes)")
        log_, self._log = self._log, None
        if log_ is not None:
            log_.close()
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
            # Checkpoints run in tasks of this nursery. No timer of its own: a commit, a read or the
            # stop starts them (an idle store's log is as durable as LMDB), and a sleeping task here
            # would make a MockClock's autojump leap while a worker thread runs.
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    # No checkpoint may start once this nursery drains: it closes the moment its
                    # last task ends, before this task resumes, and a read starting one then got
                    # "Nursery is closed to new arrivals". Readers waiting for a checkpoint (one the
                    # writer was to start after its record) are woken to apply it themselves.
                    self._nursery = None
                    event, self._applied_event = self._applied_event, trio.Event()
                    event.set()
        finally:
            self._running = False
            self._nursery = None
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
        self._enter()
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
        except lmdb.Error as exc:
            raise StoreFailed(f"cannot read the store in {self.path}: {_lmdb_reason(exc)}") from None
        finally:
            self._leave()

    def _enter(self) -> None:
        """One more user of the environment (a thread, a leader): ``run`` closes LMDB only once every
        one has left (``_threads_done``). Always paired with :meth:`_leave` in a ``finally``."""
        self._threads += 1
        if self._threads == 1:
            self._threads_done = trio.Event()

    def _leave(self) -> None:
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
        self._enter()
        try:
            await self._lead_groups(me)
        finally:
            self._leave()

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
        """Plan the group's transaction on the loop, then log it (or, without the log, write it to
        LMDB) in one thread hop.

        Everything that is Python work (encoding keys, each key's last write, the put and delete
        lists, the log record) happens here, so the thread only calls into C: every py-lmdb call
        releases the GIL and must take it back, and while the loop is busy each retake can wait a
        switch interval (stack-limits §A.3, the GIL convoy). A full map is grown and the write
        retried inside the same hop (``_write_plan``).
        """
        disposed, plan, writes = _plan(group)
        if self._log is None:
            await self._hop(self._write_plan, disposed, plan)
        else:
            await self._log_group(disposed, plan)
        self._commits += len(group)
        self._writes += writes
        self._groups += 1

    async def _log_group(self, disposed: list[bytes], plan: _Plan) -> None:
        """Make the group durable as one log record; it reaches LMDB at a later checkpoint.

        The trap: after a failed write or ``fdatasync`` of the log nothing is known of what reached
        the disk, and a retried ``fsync`` can succeed over pages the kernel already dropped
        ("fsyncgate"): the store writes nothing more (every later commit fails, so rooms answer
        ``internal``), and a restart replays what the log holds."""
        seq, payload, record = self._log_prepare(disposed, plan)
        log_ = self._log
        assert log_ is not None
        self._appending = True
        try:
            await self._hop(self._append_timed, record)
        except OSError as exc:
            raise self._log_failed(exc) from None
        finally:
            self._appending = False
        self._logged(seq, payload, record, plan)

    def _log_prepare(self, disposed: list[bytes], plan: _Plan) -> tuple[int, bytes, bytes]:
        """Before a record is written (by the one leader, or inline): a due checkpoint begun (no
        record is being written now), the record built. Raises the error that stopped the log."""
        if self._log_error is not None:
            raise self._log_error
        if self._checkpoint_wanted or self._checkpoint_due():
            self._start_checkpoint()
        seq = self._seq + 1
        payload = _pack_logged(disposed, plan)
        return seq, payload, encode_record(seq, payload)

    def _append_timed(self, record: bytes) -> None:
        """``Log.append``, its time folded into the sync estimate unless it grew the segment (any
        thread: one float store)."""
        assert self._log is not None
        grows = not self._log.fits(len(record))  # then it also writes (and syncs) MBs of zeros:
        started = time.perf_counter()  # not what a record's sync costs
        self._log.append(record)
        if not grows:
            took = time.perf_counter() - started
            self._sync_estimate = max(took, self._sync_estimate * _SYNC_DECAY)

    def _log_failed(self, exc: OSError) -> StoreFailed:
        self._log_error = StoreFailed(f"cannot write the store's log in {self.path}: {exc.strerror or exc}")
        log.error("store log write failed: %s; no further commits until a restart", exc)
        self._appending = False
        if self._checkpoint_wanted:  # a read waits for the checkpoint after this record: start it,
            self._start_checkpoint()  # for the records before it (or it waits forever)
        return self._log_error

    def _logged(self, seq: int, payload: bytes, record: bytes, plan: _Plan) -> None:
        """After a record is durable: it is the last one, kept for the checkpoint, its table rows
        readable at once."""
        self._seq = seq
        self._unapplied.append((seq, payload))
        self._logged_bytes += len(record)
        tables = self._tables_logged
        for name, deletes, puts in plan:
            if name in self._table_dbs:
                for key in deletes:
                    tables[name, key] = (seq, None)
                for key, value in puts:
                    tables[name, key] = (seq, value)
        if self._checkpoint_wanted or self._checkpoint_due():
            self._start_checkpoint()

    def commit_now(self, batch: Sequence[Write], *, busy: bool = False) -> bool:
        """Commit ``batch`` on the loop's own thread when no other commit is under way and the log's
        recent syncs were quick (``inline_sync_max``): the record's write and ``fdatasync`` block the
        loop (a few hundred µs on this machine's disk), instead of a hand-off to the writer thread
        and back.

        Why (measured, ``bench inbound --rooms 1 --members 5 --senders 1 --layers``): a lone message's
        commit through the thread costs a task wake and a scheduler step of its own besides the futex
        and socket-pair hand-offs; inline, the message costs 446 k instructions instead of 558 k
        (task steps per message 3.0 -> 2.2), and no thread's wake-up latency comes on top of the sync. Under load (``busy``, or a group under way) it declines: the loop goes on while the
        thread syncs, the next pass lingers and gathers (measured at 10x10@40 with inline commits
        of several rooms' turns: 1.6x the CPU per delivery, small groups and no overlap). The
        trap is a slow disk: a loop blocked for milliseconds stalls every room, so a commit goes
        through the thread whenever the decaying maximum of recent appends is over the bound (one
        slow sync is enough, in either path), and when the segment must grow (MBs of zeros). Never
        without group commit (the benchmarks' one-commit-per-batch baselines).
        Returns False when it did not commit (the caller awaits ``commit``)."""
        log_ = self._log
        if (busy or log_ is None or self._inline_sync_max <= 0 or not self._running or self._leading or self._queue or not batch
                or not self._group_commit or self._sync_estimate > self._inline_sync_max or self._appending):
            return False
        for write in batch:  # as commit() does, before anything is planned
            if write.table is not None and write.table not in self._table_dbs:
                raise KeyError(write.table)
        disposed, plan, writes = _plan([_Pending(batch)])
        seq, payload, record = self._log_prepare(disposed, plan)
        if not log_.fits(len(record)):
            return False  # the grow goes through the thread (the plan is made again there: rare)
        self._appending = True
        try:
            self._append_timed(record)
        except OSError as exc:
            raise self._log_failed(exc) from None
        finally:
            self._appending = False
        self._logged(seq, payload, record, plan)
        self._commits += 1
        self._writes += writes
        self._groups += 1
        self.inline_commits += 1
        return True

    # -- checkpoints -------------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        return bool(self._unapplied) and not self._applying and (
            self._logged_bytes >= self._checkpoint_bytes
            or time.monotonic() - self._last_checkpoint >= self._checkpoint_interval)

    def _start_checkpoint(self) -> None:
        """Begin applying every logged record to LMDB, in a task of the store's own.

        Called only while no record is being written (the log's offset is the writer's). Appends
        switch to the other segment first, so the one left holds exactly the records being applied;
        after a failed checkpoint the inactive segment still holds unapplied records, so the retry
        applies without switching (overwriting it would lose them)."""
        if self._applying or self._nursery is None or not self._unapplied:
            self._checkpoint_wanted = bool(self._unapplied)
            return
        assert self._log is not None and not self._appending
        if self._inactive_clean:
            self._log.switch()
            self._inactive_clean = False
        self._applying = True
        self._checkpoint_wanted = False
        self._logged_bytes = 0
        self._last_checkpoint = time.monotonic()
        self._nursery.start_soon(self._checkpoint, self._seq, self._log.active ^ 1)

    def _checkpoint_sync(self, limit: int, left: int, puts_done: threading.Event) -> None:
        """In the checkpoint's thread: apply up to ``limit``, then wipe segment ``left`` (all of its
        records are then applied) before a switch may send appends back to it (wal.py)."""
        try:
            self._apply_upto(limit, puts_done)
        finally:
            puts_done.set()
        assert self._log is not None
        self._log.wipe(left)

    async def _checkpoint(self, limit: int, left: int) -> None:
        try:
            await self._run_checkpoint(limit, left)
        except Exception as exc:  # retried at the next one; reads waiting for it fail meanwhile
            log.exception("store checkpoint failed (the log keeps the writes)")
            self._apply_error = exc
        else:
            self._apply_error = None
            self._inactive_clean = True
            self.checkpoints += 1
            applied = self._applied
            tables = self._tables_logged
            for key in [key for key, (seq, _value) in tables.items() if seq <= applied]:
                del tables[key]
        finally:
            self._applying = False
            event, self._applied_event = self._applied_event, trio.Event()
            event.set()
        if self._checkpoint_wanted and not self._appending:
            self._start_checkpoint()

    async def _run_checkpoint(self, limit: int, left: int) -> None:
        """Run the checkpoint's transaction in a thread, and hold the event loop still (blocked on a
        ``threading.Event``, so without the GIL) until its puts are in, then await its commit.

        The trap (measured, stack-limits §A.3's GIL convoy): py-lmdb releases the GIL around every
        single put, even inside one ``putmulti``, and takes it back after; while the event loop is
        busy each retake waits for the loop to give the GIL up (up to a switch interval, 5 ms), and
        each one interrupts the loop. 50 k puts took 37 s that way against a busy thread, with 16 ms
        gaps in it; alone they take ~50 ms. A checkpoint of 0.5 s of a busy engine's writes is a
        few thousand puts: a few ms during which the loop stands still (bounded by ``_PUTS_WAIT``),
        against seconds of contention and a backlog that would grow. The commit's fsync runs with
        the loop going on (the GIL is released for it).
        """
        if self._env is None:
            raise RuntimeError("the store is not running")
        puts_done = threading.Event()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        ended: list[Any] = []

        def deliver(result: Any) -> None:  # in the thread, when the checkpoint is done
            ended.append(result)
            token.run_sync_soon(trio.lowlevel.reschedule, task)

        self._enter()
        try:
            trio.lowlevel.start_thread_soon(lambda: self._checkpoint_sync(limit, left, puts_done), deliver,
                                            name="roost store checkpoint")
            puts_done.wait(_PUTS_WAIT)
            # Not cancellable (Abort.FAILED): LMDB must never be closed under the thread.
            await trio.lowlevel.wait_task_rescheduled(lambda _raise_cancel: trio.lowlevel.Abort.FAILED)
            try:
                ended[0].unwrap()
            except lmdb.Error as exc:
                raise StoreFailed(f"cannot write the store in {self.path}: {_lmdb_reason(exc)}") from None
        finally:
            self._leave()

    def _apply_upto(self, limit: int, puts_done: threading.Event | None = None) -> None:
        """Apply the logged groups up to seq ``limit`` to LMDB in one transaction (any thread; under
        ``_apply_lock``, so two callers apply in seq order and never twice). ``puts_done`` is set
        once the transaction's puts are in (before its commit)."""
        with self._apply_lock:
            pending = self._unapplied
            count = 0
            while count < len(pending) and pending[count][0] <= limit:
                count += 1
            if not count:
                return
            items = [_decode_logged(seq, payload) for seq, payload in pending[:count]]
            self._write_logged(items, puts_done)
            del pending[:count]  # one operation: the loop may append meanwhile, never delete
            self._applied = items[-1][0]

    def _write_logged(self, items: list[_Logged], puts_done: threading.Event | None = None) -> None:
        """One transaction for a checkpoint's groups, merged first (:func:`_merge_logged`): one
        ``putmulti`` per database instead of one per group and database. The trap: every py-lmdb
        call releases the GIL and must take it back, and while the event loop is busy each retake
        can wait a switch interval (5 ms; stack-limits §A.3): a checkpoint of a second's groups
        applied group by group made hundreds of such calls, and the loop's p99 paid for them."""
        assert self._env is not None
        last = items[-1][0].to_bytes(8, "little")
        disposed, plan = _merge_logged(items)
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    self._apply_plan(txn, disposed, plan)
                    txn.put(_APPLIED, last, db=self._wal_db)
                    if puts_done is not None:
                        puts_done.set()  # the loop goes on while the commit syncs
                return
            except lmdb.MapFullError:  # the transaction was aborted: nothing of it is written
                self._grow()

    async def _caught_up(self) -> None:
        """Wait until LMDB holds every group logged so far (a read's view: what was acknowledged).

        Raises :class:`StoreFailed` when the checkpoint it waited for failed."""
        if self._log is None:
            return
        target = self._seq
        while self._applied < target:
            if self._nursery is None:  # stopping (or never run): apply here (a stop wakes the waiters)
                if self._env is None:
                    raise RuntimeError("the store is not running")
                self._apply_upto(target)
                return
            event = self._applied_event
            if self._appending:
                self._checkpoint_wanted = True  # the writer starts it after its record
            else:
                self._start_checkpoint()
            await event.wait()
            if self._applied < target and self._apply_error is not None:
                raise StoreFailed(f"cannot read the store in {self.path}: its log could not be applied "
                                  f"({self._apply_error})")

    def _write_plan(self, disposed: list[bytes], plan: _Plan) -> None:
        """In the worker thread: one transaction applying ``plan``; on a full map, grow and redo it
        (without the log)."""
        assert self._env is not None
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    self._apply_plan(txn, disposed, plan)
                return
            except lmdb.MapFullError:  # the transaction was aborted: nothing of it is written
                self._grow()

    def _apply_plan(self, txn: Any, disposed: list[bytes], plan: _Plan) -> None:
        for prefix in disposed:
            cursor = txn.cursor(db=self._rooms_db)
            if cursor.set_range(prefix):
                while cursor.key().startswith(prefix):
                    if not cursor.delete():
                        break
        dbs = self._dbs
        for name, deletes, puts in plan:
            db = dbs[name]
            for key in deletes:
                txn.delete(key, db=db)
            # putmulti: one call into C for all the group's puts (py-lmdb retakes the GIL per call).
            if puts:
                txn.cursor(db=db).putmulti(puts)

    async def _hop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the store's writer thread: one wake-up of this task, nothing else.

        ``trio.to_thread.run_sync`` costs ~270 k instructions per round trip here (inbound-path.md:
        a limiter acquire that is itself a scheduler pass, a context copy, a cancellation check and
        a message loop for ``from_thread``), and even ``start_thread_soon`` returns through
        ``run_sync_soon``: the wake-up socket wakes Trio's entry-queue task, which reschedules this
        one a pass later. The leader needs none of it: one group is written at a time, so one
        persistent thread takes the job from a ``SimpleQueue`` (C, no GIL while it waits) and, when
        done, writes a byte to a socket pair this task waits on: its wake-up is this task's own.

        The trap: the wait must not end before the job, or a cancelled store could close LMDB under
        a thread still inside a write transaction, and a group written but reported failed. So a
        cancelled wait waits again, shielded, and the hop returns as if it had not been cancelled:
        the cancellation comes back at the committer's next checkpoint (Trio's cancellation is
        level-triggered; as ``run_sync`` without ``abandon_on_cancel``). Only then, not on every
        hop: a ``CancelScope`` costs ~12 µs here (49 Python calls in Trio 0.35; measured ~30 k of a
        lone message's instructions), while the cancellable wait needs none.
        """
        if self._env is None:
            raise RuntimeError("the store is not running")
        if self._writer is None:
            self._writer = _WriterThread()
        writer = self._writer
        self._enter()
        try:
            writer.jobs.put((fn, args))
            try:
                await trio.lowlevel.wait_readable(writer.wake_r)
            except trio.Cancelled:
                # The job runs on: wait for it, shielded, and return its result. Cancellation is
                # level-triggered: the caller's next checkpoint raises it again.
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
            self._leave()

    def _read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """In a reader thread: run ``fn`` (one read transaction) while no ``_grow`` remaps the map."""
        with self._remap:
            while self._remapping:
                self._remap.wait()
            self._readers += 1
        try:
            return fn(*args)
        finally:
            with self._remap:
                self._readers -= 1
                if not self._readers:
                    self._remap.notify_all()

    def _grow(self) -> None:
        """Double the map. The trap: ``set_mapsize`` needs no transaction open in the whole process
        (LMDB unmaps the file; py-lmdb invalidates every open transaction), and table gets and the
        reads after a checkpoint run in other threads while a checkpoint (or a write without the log)
        fills the map: it waits for them to end and holds new ones back (``_read_sync``)."""
        assert self._env is not None
        if self._map_size * 2 > self._max_map_size:
            raise lmdb.MapFullError("the store reached its maximum map size")
        with self._remap:
            self._remapping = True
            try:
                while self._readers:
                    self._remap.wait()
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)
            finally:
                self._remapping = False
                self._remap.notify_all()
        self.map_growths += 1
        log.warning("store map grown to %d MiB", self._map_size >> 20)

    async def dispose_room(self, room: str) -> None:
        """Delete every key of ``room``, through the writer like any commit (in order with them, in
        the group's one transaction): LMDB has one writer, and a second write transaction begun in
        another thread would wait in C for the writer's lock."""
        await self._enqueue(_Pending((), dispose=room))

    # -- reads ------------------------------------------------------------------------------------

    async def load_room(self, room: str) -> dict[str, bytes]:
        await self._caught_up()
        return await self._in_thread(self._read_sync, self._load_room_sync, room, limiter=self._read_limiter)

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
        await self._caught_up()
        return await self._in_thread(self._read_sync, self._load_all_sync, limiter=self._read_limiter)

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
        await self._caught_up()
        return await self._in_thread(self._read_sync, self._load_global_sync, limiter=self._read_limiter)

    def _load_global_sync(self) -> dict[str, bytes]:
        assert self._env is not None
        with self._env.begin(db=self._global_db) as txn:
            return {bytes(k).decode(): bytes(v) for k, v in txn.cursor()}

    async def get(self, table: str, key: str) -> bytes | None:
        if self._tables_logged:
            logged = self._tables_logged.get((table, key.encode()))
            if logged is not None:  # logged, not yet applied: this is what a checkpoint will write
                await trio.lowlevel.checkpoint()
                return logged[1]
        return await self._in_thread(self._read_sync, self._get_sync, table, key, limiter=self._read_limiter)

    def _get_sync(self, table: str, key: str) -> bytes | None:
        assert self._env is not None
        with self._env.begin(db=self._table_dbs[table]) as txn:
            value = txn.get(key.encode())
            return None if value is None else bytes(value)

    async def scan(self, table: str, *, prefix: str = "", after: str | None = None,
                   limit: int = 100) -> list[tuple[str, bytes]]:
        await self._caught_up()
        return await self._in_thread(self._read_sync, self._scan_sync, table, prefix, after, limit, limiter=self._read_limiter)

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
        await self._caught_up()
        return await self._in_thread(self._read_sync, self._room_ids_sync, limiter=self._read_limiter)

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
        """Every stored (room, key), for tests and tools (synchronous: not for the event loop; it
        applies what the log holds first, in the calling thread)."""
        assert self._env is not None
        if self._unapplied:
            self._apply_upto(self._seq)
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
        """Groups written (each holds one or more commits): log records (each one ``fdatasync``), or
        LMDB transactions without the log."""
        return self._groups


def _plan(group: Sequence[_Pending]) -> tuple[list[bytes], _Plan, int]:
    """The group's transaction: the key prefixes of disposed rooms (deleted first), then (database
    name, keys to delete, (key, value) puts) per database; and the count of writes. It ends as the
    writes applied one by one would.

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
    spaces = [("rooms", last), ("global", global_last), *tables.items()]
    for name, final in spaces:
        if final:
            deletes = [key for key, value in final.items() if value is None]
            puts = [(key, value) for key, value in final.items() if value is not None]
            plan.append((name, deletes, puts))
    return disposed, plan, count


_PACKER = msgpack.Packer(use_bin_type=True)
"""Reused: ``msgpack.packb`` builds a Packer per call, ~a third of a small record's packing. Only the
event loop packs records (the leader plans its group there)."""


def _merge_logged(items: Sequence[_Logged]) -> tuple[list[bytes], _Plan]:
    """Several logged groups as one (disposed prefixes, plan) that ends as they would applied one by
    one: each key's last write wins, and a disposal drops the room's writes before it (its prefix is
    deleted from LMDB first, then the merged writes run, all of which came after it). Puts are
    sorted: LMDB inserts in key order touch each page once."""
    disposed: list[bytes] = []
    merged: dict[str, dict[bytes, bytes | None]] = {}
    for _seq, gone, plan in items:
        for prefix in gone:
            disposed.append(prefix)
            rooms = merged.get("rooms")
            if rooms:
                for key in [key for key in rooms if key.startswith(prefix)]:
                    del rooms[key]
        for name, deletes, puts in plan:
            final = merged.get(name)
            if final is None:
                final = merged[name] = {}
            for key in deletes:
                final[key] = None
            final.update(puts)
    out: _Plan = []
    for name, final in merged.items():
        if final:
            deletes = [key for key, value in final.items() if value is None]
            puts = sorted((key, value) for key, value in final.items() if value is not None)
            out.append((name, deletes, puts))  # type: ignore[arg-type]  # values are bytes here
    return disposed, out


def _pack_logged(disposed: list[bytes], plan: _Plan) -> bytes:
    """A group's log payload: msgpack of ``[disposed, plan]`` (tuples as arrays, keys and values as bin)."""
    return _PACKER.pack([disposed, plan])  # type: ignore[no-any-return]


def _decode_logged(seq: int, payload: bytes) -> _Logged:
    disposed, plan = msgpack.unpackb(payload, raw=False)
    return seq, disposed, [(name, deletes, [(key, value) for key, value in puts]) for name, deletes, puts in plan]




def _lmdb_reason(exc: lmdb.Error) -> str:
    """py-lmdb's message without the path it repeats (``"db: MDB_INVALID: File is not an LMDB file"``)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    head, sep, tail = text.partition(": ")
    return tail if sep and tail else text
