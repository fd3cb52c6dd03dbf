"""The validating decode as it stood before the fast path (commit 28779b0): the reference the
equivalence property test (tests/test_protocol_decode_equivalence.py) holds ``decode`` to.

Kept verbatim in behaviour and out of ``protocol/``: one strict ``unpackb`` with the pairs hook on
every map, then the generic walk of each field's spec (``_walk_fields``, the loop that
``WireRecord.load_fields`` ran for every record). Do not "fix" it: it is the definition of which
inputs are accepted and of every error code and message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from roost.protocol.codec import _DEFAULT_LIMITS, _TABLES, Sender
from roost.protocol.errors import CloseCode, ErrorCode, RemoteProtocolError
from roost.protocol.frames import Frame
from roost.protocol.schema import FieldProblem, Limits, ListOf, Record, Spec, WireRecord


class _Refused(ValueError):
    pass


def _refuse_ext(code: int, data: bytes) -> Any:
    raise _Refused(f"ext type {code} is not allowed")


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise _Refused("duplicate map key")
    for key in mapping:
        if type(key) is not str:
            raise _Refused("map keys must be strings")
    return mapping


_ROWS: dict[type[WireRecord], tuple[tuple[str, Callable[[Any, Limits], Any], bool, Any], ...]] = {}


def _loader(spec: Spec) -> Callable[[Any, Limits], Any]:
    """``spec.load``, except that nested records are walked by the reference walk too (``Record.load``
    would call their ``load_fields``, the code under test)."""
    if isinstance(spec, Record):
        record_type = spec.record_type

        def load_record(value: Any, limits: Limits) -> Any:
            if type(value) is not dict:
                raise FieldProblem(ErrorCode.BAD_FIELD, f"expected map, got {type(value).__name__}")
            return _walk_fields(record_type, value, limits)

        return load_record
    if isinstance(spec, ListOf) and isinstance(spec.item, Record):
        item = _loader(spec.item)
        return lambda value, limits: spec._each(value, limits, item)
    return spec.load


def _rows(cls: type[WireRecord]) -> tuple[tuple[str, Callable[[Any, Limits], Any], bool, Any], ...]:
    rows = _ROWS.get(cls)
    if rows is None:
        rows = _ROWS[cls] = tuple((n, _loader(s), r, d) for n, s, r, d in cls.fields_table())
    return rows


def _walk_fields(cls: type[WireRecord], raw: dict[Any, Any], limits: Limits) -> Any:
    kwargs: dict[str, Any] = {}
    for name, load, required, default in _rows(cls):
        value = raw.get(name)
        if value is None:
            if required:
                if name in raw:
                    raise FieldProblem(ErrorCode.BAD_FIELD, f"{name}: nil is not allowed")
                raise FieldProblem(ErrorCode.MISSING_FIELD, f"{name}: required field is missing")
            kwargs[name] = default
            continue
        try:
            kwargs[name] = load(value, limits)
        except FieldProblem as problem:
            raise FieldProblem(problem.code, f"{name}: {problem.message}") from None
    record = cls(**kwargs)
    rule = record.check()
    if rule is not None:
        raise FieldProblem(ErrorCode.BAD_FIELD, rule)
    return record


def reference_decode(data: bytes, sender: Sender, limits: Limits | None = None) -> Frame:
    limits = limits or _DEFAULT_LIMITS[sender]
    if len(data) > limits.max_frame_bytes:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE,
            f"frame of {len(data)} bytes exceeds {limits.max_frame_bytes}",
            close_code=CloseCode.MESSAGE_TOO_BIG,
        )
    try:
        raw = msgpack.unpackb(
            data, raw=False, strict_map_key=True, object_pairs_hook=_unique_keys, max_ext_len=0, ext_hook=_refuse_ext,
        )
    except _Refused as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"not a valid frame: {exc}") from None
    except Exception as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"not a msgpack value: {type(exc).__name__}") from None
    if type(raw) is not dict:
        raise RemoteProtocolError(ErrorCode.NOT_A_MAP, "a frame must be a msgpack map")
    request_id = raw.get("id")
    if type(request_id) is not int or not 0 <= request_id <= 2**32 - 1:
        request_id = None
    frame_type = raw.get("t")
    cls = _TABLES[sender].get(frame_type) if type(frame_type) is str else None
    if cls is None:
        shown = frame_type if type(frame_type) is str else type(frame_type).__name__
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown {sender.value} frame type {str(shown)[:32]!r}", request_id=request_id
        )
    try:
        frame: Frame = _walk_fields(cls, raw, limits)
    except FieldProblem as problem:
        raise RemoteProtocolError(problem.code, f"{frame_type}.{problem.message}", request_id=request_id) from None
    return frame
