"""The codec: every frame round-trips, and every kind of bad input gets its own stable error code."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from roost.protocol import CLIENT_LIMITS, SERVER_LIMITS, Limits, Sender, decode, dump_record, encode, load_record
from roost.protocol.codec import PAGE_BYTES, fit_page, record_size
from roost.protocol.schema import FieldProblem, Opaque
from roost.protocol.errors import CloseCode, ErrorCode, LocalProtocolError, RemoteProtocolError
from roost.protocol.frames import (
    CLIENT_FRAMES,
    SERVER_FRAMES,
    ChatMessage,
    ChatSend,
    ClientFrame,
    Join,
    Member,
    MembersPage,
    Ok,
    Phase,
    PresenceDiff,
    PresenceSet,
    PresenceStatus,
    RoomInfo,
    RoomSnapshot,
    StateSet,
)
from tests.samples import CLIENT, RECORDS, SERVER


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def wire(frame_type: str, sender: Sender = Sender.CLIENT) -> dict[str, Any]:
    """The msgpack map of the sample frame of ``frame_type``, to mutate."""
    samples = CLIENT if sender is Sender.CLIENT else SERVER
    return dict(msgpack.unpackb(encode(samples[frame_type]), raw=False))


def refused(data: bytes, sender: Sender = Sender.CLIENT, limits: Limits | None = None) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data, sender, limits)
    return info.value


# -- round trips ---------------------------------------------------------------------------------


def test_samples_cover_every_frame_type() -> None:
    assert set(CLIENT) == set(CLIENT_FRAMES)
    assert set(SERVER) == set(SERVER_FRAMES)
    assert not set(CLIENT_FRAMES) & set(SERVER_FRAMES)


@pytest.mark.parametrize("frame_type", sorted(CLIENT))
def test_client_frame_round_trips(frame_type: str) -> None:
    frame = CLIENT[frame_type]
    data = encode(frame)
    assert decode(data, Sender.CLIENT) == frame
    assert msgpack.unpackb(data, raw=False)["t"] == frame_type


@pytest.mark.parametrize("frame_type", sorted(SERVER))
def test_server_frame_round_trips(frame_type: str) -> None:
    frame = SERVER[frame_type]
    assert decode(encode(frame), Sender.SERVER) == frame


@pytest.mark.parametrize("frame_type", sorted(CLIENT))
def test_client_frames_are_refused_from_the_server(frame_type: str) -> None:
    error = refused(encode(CLIENT[frame_type]), Sender.SERVER)
    assert error.code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("frame_type", sorted(SERVER))
def test_server_frames_are_refused_from_a_client(frame_type: str) -> None:
    assert refused(encode(SERVER[frame_type]), Sender.CLIENT).code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_records_round_trip_through_ok_results(name: str) -> None:
    record = RECORDS[name]
    frame = Ok(id=1, result=dump_record(record))
    decoded = decode(encode(frame), Sender.SERVER)
    assert isinstance(decoded, Ok)
    assert load_record(type(record), decoded.result) == record


def test_encoding_is_deterministic_and_omits_absent_optionals() -> None:
    frame = ChatSend(id=7, room="r1", cid="c1", text="hi")
    assert encode(frame) == encode(ChatSend(id=7, room="r1", cid="c1", text="hi"))
    assert list(msgpack.unpackb(encode(frame), raw=False)) == ["t", "id", "room", "cid", "text"]


def test_enum_fields_decode_to_enum_members() -> None:
    frame = decode(encode(CLIENT["state_set"]), Sender.CLIENT)
    assert isinstance(frame, StateSet)
    assert frame.phase is Phase.PLAYING
    diff = decode(encode(SERVER["presence"]), Sender.SERVER)
    assert isinstance(diff, PresenceDiff)
    assert diff.join[0].status is PresenceStatus.ONLINE
    assert isinstance(diff.leave, tuple)


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    raw = wire("chat_send")
    raw["added_in_v2"] = {"anything": [1, 2]}
    assert decode(pack(raw), Sender.CLIENT) == CLIENT["chat_send"]


def test_nil_in_an_optional_field_means_absent() -> None:
    raw = wire("create")
    raw["meta"] = None
    frame = decode(pack(raw), Sender.CLIENT)
    assert dataclasses.replace(CLIENT["create"], meta=None) == frame  # type: ignore[type-var]


# -- malformed input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"\xc1", "reserved byte"),
        (b"\x82\xa1t", "truncated map"),
        (pack({"t": "ping"}) + b"\x00", "trailing bytes"),
        (b"\xd4\x05\x00", "ext type"),
        (b"\x81\xa1t\xa2\xff\xfe", "invalid utf-8 string"),
        (b"\x81\x90\x01", "array as map key"),
        (pack({"t": "send", "id": 1, "room": "r", "kind": "k", "body": {1: 2}}), "integer map key"),
        # Timestamps are ext type -1: one answer wherever they stand (the unpacker does not hand
        # them to ext_hook, so each place used to answer its own way, or not at all).
        (pack({"t": "send", "id": 1, "room": "r", "kind": "k", "body": {"when": msgpack.Timestamp(1)}}),
         "timestamp in opaque"),
        (pack({"t": "ping", "later": msgpack.Timestamp(1)}), "timestamp in an ignored key"),
        (pack({"t": "read", "id": 1, "room": "r", "n": msgpack.Timestamp(1)}), "timestamp in an int field"),
        (pack(msgpack.Timestamp(1)), "timestamp as the frame"),
        (bytes.fromhex("81a174c700ff"), "empty timestamp ext"),
        (bytes.fromhex("81a174c70005"), "empty ext of another type"),
        # Duplicate keys: msgpack keeps the last silently; a peer that keeps the first would read
        # another frame than the server (smuggling). Refused at any depth.
        (b"\x82\xa1t\xa4ping\xa1t\xa4ping", "duplicate key, same value"),
        (b"\x83\xa1t\xa5leave\xa2id\x01\xa2id\x02", "duplicate request id"),
        (b"\x85" + pack({"t": "send", "id": 1, "room": "r", "kind": "k"})[1:] + b"\xa4body\x82\xa1a\x01\xa1a\x02",
         "duplicate key in a nested map"),
        # bin keys pass msgpack's strict_map_key; {"t": .., b"t": ..} would be another frame to a
        # peer decoding with raw=True.
        (b"\x82\xa1t\xa4ping\xc4\x01t\xa5hello", "bin key beside its string twin"),
    ],
)
def test_malformed_msgpack_is_refused(data: bytes, why: str) -> None:
    error = refused(data)
    assert error.code is ErrorCode.MALFORMED, why
    assert error.close_code is None
    assert error.request_id is None


@pytest.mark.parametrize("value", [[1, 2], "ping", 7, None, b"\x81"])
def test_a_frame_must_be_a_map(value: Any) -> None:
    assert refused(pack(value)).code is ErrorCode.NOT_A_MAP


@pytest.mark.parametrize("tag", [None, "nope", 3, b"ping", "welcome"])
def test_unknown_frame_types(tag: Any) -> None:
    raw = {"id": 9} if tag is None else {"t": tag, "id": 9}
    error = refused(pack(raw))
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert error.request_id == 9


def test_the_error_names_the_frame_and_field() -> None:
    raw = wire("chat_send")
    raw["room"] = 5
    error = refused(pack(raw))
    assert error.code is ErrorCode.BAD_FIELD
    assert "chat_send.room" in error.message
    assert error.request_id == 10


@pytest.mark.parametrize("bad_id", [-1, 2**32, "1", 1.5, True])
def test_request_id_is_only_reported_when_valid(bad_id: Any) -> None:
    raw = wire("chat_send")
    raw["id"] = bad_id
    error = refused(pack(raw))
    assert error.request_id is None
    assert error.code is ErrorCode.BAD_FIELD


@pytest.mark.parametrize("frame_type", sorted(CLIENT))
def test_each_required_field_is_required(frame_type: str) -> None:
    cls = CLIENT_FRAMES[frame_type]
    for name, _spec, required, _default in cls.fields_table():
        if not required:
            continue
        raw = wire(frame_type)
        del raw[name]
        assert refused(pack(raw)).code is ErrorCode.MISSING_FIELD
        raw[name] = None
        assert refused(pack(raw)).code is ErrorCode.BAD_FIELD


@pytest.mark.parametrize(
    ("frame_type", "field", "value"),
    [
        ("chat_send", "text", 5),
        ("chat_send", "text", b"bytes"),
        ("chat_send", "id", 1.0),
        ("chat_send", "id", True),
        ("typing", "on", 1),
        ("typing", "on", "yes"),
        ("create", "max", 0),
        ("create", "max", 100_001),
        ("create", "meta", [1, 2]),
        ("create", "meta", "text"),
        ("presence_set", "status", "offline"),
        ("presence_set", "status", 3),
        ("state_set", "phase", "paused"),
        ("lobby", "limit", 0),
        ("lobby", "limit", 101),
        ("leave", "room", "has space"),
        ("leave", "room", ""),
        ("join", "code", "bad/code"),
        ("hello", "v", 0),
        ("hello", "hb", 999),
        ("read", "n", -1),
        ("read", "n", 2**53),
        ("admin", "op", "drop_tables"),
    ],
)
def test_ill_typed_or_out_of_range_fields(frame_type: str, field: str, value: Any) -> None:
    raw = wire(frame_type)
    raw[field] = value
    assert refused(pack(raw)).code is ErrorCode.BAD_FIELD


def test_bytes_map_keys_in_opaque_values_are_refused() -> None:
    raw = wire("send")
    raw["body"] = {b"k": 1}
    assert refused(pack(raw)).code is ErrorCode.MALFORMED  # by the unpacker, as every bin key
    # Values handed over in-process (engine.ops.publish, the service API) meet the spec instead.
    with pytest.raises(FieldProblem) as problem:
        Opaque().load({"a": [{b"k": 1}]}, SERVER_LIMITS)
    assert problem.value.code is ErrorCode.BAD_FIELD


def test_nested_records_are_validated() -> None:
    raw = wire("presence", Sender.SERVER)
    raw["join"] = [{"user": "u", "name": "n", "status": "online"}]  # last_seen missing
    assert refused(pack(raw), Sender.SERVER).code is ErrorCode.MISSING_FIELD
    raw["join"] = ["not a map"]
    assert refused(pack(raw), Sender.SERVER).code is ErrorCode.BAD_FIELD
    raw["join"] = {"not": "a list"}
    assert refused(pack(raw), Sender.SERVER).code is ErrorCode.BAD_FIELD


@pytest.mark.parametrize(
    ("frame_type", "fields", "ok"),
    [
        ("join", {"room": "r1"}, True),
        ("join", {"code": "ABC"}, True),
        ("join", {}, False),
        ("join", {"room": "r1", "code": "ABC"}, False),
        ("presence_set", {"status": "away"}, True),
        ("presence_set", {"data": 1}, True),
        ("presence_set", {}, False),
        ("state_set", {"phase": "ended"}, True),
        ("state_set", {"state": [1]}, True),
        ("state_set", {}, False),
    ],
)
def test_rules_across_fields(frame_type: str, fields: dict[str, Any], ok: bool) -> None:
    base = {"t": frame_type, "id": 1, "room": "r1", "version": 0}
    if frame_type == "join":
        base = {"t": "join", "id": 1}
    data = pack({**base, **fields})
    if ok:
        assert isinstance(decode(data, Sender.CLIENT), ClientFrame)
    else:
        assert refused(data).code is ErrorCode.BAD_FIELD


# -- limits: at, just under and just over each bound ----------------------------------------------


def _chat_of_size(total: int) -> bytes:
    """A chat_send frame whose encoding is exactly ``total`` bytes."""
    text_len = 100
    while True:
        data = pack({"t": "chat_send", "id": 1, "room": "r", "cid": "c", "text": "x" * text_len})
        if len(data) == total:
            return data
        text_len += total - len(data)


@pytest.mark.parametrize(("delta", "accepted"), [(-1, True), (0, True), (1, False)])
def test_frame_size_limit(delta: int, accepted: bool) -> None:
    limits = Limits(max_frame_bytes=4096, max_chat_chars=10_000)
    data = _chat_of_size(4096 + delta)
    if accepted:
        assert isinstance(decode(data, Sender.CLIENT, limits), ChatSend)
    else:
        error = refused(data, limits=limits)
        assert error.code is ErrorCode.TOO_LARGE
        assert error.close_code is CloseCode.MESSAGE_TOO_BIG


def test_default_frame_limits() -> None:
    assert CLIENT_LIMITS.max_frame_bytes == 64 * 1024
    assert SERVER_LIMITS.max_frame_bytes == 1024 * 1024
    error = refused(b"\x00" * (64 * 1024 + 1))
    assert error.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(("length", "accepted"), [(4095, True), (4096, True), (4097, False)])
def test_chat_text_limit(length: int, accepted: bool) -> None:
    data = pack({"t": "chat_send", "id": 1, "room": "r", "cid": "c", "text": "é" * length})
    if accepted:
        assert isinstance(decode(data, Sender.CLIENT), ChatSend)
    else:
        assert refused(data).code is ErrorCode.TOO_LONG


def test_chat_text_limit_is_configurable() -> None:
    data = pack({"t": "chat_send", "id": 1, "room": "r", "cid": "c", "text": "x" * 11})
    assert refused(data, limits=Limits(max_chat_chars=10)).code is ErrorCode.TOO_LONG
    assert isinstance(decode(data, Sender.CLIENT, Limits(max_chat_chars=11)), ChatSend)


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("depth", "accepted"), [(15, True), (16, True), (17, False), (5000, False)])
def test_opaque_depth_limit(depth: int, accepted: bool) -> None:
    raw = {"t": "send", "id": 1, "room": "r", "kind": "k", "body": _nested(depth)}
    if depth > 1000:
        data = b"\x91" * depth + b"\x01"  # deeper than msgpack's own stack: still a clean refusal
    else:
        data = pack(raw)
    if accepted:
        assert isinstance(decode(data, Sender.CLIENT), ClientFrame)
    else:
        assert refused(data).code in {ErrorCode.TOO_DEEP, ErrorCode.MALFORMED, ErrorCode.NOT_A_MAP}
        if depth < 1000:
            assert refused(data).code is ErrorCode.TOO_DEEP


def test_depth_limit_is_configurable() -> None:
    data = pack({"t": "send", "id": 1, "room": "r", "kind": "k", "body": _nested(3)})
    assert refused(data, limits=Limits(max_depth=2)).code is ErrorCode.TOO_DEEP
    assert isinstance(decode(data, Sender.CLIENT, Limits(max_depth=3)), ClientFrame)


@pytest.mark.parametrize(
    ("field", "limit"),
    [("room", 64), ("cid", 64)],
)
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_string_length_limits(field: str, limit: int, delta: int) -> None:
    raw = wire("chat_send")
    raw[field] = "a" * (limit + delta)
    if delta <= 0:
        assert isinstance(decode(pack(raw), Sender.CLIENT), ChatSend)
    else:
        assert refused(pack(raw)).code is ErrorCode.TOO_LONG


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_list_length_limits(delta: int) -> None:
    member = dump_record(RECORDS["Member"])
    page = {"members": [member] * (100 + delta)}
    if delta <= 0:
        assert len(load_record(MembersPage, page).members) == 100 + delta
    else:
        with pytest.raises(RemoteProtocolError) as info:
            load_record(MembersPage, page)
        assert info.value.code is ErrorCode.TOO_LONG


@pytest.mark.parametrize(("value", "accepted"), [(2**32 - 1, True), (2**32, False), (0, True), (-1, False)])
def test_request_id_range(value: int, accepted: bool) -> None:
    data = pack({"t": "leave", "id": value, "room": "r"})
    if accepted:
        assert decode(data, Sender.CLIENT) is not None
    else:
        assert refused(data).code is ErrorCode.BAD_FIELD


def test_limits_must_be_sane() -> None:
    with pytest.raises(ValueError, match="positive"):
        Limits(max_frame_bytes=10)
    with pytest.raises(ValueError, match="positive"):
        Limits(max_depth=0)
    with pytest.raises(ValueError, match="positive"):
        Limits(max_presence_bytes=0)


# -- records and results ---------------------------------------------------------------------------


def test_load_record_refuses_non_maps_and_bad_fields() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        load_record(RoomSnapshot, [1])
    assert info.value.code is ErrorCode.BAD_FIELD
    with pytest.raises(RemoteProtocolError) as info:
        load_record(ChatMessage, {"id": "m1"})
    assert info.value.code is ErrorCode.MISSING_FIELD


def test_dump_record_refuses_invalid_records() -> None:
    with pytest.raises(LocalProtocolError) as info:
        dump_record(Member(user="", name="n", status=PresenceStatus.ONLINE, last_seen=0))
    assert info.value.code is ErrorCode.BAD_FIELD


# -- encoding refuses what decoding would refuse --------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (ChatSend(id=1, room="r", cid="c", text=""), ErrorCode.BAD_FIELD),
        (ChatSend(id=1, room="r", cid="c", text="x" * 5000), ErrorCode.TOO_LONG),
        (ChatSend(id=1, room="r", cid="c", text=None), ErrorCode.MISSING_FIELD),  # type: ignore[arg-type]
        (Join(id=1), ErrorCode.BAD_FIELD),
        (PresenceSet(id=1, room="r", status="offline"), ErrorCode.BAD_FIELD),  # type: ignore[arg-type]
        (PresenceDiff(room="r", epoch=0, seq=0, ts=0, join=("x",)), ErrorCode.BAD_FIELD),  # type: ignore[arg-type]
        (PresenceDiff(room="r", epoch=0, seq=0, ts=0, leave="u1"), ErrorCode.BAD_FIELD),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_invalid_frames(frame: Any, code: ErrorCode) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(frame)
    assert info.value.code is code


def test_encode_refuses_frames_over_the_size_limit() -> None:
    frame = ChatSend(id=1, room="r", cid="c", text="x" * 4000)
    with pytest.raises(LocalProtocolError) as info:
        encode(frame, Limits(max_frame_bytes=1000))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_encode_refuses_non_frame_classes() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Impostor(ChatSend):
        """A subclass the codec's table does not know."""

    with pytest.raises(LocalProtocolError) as info:
        encode(Impostor(id=1, room="r", cid="c", text="x"))
    assert info.value.code is ErrorCode.UNKNOWN_TYPE


def test_enums_encode_from_plain_strings_too() -> None:
    frame = PresenceSet(id=1, room="r", status="away")  # type: ignore[arg-type]
    decoded = decode(encode(frame), Sender.CLIENT)
    assert isinstance(decoded, PresenceSet)
    assert decoded.status == "away"


@pytest.mark.parametrize("frame_type", sorted(SERVER))
def test_unvalidated_encoding_gives_the_same_bytes(frame_type: str) -> None:
    frame = SERVER[frame_type]
    assert encode(frame, validate=False) == encode(frame)


@pytest.mark.parametrize("frame_type", sorted(CLIENT))
def test_unvalidated_client_encoding_gives_the_same_bytes(frame_type: str) -> None:
    assert encode(CLIENT[frame_type], validate=False) == encode(CLIENT[frame_type])


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_unvalidated_records_dump_the_same(name: str) -> None:
    # The same bytes on the wire: an unvalidated dump keeps tuples (msgpack packs them as arrays).
    packed = msgpack.packb(dump_record(RECORDS[name], validate=False), use_bin_type=True)
    assert packed == msgpack.packb(dump_record(RECORDS[name]), use_bin_type=True)


def test_unvalidated_encoding_still_checks_the_size() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(ChatSend(id=1, room="r", cid="c", text="x" * 4000), Limits(max_frame_bytes=1000), validate=False)
    assert info.value.code is ErrorCode.TOO_LARGE


# -- byte limits and pages cut by size (PROTOCOL.md §3.4) ---------------------------------------


def sized(size: int) -> dict[str, Any]:
    """A map whose encoding is exactly ``size`` bytes (262 <= size < 65542)."""
    value = {"x": "a" * (size - 6)}
    assert len(pack(value)) == size
    return value


@pytest.mark.parametrize(
    ("frame_type", "field", "limit"),
    [
        ("create", "meta", "max_meta_bytes"),
        ("join_or_create", "meta", "max_meta_bytes"),
        ("presence_set", "data", "max_presence_bytes"),
        ("chat_send", "meta", "max_chat_meta_bytes"),
        ("state_set", "state", "max_state_bytes"),
    ],
)
@pytest.mark.parametrize("delta", [0, 1])
def test_opaque_byte_limits(frame_type: str, field: str, limit: str, delta: int) -> None:
    size = getattr(CLIENT_LIMITS, limit) + delta
    value = next(v for v in ({"x": b"a" * (size - n)} for n in (6, 8)) if len(pack(v)) == size)  # bin 16/32
    raw = {**wire(frame_type), field: value}
    limits = Limits(max_frame_bytes=1024 * 1024)
    if delta == 0:
        assert getattr(decode(pack(raw), Sender.CLIENT, limits), field) == raw[field]
        return
    with pytest.raises(RemoteProtocolError) as info:
        decode(pack(raw), Sender.CLIENT, limits)
    assert info.value.code is ErrorCode.TOO_LARGE and field in str(info.value)


def test_byte_limits_are_configurable() -> None:
    raw = {**wire("create"), "meta": sized(1000)}
    assert decode(pack(raw), Sender.CLIENT).meta == raw["meta"]
    with pytest.raises(RemoteProtocolError) as info:
        decode(pack(raw), Sender.CLIENT, Limits(max_meta_bytes=999))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_a_value_msgpack_cannot_encode_is_refused_when_measured() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(PresenceSet(id=1, room="r1", data={"n": 2**64}))
    assert info.value.code is ErrorCode.BAD_FIELD


def test_the_largest_records_are_far_below_a_frame() -> None:
    """Every field at its largest, with the byte limits at the most a server may configure: < 1/8 frame."""
    limits = SERVER_LIMITS
    wide = "\U0001f426"  # four bytes in UTF-8
    common = {"user": wide * 128, "name": wide * 64}
    member = Member(**common, status=PresenceStatus.OFFLINE, last_seen=2**53 - 1, sessions=1000, typing=True,
                    data={"x": b"d" * (limits.max_presence_bytes - 6)})
    message = ChatMessage(id="m" * 64, n=2**53 - 1, **common, text=wide * limits.max_chat_chars, ts=2**53 - 1,
                          cid=wide * 64, edited=2**53 - 1, deleted=True,
                          meta={"x": b"m" * (limits.max_chat_meta_bytes - 6)})
    info = RoomInfo(room="r" * 64, code="C" * 32, members=2**53 - 1, max=100_000, phase=Phase.PLAYING, public=True,
                    created=2**53 - 1, meta={"x": b"r" * (limits.max_meta_bytes - 6)})
    for record in (member, message, info):
        dump_record(record, limits)  # valid at these sizes
        assert record_size(record) < limits.max_frame_bytes // 8, type(record).__name__


def test_pages_are_cut_by_count_and_by_size() -> None:
    sizes = [10, 20, 30, 40]
    assert fit_page(sizes, 10, size=lambda n: n, budget=1000) == ([10, 20, 30, 40], False)
    assert fit_page(sizes, 2, size=lambda n: n, budget=1000) == ([10, 20], True)
    assert fit_page(sizes, 10, size=lambda n: n, budget=60) == ([10, 20, 30], True)
    assert fit_page(sizes, 10, size=lambda n: n, budget=5) == ([10], True)  # the first item always
    assert fit_page([], 10, size=lambda n: n) == ([], False)
    member = Member(user="u", name="U", status=PresenceStatus.ONLINE, last_seen=1)
    assert record_size(member) == len(pack(dump_record(member)))
    assert PAGE_BYTES <= SERVER_LIMITS.max_frame_bytes // 4
