"""A store in dictionaries: the same semantics as the LMDB store, for tests and embedders without disk."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from . import Store, StoreStatistics, Write

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keeps everything in memory. ``commit`` is atomic (no await between writes) and still a checkpoint,
    like a real store, so code that works on it does not rely on commits being instant."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, bytes]] = {}
        self._global: dict[str, bytes] = {}
        self._commits = 0
        self._writes = 0

    async def commit(self, batch: Sequence[Write]) -> None:
        self.commit_now(batch)
        await trio.lowlevel.checkpoint()

    def commit_now(self, batch: Sequence[Write]) -> bool:
        for write in batch:
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
