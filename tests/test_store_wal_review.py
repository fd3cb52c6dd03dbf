"""Hostile review of the store's write-ahead log: the interleavings and crash images the first tests
did not reach. Each test names the trap it closes."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import msgpack
import pytest
import trio

from roost.store import Write
from roost.store.lmdb import LmdbStore, StoreFailed, StoreOpenError
from roost.store.wal import HEADER, encode_record


async def test_a_read_waiting_on_a_failing_log_write_is_answered_not_left_forever(tmp_path: Path) -> None:
    """A read that arrives while a record is being written asks the writer to start the checkpoint
    after it. The trap: when that write fails the writer never reaches its "after", and the read
    waited for a checkpoint nobody starts (a room load hung for good on a full disk)."""
    store = LmdbStore(tmp_path / "db", checkpoint_interval=3600, checkpoint_bytes=1 << 30)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.commit([Write("r", "a", b"1")])  # logged, not applied
        assert store._log is not None
        release = threading.Event()

        def failing(record: bytes) -> None:
            release.wait()
            raise OSError(28, "No space left on device")

        store._log.append = failing  # type: ignore[method-assign]
        failed: list[BaseException] = []

        async def commit() -> None:
            try:
                await store.commit([Write("r", "b", b"2")])
            except StoreFailed as exc:
                failed.append(exc)

        nursery.start_soon(commit)
        while not store._appending:
            await trio.sleep(0.001)
        loaded: list[dict[str, bytes]] = []

        async def load() -> None:
            loaded.append(await store.load_room("r"))

        nursery.start_soon(load)
        await trio.sleep(0.05)  # the read is parked, waiting for the checkpoint after the record
        release.set()
        with trio.fail_after(5):
            while not loaded:
                await trio.sleep(0.01)
        assert failed and loaded == [{"a": b"1"}]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("payload", [
    b"\xc1",  # not msgpack at all
    msgpack.packb([[], [["no-such-table", [], [[b"k", b"v"]]]]], use_bin_type=True),  # a table this build lacks
], ids=["undecodable", "unknown-table"])
def test_a_checksummed_record_that_cannot_be_replayed_is_one_open_error_and_releases_the_directory(
    tmp_path: Path, payload: bytes,
) -> None:
    """A record whose CRC holds but whose payload cannot be applied (written by another build, or
    crafted): open must fail as every other refusal does, with nothing left open. The trap: only
    lmdb, OSError and LogGap errors were cleaned up, so a msgpack or KeyError escaped open() with the
    environment, the log's descriptors and the directory's flock still held (every later open in this
    process: "in use by another Roost store")."""
    store = LmdbStore(tmp_path / "db")
    store.open()
    store.close()
    (tmp_path / "db" / "log.0").write_bytes(encode_record(1, payload))
    with pytest.raises(StoreOpenError, match=r"^cannot open the store in .*: record 1 of its log"):
        LmdbStore(tmp_path / "db").open()
    (tmp_path / "db" / "log.0").write_bytes(b"")
    again = LmdbStore(tmp_path / "db")
    again.open()  # not StoreLocked: the failed open released everything
    again.close()


async def test_a_value_that_embeds_a_record_is_never_replayed_from_a_reused_segment(tmp_path: Path) -> None:
    """A segment is reused from its start, and what the older cycle left behind the new chain is read
    as long as it parses. The trap: that is user bytes (a chat message, a profile), so a value that
    embeds a whole record with the next seq, lying exactly where the new chain ends, passes CRC and
    seq checks: after a crash it is replayed as a commit nobody made (here: a users-table row)."""
    base = tmp_path / "db"
    store = LmdbStore(base, checkpoint_interval=3600, checkpoint_bytes=1 << 30)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        assert store._log is not None
        # seq 1 goes to log.0 at offset 0; its payload holds the forged record at a known offset
        forged_seq = 4  # 1: the carrier (log.0), 2: in log.1, 3: the new chain's record in log.0
        forged = encode_record(forged_seq, msgpack.packb(
            [[], [["users", [], [[b"mallory", b"admin"]]]]], use_bin_type=True))
        carrier_value = b"x" * 64 + forged + b"y" * 64
        await store.commit([Write("r", "msg", carrier_value)])
        segment = (base / "log.0").read_bytes()
        at = segment.index(forged)
        await store.load_room("r")  # checkpoint: switch to log.1, apply seq 1
        await store.commit([Write("r", "n", b"2")])  # seq 2 in log.1
        await store.load_room("r")  # checkpoint: switch back to log.0 (from its start), apply seq 2
        assert store._log.active == 0 and store._log.offset == 0
        # seq 3: sized to end exactly where the forged record begins in the old cycle's bytes
        probe = len(encode_record(3, msgpack.packb([[], [["rooms", [], [[b"r\x00pad", b""]]]]], use_bin_type=True)))
        pad = b"p" * (at - probe)
        await store.commit([Write("r", "pad", pad)])
        assert store._log.offset == at
        image = tmp_path / "killed"
        image.mkdir()
        for name in ("data.mdb", "log.0", "log.1"):
            shutil.copyfile(base / name, image / name)
        nursery.cancel_scope.cancel()
    again = LmdbStore(image)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        assert await again.get("users", "mallory") is None
        assert again.replayed == 1
        nursery.cancel_scope.cancel()


async def test_reads_while_the_store_stops_end_with_the_store_s_own_error(tmp_path: Path) -> None:
    """Reads from tasks outside the store's nursery keep coming, each needing a checkpoint, while
    the store is cancelled: each ends with an answer or "the store is not running". The trap: the
    store's nursery closes (its last checkpoint done) a moment before ``run`` forgets it, and a read
    in that moment started a checkpoint in it: "Nursery is closed to new arrivals", after having
    switched segments and marked a checkpoint running that never ran."""
    for attempt in range(20):
        store = LmdbStore(tmp_path / f"db{attempt}", checkpoint_interval=3600, checkpoint_bytes=1 << 30)
        unexpected: list[BaseException] = []
        answers = 0
        with trio.fail_after(20):  # before the fix: a read parked for the writer's checkpoint forever
            async with trio.open_nursery() as outer:
                async with trio.open_nursery() as inner:
                    await inner.start(store.run)

                    async def read(i: int) -> None:
                        nonlocal answers
                        while True:
                            try:
                                await store.commit([Write("r", f"k{i}", b"v")])
                                await store.load_room("r")
                                answers += 1
                            except RuntimeError as exc:
                                if str(exc) != "the store is not running":
                                    unexpected.append(exc)
                                return

                    for i in range(8):
                        outer.start_soon(read, i)
                    await trio.sleep(0.02 + attempt * 0.001)
                    inner.cancel_scope.cancel()
        assert answers and unexpected == []


async def test_get_never_sees_an_older_value_while_checkpoints_run(tmp_path: Path) -> None:
    """A table key rewritten and deleted over and over while checkpoints apply it concurrently:
    every get after an acknowledged write returns that write (never the one before, never a deleted
    key back), whether it answers from the logged writes or from LMDB after pruning."""
    store = LmdbStore(tmp_path / "db", checkpoint_bytes=200, checkpoint_interval=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(300):
            value = None if i % 3 == 2 else f"{i}".encode()
            await store.commit([Write(None, "k", value, table="users"), Write("r", "x", b"." * (i % 50 + 1))])
            assert await store.get("users", "k") == value
            if i % 7 == 0:
                nursery.start_soon(store.load_room, "r")  # a concurrent checkpoint
                await trio.sleep(0)
        assert store.checkpoints > 10
        assert len(store._tables_logged) <= 1
        nursery.cancel_scope.cancel()


async def test_reads_running_while_a_checkpoint_grows_the_map_are_answered(tmp_path: Path) -> None:
    """A checkpoint that fills the map grows it (``set_mapsize``) while table gets, which never wait
    for checkpoints, run read transactions in other threads. The trap: LMDB requires no transaction
    open in the process while it remaps (it unmaps the file under them), and py-lmdb invalidates every
    open one: a concurrent read failed with "Attempt to operate on closed/deleted/dropped object" (a
    user lookup answered ``internal``), or touched an unmapped page."""
    store = LmdbStore(tmp_path / "db", map_size=1 << 20, checkpoint_bytes=1 << 16, checkpoint_interval=0.0)
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(100):
            await store.commit([Write(None, f"u{i}", b"x" * 3000, table="users")])
        await store.load_room("r")  # applied: gets of these go to LMDB
        done = False

        async def reader(n: int) -> None:
            while not done:
                try:
                    assert await store.get("users", f"u{n}") == b"x" * 3000
                    assert len(await store.scan("users", limit=5000)) >= 100
                except StoreFailed as exc:
                    errors.append(exc)
                    return

        for n in range(6):
            nursery.start_soon(reader, n)
        for i in range(1500):
            await store.commit([Write(None, f"v{i}", b"y" * 8000, table="users")])
            if errors:
                break
        done = True
        assert store.map_growths >= 3
        nursery.cancel_scope.cancel()
    assert errors == []
