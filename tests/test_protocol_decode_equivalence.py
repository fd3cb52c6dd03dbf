"""``decode`` (unpacking without the pairs hook when it can, compiled loaders) accepts exactly what
the reference decode (tests/decode_reference.py: the hook on every map, the generic field walk)
accepts, returns equal frames, and refuses with the same code, message, request id and close code.

The inputs are built byte by byte, not with ``packb``, so that they can hold what a dict cannot:
duplicate keys (top level and nested), byte-string and integer keys, map16 headers around few keys,
non-minimal integers, float32, ext values, and UTF-8 or integers whose bytes look like map headers.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.protocol import (
    CLIENT_LIMITS, SERVER_LIMITS, Limits, RemoteProtocolError, Sender, decode, dump_record, encode,
)
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import Frame
from roost.protocol.schema import Bool, Enum, Int, Spec, Str
from tests.decode_reference import reference_decode
from tests.samples import CLIENT, RECORDS, SERVER
from tests.test_protocol_fuzz import msgpack_values

EQUIV = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SAMPLES: list[tuple[Sender, Frame]] = [(Sender.CLIENT, f) for f in CLIENT.values()] + [
    (Sender.SERVER, f) for f in SERVER.values()
]
TINY = Limits(max_frame_bytes=96, max_depth=2, max_chat_chars=3, max_meta_bytes=4, max_presence_bytes=4,
              max_chat_meta_bytes=4, max_state_bytes=4, max_inbox_body_bytes=4)
limits_choice = st.sampled_from([None, TINY])


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def map_header(count: int, wide: bool) -> bytes:
    if count <= 15 and not wide:
        return bytes([0x80 | count])
    return b"\xde" + struct.pack(">H", count)


def encode_map(pairs: list[tuple[bytes, bytes]], wide: bool = False) -> bytes:
    return map_header(len(pairs), wide) + b"".join(k + v for k, v in pairs)


KEYS = ["t", "id", "room", "cid", "text", "meta", "n", "on", "data", "status", "x", "é"]
keys = st.sampled_from(KEYS).map(pack) | st.sampled_from([b"t", b"id"]).map(pack) | st.integers(-1, 3).map(pack)
leaves = st.one_of(
    msgpack_values.map(pack),
    st.sampled_from(["chat_send", "typing", "read", "send", "presence_set", "state_set", "r-7f3a", "online"]).map(pack),
    st.integers(0, 2**16 - 1).map(lambda i: b"\xcd" + struct.pack(">H", i)),  # uint16 even when smaller fits
    st.integers(0, 255).map(lambda i: bytes([0xCC, i])),  # uint8, e.g. 0x85: a byte that looks like a fixmap
    st.floats(width=32, allow_nan=False).map(lambda f: b"\xca" + struct.pack(">f", f)),
    st.sampled_from([b"\xd4\x01\x00", b"\xc7\x00\x05", b"\xd6\xff\x00\x00\x00\x01"]),  # ext, empty ext, timestamp
    st.text(alphabet="аłü你-_ a", max_size=6).map(pack),  # UTF-8 continuation bytes 0x80-0x8f
    st.text(alphabet="aZ9_-é٣ ", max_size=5).map(pack),  # near room/message ids: non-ASCII letters and digits
    st.sampled_from([-1, 0, 1, 100, 101, 999, 1000, 65535, 300_000, 2**32 - 1, 2**32, 2**53 - 1, 2**53]).map(pack),
)
wire_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4).map(lambda items: bytes([0x90 | len(items)]) + b"".join(items))
    | st.tuples(st.lists(st.tuples(keys, children), max_size=4), st.booleans()).map(lambda m: encode_map(*m)),
    max_leaves=12,
)


def outcome(decoder: Any, data: bytes, sender: Sender, limits: Limits | None) -> tuple[Any, ...]:
    try:
        frame = decoder(data, sender, limits)
    except RemoteProtocolError as error:
        return ("refused", error.code, error.message, error.request_id, error.close_code)
    # repr, not ==: a NaN inside an opaque value is not equal to itself; repr shows types and enums.
    return ("frame", type(frame), repr(frame))


def same(data: bytes, sender: Sender, limits: Limits | None) -> tuple[Any, ...]:
    expected = outcome(reference_decode, data, sender, limits)
    assert outcome(decode, data, sender, limits) == expected, data
    return expected


def frame_pairs(frame: Frame) -> list[tuple[bytes, bytes]]:
    return [(pack(k), pack(v)) for k, v in msgpack.unpackb(encode(frame), raw=False).items()]


@EQUIV
@given(sample=st.sampled_from(SAMPLES), data=st.data(), limits=limits_choice)
def test_mutated_valid_frames_decode_alike(
    sample: tuple[Sender, Frame], data: st.DataObject, limits: Limits | None
) -> None:
    sender, frame = sample
    pairs = frame_pairs(frame)
    for _ in range(data.draw(st.integers(0, 3))):
        action = data.draw(st.sampled_from(["replace", "duplicate", "delete", "add", "bytes_key"]))
        at = data.draw(st.integers(0, max(len(pairs) - 1, 0)))
        if action == "replace" and pairs:
            pairs[at] = (pairs[at][0], data.draw(wire_values))
        elif action == "duplicate" and pairs:
            twin = (pairs[at][0], data.draw(st.just(pairs[at][1]) | wire_values))
            pairs.insert(data.draw(st.integers(0, len(pairs))), twin)
        elif action == "delete" and pairs:
            del pairs[at]
        elif action == "bytes_key" and pairs and type(key := msgpack.unpackb(pairs[at][0])) is str:
            pairs[at] = (pack(key.encode()), pairs[at][1])
        else:
            pairs.insert(at, (data.draw(keys), data.draw(wire_values)))
    same(encode_map(pairs, wide=data.draw(st.booleans())), sender, limits)


@EQUIV
@given(pairs=st.lists(st.tuples(keys, wire_values), max_size=7), wide=st.booleans(), sender=st.sampled_from(Sender),
       limits=limits_choice)
def test_arbitrary_maps_decode_alike(
    pairs: list[tuple[bytes, bytes]], wide: bool, sender: Sender, limits: Limits | None
) -> None:
    same(encode_map(pairs, wide), sender, limits)


@EQUIV
@given(value=wire_values | st.binary(max_size=60), sender=st.sampled_from(Sender), limits=limits_choice)
def test_arbitrary_values_and_bytes_decode_alike(value: bytes, sender: Sender, limits: Limits | None) -> None:
    same(value, sender, limits)


@EQUIV
@given(sample=st.sampled_from(SAMPLES), cut=st.integers(0, 10_000),
       flip=st.tuples(st.integers(0, 10_000), st.integers(0, 255)))
def test_truncated_and_flipped_frames_decode_alike(
    sample: tuple[Sender, Frame], cut: int, flip: tuple[int, int]
) -> None:
    sender, frame = sample
    data = bytearray(encode(frame))
    data[flip[0] % len(data)] ^= flip[1]
    same(bytes(data[: max(1, cut % (len(data) + 1))]), sender, None)


def test_every_sample_decodes_alike_and_fast_path_cases_are_met() -> None:
    for sender, frame in SAMPLES:
        assert same(encode(frame), sender, None) == ("frame", type(frame), repr(frame))
    # The top-level duplicate the fast path must see from the header count alone, and its twins.
    chat = frame_pairs(CLIENT["chat_send"])
    assert same(encode_map([*chat, chat[1]]), Sender.CLIENT, None)[1:3] == (
        ErrorCode.MALFORMED, "not a valid frame: duplicate map key")
    assert same(encode_map([*chat, (pack(b"t"), pack("x"))]), Sender.CLIENT, None)[0] == "refused"
    nested_twice = encode_map([(pack("a"), pack(1))] * 2)
    assert same(encode_map([*chat, (pack("x"), nested_twice)]), Sender.CLIENT, None)[0] == "refused"
    assert same(bytearray(encode(CLIENT["typing"])), Sender.CLIENT, None)[0] == "frame"  # type: ignore[arg-type]


def edge_values(spec: Spec, limits: Limits) -> list[Any]:
    """Values on both sides of each bound a spec checks (the inlined checks' off-by-one traps)."""
    if isinstance(spec, Int):
        return [spec.lo - 1, spec.lo, spec.hi, spec.hi + 1, True, float(spec.lo), None]
    if isinstance(spec, Str):
        top = spec.max_len if isinstance(spec.max_len, int) else int(getattr(limits, spec.max_len))
        lengths = {max(spec.min_len - 1, 0), spec.min_len, min(top, 300), top + 1}
        return [c * n for n in lengths for c in ("a", "-", "é", "٣", " ")] + [b"abc", 3, None]
    if isinstance(spec, Bool):
        return [True, False, 0, 1, None]
    if isinstance(spec, Enum):
        return [*(m.value for m in spec.enum_type), "nope", "", 1, None]
    return [{}, {"a": 1}, [], 1, "s", b"b", None, {"a": {"b": {"c": [1]}}}, "x" * 40]


@pytest.mark.parametrize("limits", [CLIENT_LIMITS, TINY], ids=["default", "tiny"])
def test_every_field_at_its_bounds_and_every_optional_left_out_decodes_alike(limits: Limits) -> None:
    for sender, frame in SAMPLES:
        base = msgpack.unpackb(encode(frame), raw=False)
        for name, spec, _required, _default in type(frame).fields_table():
            for value in edge_values(spec, limits):
                same(pack({**base, name: value}), sender, limits)
        optional = [name for name, _s, required, _d in type(frame).fields_table() if not required and name in base]
        for left_out in itertools.chain(itertools.combinations(optional, 1), itertools.combinations(optional, 2)):
            same(pack({k: v for k, v in base.items() if k not in left_out}), sender, limits)


def test_the_walk_and_the_compiled_loader_agree_on_every_valid_sample() -> None:
    # The loader sends only doubtful input to the walk; here the walk meets valid input as well.
    for record in [*CLIENT.values(), *SERVER.values(), *RECORDS.values()]:
        raw = msgpack.unpackb(msgpack.packb(dump_record(record), use_bin_type=True), raw=False)
        walked = type(record).walk_fields(raw, SERVER_LIMITS)
        for wire in (None, 1):  # 1: as if just decoded from a tiny frame (the byte limits then need no packing)
            assert walked == type(record).loader()(raw, SERVER_LIMITS, wire) == record
