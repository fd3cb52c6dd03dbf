"""Property tests: whatever arrives, ``decode`` returns a valid frame or raises a ProtocolError.

Nothing else may escape (no KeyError, TypeError, RecursionError...), and decoding never hangs: each
example runs under hypothesis' deadline. 2,000+ examples per property.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.protocol import RemoteProtocolError, Sender, decode, encode
from roost.protocol.frames import Frame
from roost.protocol.tokens import Keyring, SessionSigner, TokenError, verify
from tests.samples import CLIENT, SERVER

FUZZ = settings(max_examples=2000, deadline=500, suppress_health_check=[HealthCheck.too_slow])

SAMPLES: list[tuple[Sender, Frame]] = [(Sender.CLIENT, f) for f in CLIENT.values()] + [
    (Sender.SERVER, f) for f in SERVER.values()
]

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def decode_or_protocol_error(data: bytes, sender: Sender) -> Frame | None:
    try:
        frame = decode(data, sender)
    except RemoteProtocolError as error:
        assert error.code.value  # a stable code, always
        return None
    # Whatever decodes must encode again, and stay the same through another round trip
    # (bytes are compared, not frames: NaN inside opaque values is not equal to itself).
    encoded = encode(frame)
    assert encode(decode(encoded, sender)) == encoded
    return frame


@FUZZ
@given(data=st.binary(max_size=300), sender=st.sampled_from(Sender))
def test_arbitrary_bytes(data: bytes, sender: Sender) -> None:
    decode_or_protocol_error(data, sender)


@FUZZ
@given(value=msgpack_values, sender=st.sampled_from(Sender))
def test_arbitrary_msgpack_values(value: Any, sender: Sender) -> None:
    decode_or_protocol_error(msgpack.packb(value, use_bin_type=True), sender)


@FUZZ
@given(sample=st.sampled_from(SAMPLES), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_valid_frames_with_mutated_bytes(sample: tuple[Sender, Frame], flips: list[tuple[int, int]]) -> None:
    sender, frame = sample
    data = bytearray(encode(frame))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    decode_or_protocol_error(bytes(data), sender)


@FUZZ
@given(sample=st.sampled_from(SAMPLES), cut=st.integers(0, 10_000))
def test_truncated_frames(sample: tuple[Sender, Frame], cut: int) -> None:
    sender, frame = sample
    data = encode(frame)
    decode_or_protocol_error(data[: cut % len(data)], sender)


@FUZZ
@given(sample=st.sampled_from(SAMPLES), data=st.data())
def test_valid_frames_with_mutated_fields(sample: tuple[Sender, Frame], data: st.DataObject) -> None:
    sender, frame = sample
    raw: dict[str, Any] = msgpack.unpackb(encode(frame), raw=False)
    keys = sorted(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        key = data.draw(st.sampled_from(keys))
        if action == "replace":
            raw[key] = data.draw(msgpack_values)
        elif action == "delete":
            raw.pop(key, None)
        else:
            raw[data.draw(st.text(max_size=8))] = data.draw(msgpack_values)
    decode_or_protocol_error(msgpack.packb(raw, use_bin_type=True), sender)


@FUZZ
@given(token=st.text(max_size=300) | st.binary(max_size=50).map(lambda b: b.hex()))
def test_arbitrary_tokens_only_raise_token_errors(token: str) -> None:
    keyring = Keyring()
    signer = SessionSigner(b"k" * 32)
    for check in (lambda t: verify(t, keyring, 0.0), lambda t: signer.check(t, 0.0)):
        with contextlib.suppress(TokenError):
            check(token)
