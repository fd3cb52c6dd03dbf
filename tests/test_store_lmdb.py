"""The LMDB store: group commit, reads, disposal, and a full map that grows instead of failing."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.store import Write
from roost.store.lmdb import LOCK_NAME, LmdbStore, StoreFailed, StoreLocked, StoreOpenError


@pytest.fixture
async def store(nursery: trio.Nursery, tmp_path: Path) -> LmdbStore:
    store = LmdbStore(tmp_path / "db")
    await nursery.start(store.run)
    return store


def before_group_writes(store: LmdbStore, hook) -> None:
    """Run ``hook()`` in the writer thread before each group is written (the log's append, or the
    LMDB transaction of a store without the log); it may block, or raise to fail the write. The
    store must be open (its log exists from then)."""
    if store._log is not None:
        append = store._log.append

        def gated_append(record: bytes) -> None:
            hook()
            append(record)

        store._log.append = gated_append  # type: ignore[method-assign]
    else:
        write_plan = store._write_plan

        def gated_plan(disposed, plan) -> None:
            hook()
            write_plan(disposed, plan)

        store._write_plan = gated_plan  # type: ignore[method-assign]


async def test_commit_then_read_back(store: LmdbStore) -> None:
    await store.commit([Write("r1", "meta", b"m"), Write("r1", "chat:1", b"c1"), Write("r2", "meta", b"x"),
                        Write(None, "rev:jti:a", b"1")])
    assert await store.load_room("r1") == {"meta": b"m", "chat:1": b"c1"}
    assert await store.room_ids() == ["r1", "r2"]
    assert await store.load_global() == {"rev:jti:a": b"1"}
    assert await store.load_all_rooms() == {"r1": {"meta": b"m", "chat:1": b"c1"}, "r2": {"meta": b"x"}}
    await store.commit([Write("r1", "chat:1", None), Write(None, "rev:jti:a", None)])
    assert await store.load_room("r1") == {"meta": b"m"}
    assert await store.load_global() == {}
    assert await store.load_room("nope") == {}


async def test_a_group_applies_its_writes_in_order(store: LmdbStore) -> None:
    """A put then a delete of one key in one batch leaves no key, and a delete then a put leaves the
    put: the store's contract, whichever order it hands the writes to LMDB in."""
    await store.commit([Write("r1", "member:ann", b"joined"), Write("r1", "member:ann", None),
                        Write("r1", "member:bob", None), Write("r1", "member:bob", b"joined"),
                        Write(None, "rev:a", b"1"), Write(None, "rev:a", None)])
    assert await store.load_room("r1") == {"member:bob": b"joined"}
    assert await store.load_global() == {}


_KEYS = st.sampled_from([("r1", "a"), ("r1", "b"), ("r2", "a"), (None, "g")])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_KEYS, st.one_of(st.none(), st.binary(min_size=1, max_size=4))), max_size=12))
async def test_a_group_ends_as_its_writes_applied_one_by_one(tmp_path: Path, writes: list) -> None:
    model: dict[tuple[str | None, str], bytes] = {}
    for key, value in writes:
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value
    async with trio.open_nursery() as nursery:
        store = LmdbStore(tmp_path / f"db-{len(os.listdir(tmp_path))}")
        await nursery.start(store.run)
        await store.commit([Write(room, key, value) for (room, key), value in writes])
        stored = {(room, key): value for room in ("r1", "r2") for key, value in (await store.load_room(room)).items()}
        stored |= {(None, key): value for key, value in (await store.load_global()).items()}
        nursery.cancel_scope.cancel()
    assert stored == model


async def test_a_room_id_that_prefixes_another_stays_separate(store: LmdbStore) -> None:
    await store.commit([Write("r1", "meta", b"a"), Write("r10", "meta", b"b")])
    assert await store.load_room("r1") == {"meta": b"a"}
    await store.dispose_room("r1")
    assert await store.room_ids() == ["r10"]
    assert sorted(store.keys()) == [("r10", "meta")]


async def test_concurrent_commits_share_transactions(store: LmdbStore) -> None:
    async def commit(i: int) -> None:
        await store.commit([Write(f"r{i}", "meta", b"x" * 100)])

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(commit, i)
    assert len(await store.room_ids()) == 200
    assert store.statistics().commits == 200
    assert store.groups < 50  # group commit: far fewer fsyncs than commits


async def test_a_full_map_grows_and_nothing_is_lost(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The map fills in a checkpoint (the log applied to LMDB): it grows there, and the checkpoint
    is retried in the same transaction's place."""
    store = LmdbStore(tmp_path / "small", map_size=256 * 1024, checkpoint_bytes=100_000)
    await nursery.start(store.run)
    for i in range(40):
        await store.commit([Write("big", f"k{i}", bytes([i]) * 20_000)])
    records = await store.load_room("big")
    assert store.map_growths >= 1 and store.checkpoints >= 2
    assert len(records) == 40 and all(records[f"k{i}"] == bytes([i]) * 20_000 for i in range(40))


async def test_data_survives_reopening(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        first = LmdbStore(tmp_path / "db")
        await nursery.start(first.run)
        await first.commit([Write("r1", "meta", b"kept")])
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        second = LmdbStore(tmp_path / "db")
        await nursery.start(second.run)
        assert await second.load_room("r1") == {"meta": b"kept"}
        nursery.cancel_scope.cancel()


async def test_commit_needs_a_running_store(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not running"):
        await LmdbStore(tmp_path / "db").commit([Write("r", "k", b"v")])
    await LmdbStore(tmp_path / "db").commit([])  # an empty batch is a no-op


async def test_without_group_commit_each_commit_is_its_own_transaction(nursery: trio.Nursery, tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", group_commit=False)
    await nursery.start(store.run)

    async def commit(i: int) -> None:
        await store.commit([Write(f"r{i}", "meta", b"x")])

    async with trio.open_nursery() as inner:
        for i in range(20):
            inner.start_soon(commit, i)
    assert store.groups == 20 and len(await store.room_ids()) == 20


async def test_the_environment_outlives_every_worker_thread(tmp_path: Path, monkeypatch) -> None:
    """Cancelling the store while a read runs in a thread must not close LMDB under that thread."""
    store = LmdbStore(tmp_path / "db")
    errors: list[str] = []
    original = store._load_room_sync

    def slow(room: str) -> dict[str, bytes]:
        time.sleep(0.3)
        try:
            return original(room)
        except BaseException as error:
            errors.append(repr(error))
            raise

    monkeypatch.setattr(store, "_load_room_sync", slow)

    async def reader() -> None:
        await store.load_room("r1")

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert errors == []


async def test_a_second_store_on_one_directory_is_refused_while_the_first_runs(nursery: trio.Nursery, tmp_path: Path) -> None:
    """One owner per directory, in one process too (flock locks are per open file, not per process)."""
    first = LmdbStore(tmp_path / "db")
    await nursery.start(first.run)
    await first.commit([Write("r1", "meta", b"first")])
    second = LmdbStore(tmp_path / "db")
    with pytest.raises(StoreLocked) as info:
        second.open()
    assert info.value.pid == os.getpid() and info.value.path == tmp_path / "db"
    assert str(info.value) == f"{tmp_path / 'db'} is in use by another Roost store (pid {os.getpid()})"
    with pytest.raises(StoreLocked):
        await nursery.start(second.run)
    await first.commit([Write("r1", "chat:1", b"still mine")])  # the first is untouched
    assert await first.load_room("r1") == {"meta": b"first", "chat:1": b"still mine"}


async def test_a_stopped_store_releases_its_directory(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(LmdbStore(tmp_path / "db").run)
        nursery.cancel_scope.cancel()
    reopened = LmdbStore(tmp_path / "db")
    reopened.open()  # no StoreLocked: the lock went with the environment
    assert (tmp_path / "db" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    reopened.close()
    reopened.close()  # idempotent


@pytest.mark.parametrize("damage", ["file", "corrupt"])
def test_a_directory_that_is_no_store_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "db"
    if damage == "file":
        path.write_text("not a directory")
        expected = f"cannot open the store in {path}: not a directory"
    else:
        path.mkdir()
        (path / "data.mdb").write_bytes(os.urandom(20_000))
        expected = f"cannot open the store in {path}: MDB_INVALID: File is not an LMDB file"
    with pytest.raises(StoreOpenError) as info:
        LmdbStore(path).open()
    assert str(info.value) == expected
    if damage == "corrupt":  # refused without keeping the lock: a repaired directory opens at once
        (path / "data.mdb").unlink()
        store = LmdbStore(path)
        store.open()
        store.close()


async def _store_with_rooms(path: Path, rooms: int = 50) -> None:
    async with trio.open_nursery() as nursery:
        store = LmdbStore(path)
        await nursery.start(store.run)
        for i in range(rooms):
            await store.commit([Write(f"r{i}", "meta", bytes([i]) * 3000)])
        nursery.cancel_scope.cancel()


def damage_every_page_but_the_main_root(path: Path) -> None:
    """Zero every page after the two meta pages except the main database's root (which names the
    ``rooms`` database): LMDB then opens the environment and fails on the first read. Offsets are
    those of a 64-bit LMDB meta page (page header 16 bytes; ``mm_dbs[MAIN].md_root`` at 128,
    ``mm_last_pg`` at 136, ``mm_txnid`` at 144)."""
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    page = 4096
    txnid, root, last = max(
        (struct.unpack_from("<Q", raw, meta * page + 144)[0], *struct.unpack_from("<QQ", raw, meta * page + 128))
        for meta in (0, 1)
    )
    assert txnid > 0 and root >= 2
    for number in range(2, last + 1):
        if number != root:
            raw[number * page : (number + 1) * page] = bytes(page)
    data.write_bytes(bytes(raw))


async def test_a_damaged_page_is_a_store_error_not_an_lmdb_one(tmp_path: Path) -> None:
    """Opening reads the log's position in LMDB (its ``wal`` database): the damage is found there,
    before anything is served, and said as the store's error; a store without the log finds it at
    its first read."""
    await _store_with_rooms(tmp_path / "db")
    damage_every_page_but_the_main_root(tmp_path / "db")
    with pytest.raises(StoreOpenError, match=r"^cannot open the store in .*: MDB_CORRUPTED: "):
        LmdbStore(tmp_path / "db").open()
    async with trio.open_nursery() as nursery:
        store = LmdbStore(tmp_path / "db", log=False)
        await nursery.start(store.run)
        with pytest.raises(StoreFailed, match=r"^cannot read the store in .*: MDB_CORRUPTED: "):
            await store.load_all_rooms()
        nursery.cancel_scope.cancel()


async def test_a_truncated_data_file_is_refused_before_lmdb_maps_it(tmp_path: Path) -> None:
    """Reading a mapped page past the end of the file is SIGBUS: the length is checked first."""
    await _store_with_rooms(tmp_path / "db")
    data = tmp_path / "db" / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, 8192)
    with pytest.raises(StoreOpenError) as info:
        LmdbStore(tmp_path / "db").open()
    assert str(info.value) == (
        f"cannot open the store in {tmp_path / 'db'}: data.mdb is truncated (8192 bytes, its pages need {size})"
    )


# -- group commit under random interleavings ------------------------------------------------------------

_OPS = st.lists(st.one_of(st.just("dispose"), st.integers(0, 3)), min_size=1, max_size=6)
"""One room actor's commits, in order: ``k`` = a batch writing ``log:<i>``, ``last`` and deleting
``log:<i - 2>`` after ``k`` checkpoints; ``"dispose"`` = dispose of the room."""


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rooms=st.lists(_OPS, min_size=1, max_size=6), releases=st.lists(st.integers(0, 4), min_size=1, max_size=8),
       failing=st.sets(st.integers(0, 12), max_size=3), grouped=st.booleans(), logged=st.booleans(),
       checkpoint_bytes=st.sampled_from([1, 200, 1 << 20]))
async def test_group_commit_acknowledges_exactly_what_is_durable(
    tmp_path: Path, rooms: list[list[int | str]], releases: list[int], failing: set[int], grouped: bool,
    logged: bool, checkpoint_bytes: int,
) -> None:
    """Many rooms commit (and dispose) in random interleavings while the writer's thread finishes at
    random moments and some writes fail: every acknowledged write is durable when its commit returns
    (in LMDB once the log is applied, at checkpoints of random frequency), a room's writes land in
    its commit order, and a failing write fails exactly the commits of its group (their writes
    absent, every other commit unaffected) — with the log, also every group after it: after a failed
    log write the store writes nothing more (see ``LmdbStore._log_group``)."""
    import threading

    import lmdb

    store = LmdbStore(tmp_path / f"db-{len(os.listdir(tmp_path))}", group_commit=grouped, log=logged,
                      checkpoint_bytes=checkpoint_bytes)
    store.open()
    gate = threading.Semaphore(0)
    groups: list[int] = []  # group writes attempted, in order

    def gated() -> None:  # in the worker thread
        gate.acquire()
        index = len(groups)
        groups.append(index)
        if index in failing:
            raise OSError(5, "injected failure") if logged else lmdb.Error("injected failure")

    before_group_writes(store, gated)
    sizes: list[int] = []  # commits per group, in order (one group is written at a time)
    real_group = store._write_group

    async def counted(group) -> None:
        sizes.append(len(group))
        await real_group(group)

    store._write_group = counted  # type: ignore[method-assign]
    failed_commits: list[tuple[int, int]] = []
    expected: dict[str, dict[str, bytes]] = {}
    done = trio.Event()

    def stored(room: str) -> dict[str, bytes]:
        assert store._env is not None
        store._apply_upto(store._seq)  # what a checkpoint would write (or a restart replay)
        with store._env.begin(db=store._rooms_db) as txn:
            prefix = room.encode() + b"\x00"
            return {bytes(k)[len(prefix):].decode(): bytes(v) for k, v in txn.cursor() if bytes(k).startswith(prefix)}

    async def room(r: int, ops: list[int | str]) -> None:
        name = f"r{r}"
        model: dict[str, bytes] = {}
        for i, op in enumerate(ops):
            if op == "dispose":
                proposed: dict[str, bytes] = {}
                batch: list[Write] = []
            else:
                for _ in range(op):
                    await trio.lowlevel.checkpoint()
                value = f"{r}.{i}".encode()
                batch = [Write(name, f"log:{i}", value), Write(name, "last", value), Write(name, f"log:{i - 2}", None)]
                proposed = {key: value for key, value in model.items() if key != f"log:{i - 2}"}
                proposed |= {f"log:{i}": value, "last": value}
            try:
                if op == "dispose":
                    await store.dispose_room(name)
                else:
                    await store.commit(batch)
            except StoreFailed:
                failed_commits.append((r, i))
                assert stored(name) == model  # nothing of the failed group was written
                continue
            model = proposed
            assert stored(name) == model  # acknowledged: durable, and exactly this room's history so far
        expected[name] = model

    async def release() -> None:  # the worker thread finishes at random moments
        step = 0
        while not done.is_set():
            for _ in range(releases[step % len(releases)]):
                await trio.lowlevel.checkpoint()
            gate.release()
            step += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        nursery.start_soon(release)
        async with trio.open_nursery() as actors:
            for r, ops in enumerate(rooms):
                actors.start_soon(room, r, ops)
        done.set()
        for r in range(len(rooms)):
            assert stored(f"r{r}") == expected[f"r{r}"]
        stats = store.statistics()
        nursery.cancel_scope.cancel()
    commits = sum(len(ops) for ops in rooms)
    assert stats.commits == commits - len(failed_commits)
    if logged and failing & set(groups):
        first = min(failing & set(groups))  # the first failed write: no group is written after it
        assert len(groups) == first + 1
        assert len(failed_commits) == sum(sizes[first:])
    else:
        assert len(failed_commits) == sum(sizes[index] for index in failing if index < len(sizes))
        assert len(sizes) == len(groups)
        if not grouped:
            assert len(groups) == commits  # one transaction per commit


@pytest.mark.parametrize("others", [["cancelled"], ["cancelled", "waiting"]])
async def test_a_cancelled_committer_neither_loses_its_batch_nor_stalls_the_next_group(
    nursery: trio.Nursery, tmp_path: Path, others: list[str]
) -> None:
    """While the leader's transaction runs, committers queue for the next group; one of them is
    cancelled. Its batch is still written (it was queued), the lead passes to one still waiting, or
    the leader writes the group itself when nobody waits: no group is left without a writer."""
    import threading

    store = LmdbStore(tmp_path / "db")
    await nursery.start(store.run)
    gate = threading.Event()
    before_group_writes(store, lambda: gate.wait(10))
    returned: list[str] = []

    async def commit(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            await store.commit([Write(name, "k", name.encode())])
            returned.append(name)

    scopes = {name: trio.CancelScope() for name in others}
    with trio.fail_after(30):  # a bound, not a timing: a group left without a writer would hang here
        async with trio.open_nursery() as committers:
            committers.start_soon(commit, "leader")
            await trio.testing.wait_all_tasks_blocked()  # the leader is in its thread, blocked on the gate
            for name in others:
                committers.start_soon(commit, name, scopes[name])
            await trio.testing.wait_all_tasks_blocked()
            scopes["cancelled"].cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
    assert sorted(returned) == sorted(["leader", *(name for name in others if name != "cancelled")])
    assert sorted(room for room, _key in store.keys()) == sorted(["leader", *others])
    assert not store._leading and not store._queue
    await store.commit([Write("after", "k", b"1")])  # the store still takes commits
    assert await store.load_room("after") == {"k": b"1"}


@pytest.mark.parametrize("log", [True, False])
async def test_a_leader_cancelled_in_its_hop_finishes_the_group_and_sees_the_cancel_after(
    nursery: trio.Nursery, tmp_path: Path, log: bool
) -> None:
    """The leader's wait for its thread is cancellable (no cancel scope per hop: ``_hop``): cancelled
    while the transaction runs, it waits again, shielded, so its group is written and reported done
    (it and the follower queued behind it return), and the cancellation reaches it at its next
    checkpoint. Ending the wait early would report a written group as failed, or leave the follower
    without a leader."""
    import threading

    store = LmdbStore(tmp_path / "db", log=log)
    await nursery.start(store.run)
    gate = threading.Event()
    before_group_writes(store, lambda: gate.wait(10))
    events: list[str] = []

    async def leader(scope: trio.CancelScope) -> None:
        with scope:
            await store.commit([Write("leader", "k", b"1")])
            events.append("leader returned")
            await trio.lowlevel.checkpoint()
            events.append("not reached")  # pragma: no cover - the checkpoint raises Cancelled
        events.append("leader cancelled" if scope.cancelled_caught else "leader not cancelled")

    async def follower() -> None:
        await store.commit([Write("follower", "k", b"2")])
        events.append("follower returned")

    scope = trio.CancelScope()
    with trio.fail_after(30):  # a bound, not a timing: a group left without a writer would hang here
        async with trio.open_nursery() as committers:
            committers.start_soon(leader, scope)
            await trio.testing.wait_all_tasks_blocked()  # in its hop, the thread blocked on the gate
            committers.start_soon(follower)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert events == []  # still waiting for the thread
            gate.set()
    assert sorted(events) == ["follower returned", "leader cancelled", "leader returned"]
    assert sorted(room for room, _key in store.keys()) == ["follower", "leader"]
    assert not store._leading and not store._queue
    await store.commit([Write("after", "k", b"3")])
    assert await store.load_room("after") == {"k": b"3"}


async def test_a_disposal_in_a_group_drops_the_writes_before_it_and_keeps_the_ones_after(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Commits and a disposal of one room queued while a transaction runs share the next one; it
    ends as they would applied one by one: the disposal deletes what was stored and what was queued
    before it, and nothing queued after it."""
    import threading

    store = LmdbStore(tmp_path / "db")
    await nursery.start(store.run)
    await store.commit([Write("r1", "old", b"stored"), Write("r10", "meta", b"other room")])
    gate = threading.Event()
    before_group_writes(store, lambda: gate.wait(10))
    groups = store.groups
    with trio.fail_after(30):  # a bound, not a timing
        async with trio.open_nursery() as committers:
            committers.start_soon(store.commit, [Write("x", "k", b"0")])  # the leader: blocked in its thread
            await trio.testing.wait_all_tasks_blocked()
            for start in (lambda: store.commit([Write("r1", "before", b"1")]), lambda: store.dispose_room("r1"),
                          lambda: store.commit([Write("r1", "after", b"2"), Write(None, "g", b"3")])):
                committers.start_soon(start)  # queued one after the other, in this order
                await trio.testing.wait_all_tasks_blocked()
            gate.set()
    assert sorted(store.keys(), key=str) == sorted([("r1", "after"), ("r10", "meta"), ("x", "k"), (None, "g")], key=str)
    assert store.groups - groups == 2  # the leader's group, then the three queued behind it in one


async def test_a_leader_interrupted_by_a_base_exception_leaves_no_committer_waiting(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Not an Exception escaping the leader's transaction (KeyboardInterrupt, say): every committer of
    the group in flight and of the queue behind it gets an error instead of waiting forever."""
    import threading

    store = LmdbStore(tmp_path / "db")
    await nursery.start(store.run)
    gate = threading.Event()
    real = store._write_group

    async def interrupted(group) -> None:
        await trio.to_thread.run_sync(gate.wait, 10)
        raise KeyboardInterrupt

    store._write_group = interrupted  # type: ignore[method-assign]
    outcomes: dict[str, str] = {}

    async def commit(name: str) -> None:
        try:
            await store.commit([Write(name, "k", b"v")])
            outcomes[name] = "ok"
        except KeyboardInterrupt:
            outcomes[name] = "interrupted"
        except RuntimeError as error:
            outcomes[name] = str(error)

    with trio.fail_after(30):  # a bound, not a timing
        async with trio.open_nursery() as committers:
            committers.start_soon(commit, "a")  # a and b: one group (whichever runs first leads it)
            committers.start_soon(commit, "b")
            await trio.testing.wait_all_tasks_blocked()
            store._write_group = real  # type: ignore[method-assign]  # only the leader's first group is interrupted
            committers.start_soon(commit, "queued")
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
    stopped = "the store stopped before this batch was written"
    assert outcomes["queued"] == stopped
    assert sorted((outcomes["a"], outcomes["b"])) == ["interrupted", stopped]
    assert not store._leading and not store._queue
    await store.commit([Write("after", "k", b"1")])
    assert await store.load_room("after") == {"k": b"1"}


async def test_a_committer_cancelled_with_the_store_sees_cancelled_not_an_error(tmp_path: Path) -> None:
    """An engine cancelled at once cancels the store and its committers together: a commit that comes
    after the store's run ended raises the caller's Cancelled (a clean cancel), not "the store is not
    running" (which crashed the directory's nursery out of a test that only cancelled the engine)."""
    store = LmdbStore(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await trio.testing.wait_all_tasks_blocked()  # store.run sees its cancel and ends
        with pytest.raises(trio.Cancelled):
            await store.commit([Write("r1", "meta", b"m")])
    with pytest.raises(RuntimeError):  # not cancelled: the error says why
        await store.commit([Write("r1", "meta", b"m")])
