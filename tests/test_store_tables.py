"""Named tables (the user directory, inboxes): point reads and ordered, stable range scans, the same in
the LMDB store and the memory store, checked against a plain dict model over random histories."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.store import Write
from roost.store.lmdb import LmdbStore
from roost.store.memory import MemoryStore

# Keys that share prefixes and sort differently as str and as UTF-8 bytes would (é vs z), so a scan
# in the wrong order, a prefix that leaks, or an ``after`` cursor off by one shows.
_KEYS = st.sampled_from(["a", "ab", "abc", "b", "b\x00", "u:1", "u:10", "u:2", "u:é", "u:z", "v"])
_OPS = st.lists(st.tuples(_KEYS, st.one_of(st.none(), st.binary(max_size=8))), max_size=30)


def _expected(model: dict[str, bytes], prefix: str, after: str | None, limit: int) -> list[tuple[str, bytes]]:
    keys = sorted((k for k in model if k.startswith(prefix)), key=str.encode)
    if after is not None:
        keys = [k for k in keys if k.encode() > after.encode()]
    return [(k, model[k]) for k in keys[:limit]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(_OPS, max_size=4), prefix=st.sampled_from(["", "a", "u:", "b", "x"]),
       after=st.one_of(st.none(), _KEYS), limit=st.integers(1, 12))
async def test_tables_behave_like_a_sorted_dict(batches: list, prefix: str, after: str | None, limit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lmdb_store = LmdbStore(Path(tmp) / "db")
        memory = MemoryStore()
        model: dict[str, bytes] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(lmdb_store.run)
            for batch in batches:
                writes = [Write(None, key, value, table="users") for key, value in batch]
                await lmdb_store.commit(writes)
                await memory.commit(writes)
                for key, value in batch:
                    if value is None:
                        model.pop(key, None)
                    else:
                        model[key] = value
            want = _expected(model, prefix, after, limit)
            for store in (lmdb_store, memory):
                assert await store.scan("users", prefix=prefix, after=after, limit=limit) == want
                for key in ("a", "u:é", "nope"):
                    assert await store.get("users", key) == model.get(key)
                assert await store.scan("inbox") == []  # tables are separate
            # Paging with the last key as cursor visits every key of the prefix once, in order.
            seen, cursor = [], None
            while page := await lmdb_store.scan("users", prefix=prefix, after=cursor, limit=2):
                seen += page
                cursor = page[-1][0]
            assert seen == _expected(model, prefix, None, 1000)
            nursery.cancel_scope.cancel()


async def test_tables_survive_reopening_and_room_disposal(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.commit([Write(None, "u:1", b"one", table="users"), Write("r1", "meta", b"m")])
        await store.dispose_room("r1")
        nursery.cancel_scope.cancel()
    store = LmdbStore(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        assert await store.get("users", "u:1") == b"one"
        assert await store.load_global() == {}  # a table is not the global space
        nursery.cancel_scope.cancel()


async def test_an_unknown_table_fails_the_batch_and_writes_nothing_of_it(tmp_path: Path) -> None:
    lmdb_store = LmdbStore(tmp_path / "db")
    batch = [Write(None, "u:1", b"one", table="users"), Write(None, "k", b"v", table="nope")]
    async with trio.open_nursery() as nursery:
        await nursery.start(lmdb_store.run)
        for store in (lmdb_store, MemoryStore()):
            with pytest.raises(KeyError):
                await store.commit(batch)
            assert await store.get("users", "u:1") is None
        nursery.cancel_scope.cancel()
