"""A store in dictionaries: the same semantics as the LMDB store, for tests and embedders without disk."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import trio

from . import TABLES, Store, StoreStatistics, Write

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keeps everything in memory. ``commit`` is atomic (no await between writes) and still a checkpoint,
    like a real store, so code that works on it does not rely on commits being instant."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, bytes]] = {}
        self._global: dict[str, bytes] = {}
        self._tables: dict[str, dict[str, bytes]] = {name: {} for name in TABLES}
        self._sorted: dict[str, list[bytes]] = {name: [] for name in TABLES}
        """Each table's keys as UTF-8 bytes, sorted: the order LMDB scans in."""
        self._commits = 0
        self._writes = 0

    async def commit(self, batch: Sequence[Write]) -> None:
        self.commit_now(batch)
        await trio.lowlevel.checkpoint()

    def commit_now(self, batch: Sequence[Write], *, busy: bool = False) -> bool:
        for write in batch:
            if write.table is not None and write.table not in self._tables:
                raise KeyError(write.table)  # before any write: a batch is all or nothing
        for write in batch:
            if write.table is not None:
                self._table_write(write)
                continue
            space = self._global if write.room is None else self._rooms.setdefault(write.room, {})
            if write.value is None:
                space.pop(write.key, None)
            else:
                space[write.key] = write.value
        for room in {w.room for w in batch if w.room is not None}:
            if not self._rooms.get(room, True):
                del self._rooms[room]
        self._commits += 1
        self._writes += len(batch)
        return True

    def _table_write(self, write: Write) -> None:
        assert write.table is not None
        table, keys, raw = self._tables[write.table], self._sorted[write.table], write.key.encode()
        if write.value is None:
            if table.pop(write.key, None) is not None:
                del keys[bisect.bisect_left(keys, raw)]
        else:
            if write.key not in table:
                bisect.insort(keys, raw)
            table[write.key] = write.value

    async def get(self, table: str, key: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self._tables[table].get(key)

    async def scan(self, table: str, *, prefix: str = "", after: str | None = None,
                   limit: int = 100) -> list[tuple[str, bytes]]:
        await trio.lowlevel.checkpoint()
        keys, records, start = self._sorted[table], self._tables[table], prefix.encode()
        index = bisect.bisect_left(keys, start) if after is None else bisect.bisect_right(keys, after.encode())
        out: list[tuple[str, bytes]] = []
        while index < len(keys) and len(out) < limit:
            raw = keys[index]
            if raw < start:
                index = bisect.bisect_left(keys, start)
                continue
            if not raw.startswith(start):
                break
            key = raw.decode()
            out.append((key, records[key]))
            index += 1
        return out

    async def load_room(self, room: str) -> dict[str, bytes]:
        await trio.lowlevel.checkpoint()
        return dict(self._rooms.get(room, {}))

    async def load_global(self) -> dict[str, bytes]:
        await trio.lowlevel.checkpoint()
        return dict(self._global)

    async def load_all_rooms(self) -> dict[str, dict[str, bytes]]:
        await trio.lowlevel.checkpoint()
        return {room: dict(records) for room, records in self._rooms.items()}

    async def room_ids(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self._rooms)

    async def dispose_room(self, room: str) -> None:
        self._rooms.pop(room, None)
        self._commits += 1
        await trio.lowlevel.checkpoint()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(commits=self._commits, writes=self._writes, rooms=len(self._rooms))
