"""Encode frames to bytes and decode bytes to frames, validating everything on the way in.

``decode`` is the only door from the network into Roost: for any input it either returns a valid
frame of the expected direction or raises :class:`~roost.protocol.errors.RemoteProtocolError` with a stable
code. It never raises anything else and runs in time linear in the input, whose size is checked
before any parsing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgpack

from .errors import CloseCode, ErrorCode, LocalProtocolError, RemoteProtocolError
from .frames import CLIENT_FRAMES, SERVER_FRAMES, Frame
from .schema import FieldProblem, Limits, WireRecord

__all__ = [
    "CLIENT_LIMITS",
    "PAGE_BYTES",
    "SERVER_LIMITS",
    "Sender",
    "decode",
    "dump_record",
    "encode",
    "fit_page",
    "load_record",
    "record_size",
]

CLIENT_LIMITS = Limits()
"""Default limits for frames sent by clients: 64 KiB frames, depth 16, 4,096-character chat, 16 KiB
room meta, presence data and chat meta, 256 KiB game state."""
SERVER_LIMITS = Limits(
    max_frame_bytes=1024 * 1024, max_meta_bytes=32 * 1024, max_presence_bytes=32 * 1024,
    max_chat_meta_bytes=32 * 1024, max_inbox_body_bytes=32 * 1024,
)
"""Limits for frames sent by the server: 1 MiB frames, and the byte limits at the most a server may be
configured with (32 KiB each), so a client accepts whatever a server within them sends. At these
values the largest record (a chat message: 16 KiB of text and 32 KiB of meta) is under 1/8 of a frame."""
PAGE_BYTES = SERVER_LIMITS.max_frame_bytes // 4
"""The encoded bytes the items of one page (``lobby``, ``members``, ``history``, admin ``rooms``, the
members of a snapshot) may take up together. A quarter of a server frame: a snapshot adds at most
its room meta and game state (32 KiB + 256 KiB) to it and stays well under the frame limit."""


class Sender(enum.Enum):
    """Which side sent the bytes being decoded; each side has its own set of frame types."""

    CLIENT = "client"
    SERVER = "server"


_TABLES = {Sender.CLIENT: CLIENT_FRAMES, Sender.SERVER: SERVER_FRAMES}
_DEFAULT_LIMITS = {Sender.CLIENT: CLIENT_LIMITS, Sender.SERVER: SERVER_LIMITS}
_CLIENT_LOADERS = {t: cls.loader() for t, cls in CLIENT_FRAMES.items()}
_SERVER_LOADERS = {t: cls.loader() for t, cls in SERVER_FRAMES.items()}
"""Each frame type's compiled loader (``WireRecord.loader``) by ``t``; picked by ``sender is``, not by
a dict keyed by ``Sender``: an Enum's ``__hash__`` is a Python call, and looking ``Sender.CLIENT`` up
on the enum class costs ~900 instructions (CPython 3.11) against ~40 for a module global."""
_CLIENT = Sender.CLIENT

R = TypeVar("R", bound=WireRecord)


class _Refused(ValueError):
    """Raised from inside the unpacker by our hooks; its text is ours, so it may reach the peer."""


def _refuse_ext(code: int, data: bytes) -> Any:
    raise _Refused(f"ext type {code} is not allowed")


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Build a map, refusing a key given twice and any key that is not a string.

    msgpack would keep the last value silently, and a proxy or client library that keeps the first
    would then read another frame than the server does (request smuggling). ``strict_map_key`` does
    not check this; the unpacker hands a pairs hook every map, so one length comparison does.
    """
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise _Refused("duplicate map key")
    for key in mapping:
        if type(key) is not str:
            # ``strict_map_key`` still lets bin keys through: ``{"t": .., b"t": ..}`` reads as
            # another frame to a peer that decodes with ``raw=True`` (the same smuggling).
            raise _Refused("map keys must be strings")
    return mapping


_MARKED = bytes(1 if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF, 0xC4, 0xC5, 0xC6) else 0 for b in range(256))
"""``bytes.translate`` table marking every byte that can start a map (fixmap, map16, map32) or a byte
string (bin8/16/32): where none follows the first byte, the only map is the top one. (Two C calls:
cheaper than a regex search, or ``isdisjoint`` with a set, which hashes every byte.)"""


def _unpack(data: bytes) -> Any:
    """``unpackb`` as strict as with ``_unique_keys`` on every map, without the hook when it can.

    The hook is a Python call per map (about as much as the C unpacking itself). A frame whose
    first byte is a fixmap and whose later bytes include no map or bin header has no map but the
    top one and no byte-string key; that map holds a duplicate key exactly when it has fewer keys
    than its header counts, so the plain unpacker checks it as well. Any doubt (a marked byte, which
    UTF-8 text or an integer above 127 may also be; anything the plain unpacker refuses) decodes
    again with the hook, whose errors are the ones reported: the fast path never decides a refusal.
    """
    if type(data) is bytes and data and 0x80 <= data[0] <= 0x8F and data.translate(_MARKED).find(1, 1) < 0:
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0, ext_hook=_refuse_ext)
        except Exception:  # noqa: S110 - the strict decode below reports it
            pass
        else:
            if len(raw) == data[0] & 0x0F:
                return raw
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_unique_keys,
            # Timestamps (ext -1) never reach ext_hook: the unpacker turns them into Timestamp
            # objects, which would then be refused by whichever check met them first (or ignored in
            # an unknown key). A zero ext length limit makes every ext with a body, timestamps
            # included, fail right here as ``malformed``; ext_hook catches the empty ones.
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except _Refused as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"not a valid frame: {exc}") from None
    except Exception as exc:  # msgpack's C unpacker raises several types; all mean "malformed"
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"not a msgpack value: {type(exc).__name__}") from None


def _request_id(raw: dict[Any, Any]) -> int | None:
    """The frame's ``id`` when it is a valid request id, to answer an error in band."""
    request_id = raw.get("id")
    if type(request_id) is not int or not 0 <= request_id <= 2**32 - 1:
        return None
    return request_id


def decode(data: bytes, sender: Sender, limits: Limits | None = None) -> Frame:
    """Decode one frame sent by ``sender``.

    Raises:
        RemoteProtocolError: for any invalid input. ``request_id`` is set when the frame's ``id``
            could be read, so the error can be answered in band; ``close_code`` is set when the
            connection should be closed instead (a frame over the size limit).
    """
    limits = limits or _DEFAULT_LIMITS[sender]
    if len(data) > limits.max_frame_bytes:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE,
            f"frame of {len(data)} bytes exceeds {limits.max_frame_bytes}",
            close_code=CloseCode.MESSAGE_TOO_BIG,
        )
    raw = _unpack(data)
    if type(raw) is not dict:
        raise RemoteProtocolError(ErrorCode.NOT_A_MAP, "a frame must be a msgpack map")
    frame_type = raw.get("t")
    loaders = _CLIENT_LOADERS if sender is _CLIENT else _SERVER_LOADERS
    load = loaders.get(frame_type) if type(frame_type) is str else None
    if load is None:
        shown = frame_type if type(frame_type) is str else type(frame_type).__name__
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown {sender.value} frame type {str(shown)[:32]!r}",
            request_id=_request_id(raw),
        )
    try:
        frame: Frame = load(raw, limits, len(data))
    except FieldProblem as problem:
        raise RemoteProtocolError(
            problem.code, f"{frame_type}.{problem.message}", request_id=_request_id(raw)
        ) from None
    return frame


def encode(frame: Frame, limits: Limits | None = None, *, validate: bool = True) -> bytes:
    """Encode one frame, checking it against the same rules ``decode`` applies.

    ``validate=False`` skips the field checks (not the size limit) for frames built only from values
    this process has already validated, such as a chat event made of a decoded ``chat_send``: it
    roughly halves the cost of encoding a broadcast. Never use it for values an application supplied.

    Raises:
        LocalProtocolError: the frame is invalid or too large; a bug in the caller.
    """
    sender = Sender.CLIENT if frame.TYPE in CLIENT_FRAMES else Sender.SERVER
    if _TABLES[sender].get(frame.TYPE) is not type(frame):
        raise LocalProtocolError(ErrorCode.UNKNOWN_TYPE, f"{type(frame).__name__} is not a frame type")
    limits = limits or _DEFAULT_LIMITS[sender]
    out: dict[str, Any] = {"t": frame.TYPE}
    if validate:
        try:
            frame.dump_into(out, limits)
        except FieldProblem as problem:
            raise LocalProtocolError(problem.code, f"{frame.TYPE}.{problem.message}") from None
    else:
        frame.plain_into(out)
    data: bytes = msgpack.packb(out, use_bin_type=True)
    if len(data) > limits.max_frame_bytes:
        raise LocalProtocolError(
            ErrorCode.TOO_LARGE, f"{frame.TYPE} frame of {len(data)} bytes exceeds {limits.max_frame_bytes}"
        )
    return data


T = TypeVar("T")


def record_size(record: WireRecord) -> int:
    """The encoded size of one record as it sits in a page (its own msgpack map, packed once)."""
    return len(msgpack.packb(record.plain_fields(), use_bin_type=True))


def fit_page(items: Iterable[T], limit: int, size: Callable[[T], int], budget: int = PAGE_BYTES) -> tuple[list[T], bool]:
    """The leading ``items`` that make one page: at most ``limit`` of them, whose ``size`` adds up to
    at most ``budget``; and whether any item was left out (the page then gets a ``next`` cursor).

    Each item is measured once, and only the items looked at (the page and one more), so a long list
    costs no more than its page. The first item is always taken: the byte limits on what members put
    in records keep any one record far smaller than a page, and a page of none would never advance.
    """
    chosen: list[T] = []
    total = 0
    for item in items:
        if len(chosen) >= limit:
            return chosen, True
        cost = size(item)
        if chosen and total + cost > budget:
            return chosen, True
        chosen.append(item)
        total += cost
    return chosen, False


def load_record(record_type: type[R], value: Any, limits: Limits = SERVER_LIMITS) -> R:
    """Validate a decoded value (e.g. an ``ok`` frame's ``result``) as a record type.

    Raises:
        RemoteProtocolError: the value does not fit the record.
    """
    if type(value) is not dict:
        raise RemoteProtocolError(ErrorCode.BAD_FIELD, f"{record_type.__name__}: expected map")
    try:
        record: R = record_type.load_fields(value, limits)
    except FieldProblem as problem:
        raise RemoteProtocolError(problem.code, f"{record_type.__name__}.{problem.message}") from None
    return record


def dump_record(record: WireRecord, limits: Limits = SERVER_LIMITS, *, validate: bool = True) -> dict[str, Any]:
    """Turn a record into the msgpack-ready map to put in an ``ok`` result (``validate`` as in encode).

    Raises:
        LocalProtocolError: the record is invalid.
    """
    if not validate:
        return record.plain_fields()
    try:
        return record.dump_fields(limits)
    except FieldProblem as problem:
        raise LocalProtocolError(problem.code, f"{type(record).__name__}.{problem.message}") from None
