"""The store's write-ahead log: what makes a commit durable with one sequential write and one fsync.

Why a log in front of LMDB (measured on this machine, ``python -m roost.bench durable`` and the
figures in the LMDB store's docstring): an LMDB write transaction with ``sync`` costs two
``fdatasync`` calls (the data pages, then the meta page, in that order: LMDB's crash safety) and one
``pwrite`` per dirty page. The pages of a copy-on-write B+tree land all over the file, so a commit
carrying nine rooms' turns wrote ~45 scattered pages: ~360 µs of kernel CPU and 1.7 ms of wall time,
against 48 µs and 0.19 ms for appending the same 3 KB to a log and syncing it. LMDB's ``NOSYNC`` is no
way out (it can corrupt the database on power loss: a meta page may reach the disk before the pages
it points at), so LMDB keeps syncing, only rarely: every acknowledged batch is first one record
here, and a *checkpoint* applies everything logged since the last one to LMDB in one transaction,
off the path of any acknowledgement (each page rewritten once per checkpoint, not once per commit).

The format is sans-IO (:func:`encode_record`, :func:`read_chain`); :class:`Log` does the file work.

A record: ``length u32 | crc32 u32 | seq u64 | payload`` (little-endian); the CRC covers the length,
the seq and the payload. Seqs increase by one per record, across segments and restarts.

Two segment files, ``log.0`` and ``log.1``. Appends go to the *active* one; a checkpoint switches the
appends to the other one (from its start) and applies the records of the one it left. Invariant:
the inactive segment holds only records already applied to LMDB, so overwriting it loses nothing.
Once they are applied it is *wiped* (:meth:`Log.wipe`: zeros over all of it, synced) before appends
may return to it, and recovery wipes both: a reused segment holds nothing behind its new chain.
The trap this answers: an older cycle's bytes behind the new chain include record *payloads*, which
are user bytes (a chat message, a profile). A value embedding a whole record with the next seq,
lying exactly where the new chain ends, passes the CRC and the seq checks below, and a crash then
replays it as a commit nobody made. The seq and CRC rules only hold against stale *records*, not
against stale bytes read from the middle of one.

Reading a segment back (:func:`read_chain`) takes records from its start while each is whole, its
CRC holds and its seq is its predecessor's plus one. The traps this answers:

- a torn last record (the process died inside ``pwrite``): its CRC fails, the chain ends before it.
  It was never acknowledged (acknowledgement waits for the fsync after the whole write);
- a reused segment that still held an older cycle's records past the new ones (a wipe cut short by a
  crash, or a log written before wipes): their seqs are lower than the new chain's (seqs only grow),
  so they cannot continue it;
- a segment grows by writing zeros ahead (:meth:`Log.append`), never by appending: an overwrite of
  written blocks is synced by ``fdatasync`` without a journal commit for the file's size (48 µs of
  kernel time here, 71 µs for an append), and a zero length ends the chain.

Recovery (:meth:`Log.recover`) reads both chains; LMDB records the seq of the last record it applied
(``wal/applied``, written in the same transaction as the records), and every record after it must
follow without a gap, or the store refuses to open rather than guess.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

__all__ = ["HEADER", "Log", "LogGap", "encode_record", "read_chain"]

HEADER = struct.Struct("<IIQ")
"""length of the payload, CRC-32 of (length, seq, payload), seq."""

_LEN_SEQ = struct.Struct("<IQ")

SEGMENTS = ("log.0", "log.1")
"""The two segment files, in the store directory next to LMDB's ``data.mdb``."""

_GROW_MIN = 64 << 10
_GROW_MAX = 4 << 20
"""A segment grows by at least 64 KiB of zeros (a test's store writes a few KB), by its own size up
to 4 MiB at a time (a busy engine logs MBs between checkpoints)."""


class LogGap(Exception):
    """The records after LMDB's last applied one do not follow on: the log cannot be replayed."""


def encode_record(seq: int, payload: bytes) -> bytes:
    """One record, ready to write."""
    crc = zlib.crc32(payload, zlib.crc32(_LEN_SEQ.pack(len(payload), seq)))
    return HEADER.pack(len(payload), crc, seq) + payload


def read_chain(data: bytes | memoryview) -> tuple[list[tuple[int, bytes]], int]:
    """The valid chain of records at the start of a segment's bytes, and where it ends.

    Returns ``([(seq, payload), ...], end_offset)``: the chain stops at the first record that is cut
    short, has a zero length, fails its CRC, or does not follow its predecessor's seq."""
    view = memoryview(data)
    records: list[tuple[int, bytes]] = []
    offset = 0
    size = len(view)
    head = HEADER.size
    while offset + head <= size:
        length, crc, seq = HEADER.unpack_from(view, offset)
        if length == 0 or offset + head + length > size:
            break
        if records and seq != records[-1][0] + 1:
            break
        payload = bytes(view[offset + head : offset + head + length])
        if zlib.crc32(payload, zlib.crc32(_LEN_SEQ.pack(length, seq))) != crc:
            break
        records.append((seq, payload))
        offset += head + length
    return records, offset


def _read_all(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of ``fd``. The trap: one ``pread`` returns at most 2 GiB - 4 KiB on
    Linux, and a segment grows that far while checkpoints fail; a short read would end the chain
    early and recovery would silently drop the acknowledged records behind it."""
    parts = []
    offset = 0
    while offset < size:
        part = os.pread(fd, size - offset, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


class Log:
    """The two segment files of one store directory (see the module docstring).

    Not thread-safe by itself: the store calls :meth:`append` from its one writer thread, one call
    at a time, and :meth:`switch` on the event loop only while no append is running.
    """

    def __init__(self, directory: Path) -> None:
        self._paths = [directory / name for name in SEGMENTS]
        self._fds: list[int] = []
        self._sizes: list[int] = []
        self._written: list[int] = []
        """Per segment, the end of what may be non-zero since its last wipe: a wipe zeros only that
        (a segment keeps its largest size, and a wipe of all of it per checkpoint would write MBs of
        zeros behind a cycle of a few KB)."""
        self.active = 0
        self.offset = 0
        """Where the next record goes in the active segment."""

    def open(self) -> None:
        """Open (or create) both segments. Raises ``OSError``."""
        try:
            for path in self._paths:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self._fds.append(fd)
                self._sizes.append(os.fstat(fd).st_size)
                self._written.append(self._sizes[-1])  # unknown bytes: all of it until a wipe
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def recover(self, applied: int) -> list[tuple[int, bytes]]:
        """The records after seq ``applied``, in order. The appends then start at the start of
        ``log.0``: the caller applies these records before it logs anything, so neither segment holds
        anything needed after that, and their old records cannot continue the new chain (seqs).

        Raises :class:`LogGap` when they do not follow ``applied`` (or each other) without a gap:
        a log that lost a record in the middle must not be replayed around the hole."""
        chains = []
        for fd, size in zip(self._fds, self._sizes):
            chains.append(read_chain(_read_all(fd, size))[0] if size else [])
        records = sorted((r for chain in chains for r in chain if r[0] > applied), key=lambda r: r[0])
        expected = applied + 1
        for seq, _payload in records:
            if seq != expected:
                raise LogGap(f"the store's log jumps from record {expected - 1} to {seq}")
            expected += 1
        self.last_seq = max([applied, *(chain[-1][0] for chain in chains if chain)])
        """The highest seq found in either segment (applied or not): the next record's seq follows it,
        so no record of an older cycle can ever continue a new chain."""
        self.active, self.offset = 0, 0
        return records

    def fits(self, size: int) -> bool:
        """Whether a record of ``size`` bytes fits the active segment without growing it."""
        return self.offset + size <= self._sizes[self.active]

    def append(self, record: bytes) -> None:
        """Write ``record`` after the last one and make it durable (``fdatasync``). Raises ``OSError``;
        then nothing is known of the record, and the offset stays: the store stops writing."""
        fd = self._fds[self.active]
        end = self.offset + len(record)
        size = self._sizes[self.active]
        if end > size:  # grow by overwriting zeros, never by appending (see the module docstring)
            grown = max(end, size + min(max(size, _GROW_MIN), _GROW_MAX))
            os.pwrite(fd, bytes(grown - size), size)
            self._sizes[self.active] = grown
        written = os.pwrite(fd, record, self.offset)
        if written != len(record):  # pragma: no cover - a regular file takes the whole write or raises
            raise OSError(f"short write to the store's log ({written} of {len(record)} bytes)")
        os.fdatasync(fd)
        self.offset = end
        if end > self._written[self.active]:
            self._written[self.active] = end

    def wipe(self, index: int) -> None:
        """Overwrite segment ``index`` with zeros and sync it (see the module docstring: no user bytes
        may lie behind a new chain). Only for a segment whose records are all applied, and never the
        active one: called from a checkpoint's thread while the writer thread appends to the other
        segment (separate descriptors; its size is not changed). Raises ``OSError``."""
        fd, size = self._fds[index], self._written[index]
        zeros = bytes(min(size, _GROW_MAX))
        offset = 0
        while offset < size:
            offset += os.pwrite(fd, zeros[: size - offset], offset)
        if size:
            os.fdatasync(fd)
        self._written[index] = 0

    def switch(self) -> None:
        """Send the next appends to the other segment, from its start (a checkpoint begins)."""
        self.active ^= 1
        self.offset = 0

    @property
    def sizes(self) -> list[int]:
        """Each segment file's size in bytes (for tests and statistics)."""
        return list(self._sizes)
