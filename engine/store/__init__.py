"""Storage behind a small interface: the room actors and the router never see which store runs.

A store holds opaque values (msgpack bytes) under string keys, grouped by room (``room=None`` is the
global space: revocations, the room index), or in a named **table** (:data:`TABLES`: the user directory,
inboxes): records read one key or one ordered key range at a time, never loaded whole, because they
grow with the users of an application, not with the rooms of one process. Writes arrive in batches through :meth:`Store.commit`,
which returns only once the batch is durable, so callers can acknowledge after it (group commit: one
batch per room-actor turn, and the LMDB store merges batches from many rooms into one transaction).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import trio

__all__ = ["TABLES", "Store", "StoreError", "StoreStatistics", "Write"]

TABLES = ("users", "inbox")
"""The named tables every store has. A new table is a new name here (LMDB opens one database each)."""


class StoreError(Exception):
    """The store cannot be used: it cannot be opened, read or written, or what it holds does not
    decode. The message is one line, meant for the operator (``roost serve`` prints it as is)."""


class Write(NamedTuple):
    """Put ``value`` at ``(room, key)`` — or at ``key`` of ``table`` — or delete it when ``value`` is None.

    A named tuple, not a frozen dataclass: a room turn makes several per message, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__`` (measured: ~90x the cost
    of the tuple, a few µs per turn)."""

    room: str | None
    key: str
    value: bytes | None
    table: str | None = None
    """One of :data:`TABLES` (then ``room`` is None; a room write never names a table), or None for
    the room and global spaces. Not checked here (a tuple has no ``__post_init__``): the stores
    refuse an unknown table before they write anything."""


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters for metrics and benches."""

    commits: int
    writes: int
    rooms: int | None
    """Rooms with stored keys, when the store knows it without a scan."""


class Store(abc.ABC):
    """What the engine needs from a store."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the store's background work (a writer) until cancelled; the engine starts it first
        and stops it last. A store with no background work just waits."""
        task_status.started()
        await trio.sleep_forever()

    async def load_all_rooms(self) -> dict[str, dict[str, bytes]]:
        """Every room's records (restart recovery). Stores override this with one pass."""
        return {room: await self.load_room(room) for room in await self.room_ids()}

    @abc.abstractmethod
    async def commit(self, batch: Sequence[Write]) -> None:
        """Apply all writes atomically; return once they are durable."""

    def commit_now(self, batch: Sequence[Write], *, busy: bool = False) -> bool:
        """Apply ``batch`` at once if this store can do so without waiting long (it is then as
        durable as this store makes anything); return False to make the caller ``await commit(batch)``.

        Room actors commit once per turn; for an in-memory store this spares a scheduler pass per turn.
        ``busy``: the batch carries the turns of several rooms (the engine is under load). A store
        whose commit now would hold the event loop through a sync then declines, so the loop goes on
        while the sync runs elsewhere and the next batch gathers meanwhile (engine/scheduler.py).
        """
        return False

    @abc.abstractmethod
    async def load_room(self, room: str) -> dict[str, bytes]:
        """Every key of one room (empty if the room is unknown)."""

    @abc.abstractmethod
    async def load_global(self) -> dict[str, bytes]:
        """Every key of the global space."""

    @abc.abstractmethod
    async def get(self, table: str, key: str) -> bytes | None:
        """One record of a table (None if absent), as committed."""

    @abc.abstractmethod
    async def scan(self, table: str, *, prefix: str = "", after: str | None = None,
                   limit: int = 100) -> list[tuple[str, bytes]]:
        """Up to ``limit`` records of a table whose keys start with ``prefix``, in key order (UTF-8
        bytes), starting after ``after`` (exclusive): a cursor that stays stable while keys are added."""

    @abc.abstractmethod
    async def room_ids(self) -> list[str]:
        """Rooms that have any stored key."""

    @abc.abstractmethod
    async def dispose_room(self, room: str) -> None:
        """Delete every key of a room, durably."""

    @abc.abstractmethod
    def statistics(self) -> StoreStatistics:
        """Counters since start."""
