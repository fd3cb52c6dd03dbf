"""The store's write-ahead log: its record chain read back after torn and stale writes, recovery of
acknowledged groups after a crash at any moment, and a failed log write that stops the store."""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.store import Write
from roost.store.lmdb import LmdbStore, StoreFailed, StoreOpenError
from roost.store.wal import HEADER, Log, LogGap, encode_record, read_chain

# -- the record chain (sans-IO) ----------------------------------------------------------------


def test_a_chain_reads_back_every_whole_record_and_ends_at_zeros() -> None:
    records = [encode_record(7 + i, payload) for i, payload in enumerate([b"a", b"bb" * 100, b"c"])]
    data = b"".join(records) + bytes(4096)
    chain, end = read_chain(data)
    assert chain == [(7, b"a"), (8, b"bb" * 100), (9, b"c")]
    assert end == sum(map(len, records))


@given(payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8), data=st.data())
def test_a_torn_or_damaged_record_ends_the_chain_before_it(payloads: list[bytes], data: st.DataObject) -> None:
    """Cut anywhere (a process killed inside its write), or one byte changed anywhere: the chain is
    exactly the records wholly before the damage, never a damaged one, never one after it."""
    records = [encode_record(100 + i, payload) for i, payload in enumerate(payloads)]
    whole = b"".join(records)
    starts = [sum(map(len, records[:i])) for i in range(len(records) + 1)]
    if data.draw(st.booleans(), label="cut"):
        at = data.draw(st.integers(0, len(whole)), label="at")
        damaged = whole[:at] + bytes(data.draw(st.integers(0, 64), label="zeros"))
        intact = sum(1 for i in range(len(records)) if starts[i + 1] <= at)
    else:
        at = data.draw(st.integers(0, len(whole) - 1), label="at")
        flip = data.draw(st.integers(1, 255), label="flip")
        damaged = whole[:at] + bytes([whole[at] ^ flip]) + whole[at + 1 :]
        intact = max(i for i in range(len(records) + 1) if starts[i] <= at)
    chain, end = read_chain(damaged)
    assert chain == [(100 + i, payloads[i]) for i in range(intact)]
    assert end == starts[intact]


def test_a_reused_segment_ignores_the_older_cycle_behind_the_new_chain() -> None:
    """A segment is rewritten from its start at each switch: what an older cycle left after the new
    records is whole and checksummed, but its seqs are lower, so it cannot continue the chain."""
    old = b"".join(encode_record(seq, b"x" * 10) for seq in range(1, 6))
    new = encode_record(20, b"y" * 10)
    chain, _end = read_chain(new + old[len(new) :])
    assert chain == [(20, b"y" * 10)]
    # a record boundary of the old cycle right behind the new one: still not a continuation
    chain, _end = read_chain(new + old[len(encode_record(1, b"x" * 10)) :])
    assert chain == [(20, b"y" * 10)]


def test_a_record_checksums_its_length_and_seq_too() -> None:
    record = bytearray(encode_record(5, b"payload"))
    record[8] ^= 1  # the seq's lowest byte: 5 -> 4, payload and length intact
    assert read_chain(bytes(record))[0] == []
    length, crc, seq = HEADER.unpack_from(record)
    assert (length, seq) == (7, 4) and crc == zlib.crc32(b"payload", zlib.crc32((7).to_bytes(4, "little") + (5).to_bytes(8, "little")))


def test_recovery_refuses_a_log_with_a_hole(tmp_path: Path) -> None:
    """Records after LMDB's last applied one must follow it without a gap: replaying around a hole
    would apply later groups without an earlier one."""
    (tmp_path / "log.0").write_bytes(encode_record(4, b"a") + encode_record(5, b"b"))
    (tmp_path / "log.1").write_bytes(encode_record(7, b"c"))
    log = Log(tmp_path)
    log.open()
    try:
        with pytest.raises(LogGap, match="^the store's log jumps from record 5 to 7$"):
            log.recover(3)
    finally:
        log.close()


def test_recovery_takes_both_segments_in_seq_order(tmp_path: Path) -> None:
    """A crash during a checkpoint: the segment left holds the records being applied, the active one
    the records after them."""
    (tmp_path / "log.0").write_bytes(encode_record(8, b"c") + encode_record(9, b"d"))
    (tmp_path / "log.1").write_bytes(encode_record(5, b"z") + encode_record(6, b"a") + encode_record(7, b"b"))
    log = Log(tmp_path)
    log.open()
    try:
        assert log.recover(5) == [(6, b"a"), (7, b"b"), (8, b"c"), (9, b"d")]
        assert log.last_seq == 9
    finally:
        log.close()


# -- the store over its log ------------------------------------------------------------------------


async def test_a_commit_is_one_log_record_and_reads_see_it(nursery: trio.Nursery, tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db")
    await nursery.start(store.run)
    await store.commit([Write("r1", "meta", b"m"), Write(None, "g", b"1"), Write(None, "u1", b"user", table="users")])
    assert store.groups == 1 and store.checkpoints == 0
    # a table record is read from what was logged: no checkpoint for a lookup
    assert await store.get("users", "u1") == b"user"
    assert store.checkpoints == 0
    await store.commit([Write(None, "u1", None, table="users")])
    assert await store.get("users", "u1") is None
    # a room or global read waits for a checkpoint: LMDB then holds everything acknowledged
    assert await store.load_room("r1") == {"meta": b"m"}
    assert store.checkpoints == 1
    assert await store.load_global() == {"g": b"1"}
    assert await store.get("users", "u1") is None and store.checkpoints == 1


async def test_writes_after_a_checkpoint_began_are_in_the_next(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Checkpoints every few bytes while rooms keep committing: the segments are switched and
    reused over and over, and what LMDB ends with is every write in order."""
    store = LmdbStore(tmp_path / "db", checkpoint_bytes=300)
    made = [0] * 5

    async def room(r: int) -> None:
        # At least 30 commits, and on until five checkpoints have run (a checkpoint starts only once
        # the one before it is done: on a loaded machine 30 commits may see fewer), 300 at most.
        i = 0
        while i < 30 or (store.checkpoints < 5 and i < 300):
            await store.commit([Write(f"r{r}", "last", f"{i}".encode()), Write(f"r{r}", f"k{i}", b"v" * (i % 50 * 7))])
            i += 1
        made[r] = i

    await nursery.start(store.run)
    async with trio.open_nursery() as rooms:
        for r in range(5):
            rooms.start_soon(room, r)
    assert store.checkpoints >= 5
    rooms_now = await store.load_all_rooms()
    assert rooms_now == {f"r{r}": {"last": f"{made[r] - 1}".encode(), **{f"k{i}": b"v" * (i % 50 * 7) for i in range(made[r])}}
                         for r in range(5)}


def _crash_image(store: LmdbStore, into: Path, torn: bytes) -> None:
    """What a SIGKILL leaves (the files as the kernel holds them), with ``torn`` bytes of a record
    the process was writing when it died, behind the last whole one."""
    into.mkdir()
    for name in ("data.mdb", "log.0", "log.1"):
        shutil.copyfile(store.path / name, into / name)
    assert store._log is not None
    with open(into / f"log.{store._log.active}", "r+b") as segment:
        segment.seek(store._log.offset)
        segment.write(torn)


_OP = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 3), st.integers(0, 5), st.integers(0, 400)),
    st.tuples(st.just("delete"), st.integers(0, 3), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("dispose"), st.integers(0, 3), st.just(0), st.just(0)),
    st.tuples(st.just("user"), st.just(0), st.integers(0, 5), st.integers(0, 50)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_OP, min_size=1, max_size=25), checkpoint_bytes=st.sampled_from([1, 150, 600, 1 << 20]),
       crash_at=st.sets(st.integers(0, 24), max_size=4), torn=st.binary(max_size=40), data=st.data())
async def test_a_crash_at_any_moment_keeps_exactly_what_was_acknowledged(
    tmp_path: Path, ops: list[tuple[str, int, int, int]], checkpoint_bytes: int, crash_at: set[int], torn: bytes,
    data: st.DataObject,
) -> None:
    """Random commits, deletions, disposals and table writes, each through the writer thread or
    inline on the loop (``commit_now``), checkpoints every few bytes or never; at random moments the
    process "dies" (its files copied as they stand, with a torn record behind the last whole one).
    Each image opens to exactly the writes acknowledged before it: the log replays what the
    checkpoints had not applied yet, nothing is lost, nothing doubled."""
    base = tmp_path / f"case-{len(os.listdir(tmp_path))}"
    # a bound no sync reaches, the estimate cleared: the inline path is taken whenever it may be
    store = LmdbStore(base / "db", checkpoint_bytes=checkpoint_bytes, inline_sync_max=10.0)
    inline = data.draw(st.lists(st.booleans(), min_size=len(ops), max_size=len(ops)))
    offers = [0, 0]  # offered inline, taken

    async def commit(index: int, batch: list[Write]) -> None:
        if inline[index]:
            offers[0] += 1
            if store.commit_now(batch):
                offers[1] += 1
                return
        await store.commit(batch)

    rooms: dict[str, dict[str, bytes]] = {}
    users: dict[str, bytes] = {}
    images: list[tuple[Path, dict[str, dict[str, bytes]], dict[str, bytes]]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        store._sync_estimate = 0.0
        for index, (kind, r, k, size) in enumerate(ops):
            room, key = f"r{r}", f"k{k}"
            if kind == "put":
                value = f"{index}:".encode() + b"v" * size
                await commit(index, [Write(room, key, value), Write(room, "n", str(index).encode())])
                rooms.setdefault(room, {}).update({key: value, "n": str(index).encode()})
            elif kind == "delete":
                await commit(index, [Write(room, key, None)])
                if room in rooms:
                    rooms[room].pop(key, None)
                    if not rooms[room]:
                        del rooms[room]
            elif kind == "dispose":
                await store.dispose_room(room)
                rooms.pop(room, None)
            else:
                value = b"u" * size
                await commit(index, [Write(None, key, value, table="users")])
                users[key] = value
            if index in crash_at:
                while store._applying:  # a copy is taken between writes (the kernel's view is atomic per write)
                    await trio.sleep(0.001)
                image = base / f"image-{index}"
                _crash_image(store, image, torn)
                images.append((image, {room: dict(keys) for room, keys in rooms.items()}, dict(users)))
        nursery.cancel_scope.cancel()
    # declined only when a segment had to grow: each one's first record (the test is sequential,
    # so no group is ever under way)
    assert store.inline_commits == offers[1] >= offers[0] - 2
    for image, expected_rooms, expected_users in images:
        reopened = LmdbStore(image)
        async with trio.open_nursery() as nursery:
            await nursery.start(reopened.run)
            assert await reopened.load_all_rooms() == expected_rooms
            assert dict(await reopened.scan("users", limit=100)) == expected_users
            nursery.cancel_scope.cancel()
    # and the store itself, stopped cleanly, has everything applied
    final = LmdbStore(base / "db")
    final.open()
    try:
        assert final.replayed == 0
        assert sorted(key for key in final.keys()) == sorted((room, key) for room, keys in rooms.items() for key in keys)
    finally:
        final.close()


@pytest.mark.parametrize("inline", [False, True])
async def test_a_failed_log_write_stops_the_store_and_a_restart_keeps_what_was_acknowledged(
    tmp_path: Path, inline: bool
) -> None:
    """After a failed write or fsync of the log nothing is known of what reached the disk (and a
    retried fsync may lie): that group fails, every later commit fails too, and a restart replays
    every group acknowledged before it. Through the writer thread and inline alike."""
    async with trio.open_nursery() as nursery:
        store = LmdbStore(tmp_path / "db", checkpoint_interval=3600, inline_sync_max=10.0)
        await nursery.start(store.run)
        await store.commit([Write("r1", "a", b"1")])
        store._sync_estimate = 0.0  # the inline case below must write inline, not fall back
        assert store._log is not None
        real = store._log.append

        def failing(record: bytes) -> None:
            raise OSError(5, "Input/output error")

        store._log.append = failing  # type: ignore[method-assign]
        with pytest.raises(StoreFailed, match=r"^cannot write the store's log in .*: Input/output error$"):
            if inline:
                store.commit_now([Write("r1", "b", b"2")])  # raises: it does not decline
            else:
                await store.commit([Write("r1", "b", b"2")])
        store._log.append = real  # type: ignore[method-assign]  # the disk is back: the store still refuses
        with pytest.raises(StoreFailed):
            store.commit_now([Write("r1", "c", b"3")]) or await store.commit([Write("r1", "c", b"3")])
        with pytest.raises(StoreFailed):
            await store.commit([Write("r1", "c", b"3")])
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        store = LmdbStore(tmp_path / "db")
        await nursery.start(store.run)
        assert await store.load_room("r1") == {"a": b"1"}
        await store.commit([Write("r1", "d", b"4")])
        assert await store.load_room("r1") == {"a": b"1", "d": b"4"}
        nursery.cancel_scope.cancel()


async def test_a_store_killed_before_any_checkpoint_replays_its_log(tmp_path: Path) -> None:
    """Everything acknowledged is in the log only (no checkpoint ran): a second store on the files
    a SIGKILL leaves finds it all, once, and a clean stop after that leaves nothing to replay."""
    store = LmdbStore(tmp_path / "db", checkpoint_interval=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(20):
            await store.commit([Write(f"r{i % 3}", f"k{i}", bytes([i]) * 100)])
        assert store.checkpoints == 0
        _crash_image(store, tmp_path / "killed", b"")
        nursery.cancel_scope.cancel()
    again = LmdbStore(tmp_path / "killed")
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        assert again.replayed == 20
        assert await again.load_all_rooms() == {
            f"r{r}": {f"k{i}": bytes([i]) * 100 for i in range(20) if i % 3 == r} for r in range(3)}
        await again.commit([Write("r0", "more", b"x")])
        nursery.cancel_scope.cancel()
    third = LmdbStore(tmp_path / "killed")
    third.open()
    try:
        assert third.replayed == 0 and ("r0", "more") in set(third.keys())
    finally:
        third.close()


def test_a_log_with_a_hole_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db")
    store.open()
    store.close()
    (tmp_path / "db" / "log.1").write_bytes(encode_record(1, b"\x92\x90\x90") + encode_record(3, b"\x92\x90\x90"))
    (tmp_path / "db" / "log.0").write_bytes(encode_record(3, b"\x92\x90\x90"))
    with pytest.raises(StoreOpenError, match=r"^cannot open the store in .*: the store's log jumps from record 1 to 3$"):
        LmdbStore(tmp_path / "db").open()


async def test_a_failed_checkpoint_keeps_its_segment_until_one_succeeds(tmp_path: Path) -> None:
    """A checkpoint that fails leaves its records unapplied in the segment it left: later
    checkpoints retry without switching (a switch would overwrite that segment), reads fail clearly
    meanwhile, and the files at any moment hold every acknowledged write."""
    import lmdb

    store = LmdbStore(tmp_path / "db", checkpoint_bytes=1 << 30, checkpoint_interval=3600)
    failures = [lmdb.Error("injected"), lmdb.Error("injected again")]
    real = store._write_logged

    def flaky(items, puts_done=None) -> None:
        if failures:
            raise failures.pop(0)
        real(items, puts_done)

    store._write_logged = flaky  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(5):
            await store.commit([Write("r", f"a{i}", b"1")])
        with pytest.raises(StoreFailed, match=r"^cannot read the store in .*: its log could not be applied"):
            await store.load_room("r")  # checkpoint 1 fails
        for i in range(5):
            await store.commit([Write("r", f"b{i}", b"2")])
        with pytest.raises(StoreFailed):
            await store.load_room("r")  # checkpoint 2 fails too
        await store.commit([Write("r", "c", b"3")])
        _crash_image(store, tmp_path / "killed", b"")
        assert await store.load_room("r") == {**{f"a{i}": b"1" for i in range(5)}, **{f"b{i}": b"2" for i in range(5)},
                                              "c": b"3"}
        nursery.cancel_scope.cancel()
    again = LmdbStore(tmp_path / "killed")
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        assert again.replayed == 11
        assert len(await again.load_room("r")) == 11
        nursery.cancel_scope.cancel()


async def test_a_second_claimant_never_touches_the_log(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The directory's lock is taken before the log is opened: a second store on it (another server
    started by mistake) is refused without reading, replaying or truncating a byte of the log the
    first one is appending to."""
    from roost.store.lmdb import StoreLocked

    first = LmdbStore(tmp_path / "db", checkpoint_interval=3600)
    await nursery.start(first.run)
    await first.commit([Write("r", "a", b"1")])
    before = [(tmp_path / "db" / name).read_bytes() for name in ("log.0", "log.1")]
    with pytest.raises(StoreLocked):
        LmdbStore(tmp_path / "db").open()
    assert [(tmp_path / "db" / name).read_bytes() for name in ("log.0", "log.1")] == before
    await first.commit([Write("r", "b", b"2")])
    assert await first.load_room("r") == {"a": b"1", "b": b"2"}


async def test_a_commit_is_written_inline_only_while_nothing_else_is_and_syncs_are_quick(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``commit_now`` writes the record on the loop's thread when no group is under way and the
    log's recent appends were quick; an opened store proves it first, a slow sync (in either path)
    sends commits through the writer thread until its estimate decays, and so does a record that
    would grow the segment. (The bound here is 10 s, far above any sync: the test drives the
    estimate itself, whatever this machine's disk does.)"""
    store = LmdbStore(tmp_path / "db", checkpoint_interval=3600, inline_sync_max=10.0)
    await nursery.start(store.run)

    async def until_inline(batch: list[Write]) -> int:
        for appends in range(20):
            if store.commit_now(batch):
                return appends
            await store.commit([Write("r0", "n", str(appends).encode())])  # an append through the thread
        raise AssertionError("the estimate never decayed")

    assert not store.commit_now([Write("r1", "a", b"1")])  # not proven yet (the estimate starts at 2x)
    assert 5 <= await until_inline([Write("r1", "a", b"1")]) <= 9 and store.inline_commits == 1
    assert await store.load_room("r1") == {"a": b"1"}
    with pytest.raises(KeyError):
        store.commit_now([Write(None, "k", b"v", table="nope")])
    assert not store.commit_now([]) and not store.commit_now([Write("r1", "x", b"x")], busy=True)

    # a group under way: the next commit queues behind it
    async with trio.open_nursery() as inner:
        inner.start_soon(store.commit, [Write("r1", "b", b"2")])
        await trio.testing.wait_all_tasks_blocked()
        assert store._leading and not store.commit_now([Write("r1", "c", b"3")])
    # a slow sync: through the thread until the estimate has decayed under the bound
    store._sync_estimate = 40.0
    assert 10 <= await until_inline([Write("r1", "f", b"6")]) <= 16
    # a record that would grow the segment
    assert store._log is not None
    before = store.inline_commits
    assert not store.commit_now([Write("r1", "big", b"x" * (store._log._sizes[store._log.active] + 1))])
    assert store.inline_commits == before
    assert (await store.load_room("r1")).keys() == {"a", "b", "f"}


async def test_a_store_told_never_to_commit_inline_never_does(tmp_path: Path) -> None:
    """``inline_sync_max=0``, also after a restart on a log whose segment has room already (its
    estimate starts at 0 then: the bound itself must refuse, found by a hostile review)."""
    async with trio.open_nursery() as nursery:
        first = LmdbStore(tmp_path / "db", checkpoint_interval=3600)
        await nursery.start(first.run)
        await first.commit([Write("r", "a", b"1")])  # grows log.0 through the writer thread
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        never = LmdbStore(tmp_path / "db", inline_sync_max=0, checkpoint_interval=3600)
        await nursery.start(never.run)
        never._sync_estimate = 0.0
        assert not never.commit_now([Write("r", "b", b"2")]) and never.inline_commits == 0
        await never.commit([Write("r", "b", b"2")])
        assert await never.load_room("r") == {"a": b"1", "b": b"2"}
        nursery.cancel_scope.cancel()
