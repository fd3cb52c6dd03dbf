"""The published test vectors hold for this implementation, and they are complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nacl.signing import SigningKey

from roost.protocol import RemoteProtocolError, Sender, decode, encode
from roost.protocol.frames import CLIENT_FRAMES, SERVER_FRAMES
from roost.protocol.tokens import Keyring, SessionSigner, TokenError, kid_for, load_jwk, verify, verify_guest_proof
from tests import vectors_gen

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors"
FRAMES = json.loads((VECTORS / "frames.json").read_text(encoding="utf-8"))
TOKENS = json.loads((VECTORS / "tokens.json").read_text(encoding="utf-8"))


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def test_committed_vectors_match_the_generator() -> None:
    """Regenerating gives the committed files: the wire format has not drifted unnoticed."""
    assert FRAMES == json.loads(json.dumps(vectors_gen.frame_vectors()))
    assert TOKENS == json.loads(json.dumps(vectors_gen.token_vectors()))


def test_every_frame_type_has_a_valid_vector() -> None:
    names = {(v["sender"], v["name"]) for v in FRAMES["valid"]}
    assert names == {("client", t) for t in CLIENT_FRAMES} | {("server", t) for t in SERVER_FRAMES}


def test_every_decode_error_code_has_an_invalid_vector() -> None:
    codes = {v["error"] for v in FRAMES["invalid"]}
    assert codes == {"malformed", "not_a_map", "unknown_type", "missing_field", "bad_field", "too_long", "too_deep", "too_large"}


@pytest.mark.parametrize("vector", FRAMES["valid"], ids=lambda v: f"{v['sender']}-{v['name']}")
def test_valid_frame_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    frame = decode(data, Sender(vector["sender"]))
    assert encode(frame) == data
    assert msgpack.unpackb(data, raw=False) == _from_json(vector["frame"])
    assert msgpack.packb(_from_json(vector["frame"]), use_bin_type=True) == data


@pytest.mark.parametrize("vector", FRAMES["invalid"], ids=lambda v: v["name"])
def test_invalid_frame_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(bytes.fromhex(vector["hex"]), Sender(vector["sender"]))
    assert info.value.code.value == vector["error"]


def _keyring() -> Keyring:
    ring = Keyring()
    for key in TOKENS["keys"]:
        kid, verify_key, signing_key = load_jwk(key["private_jwk"])
        assert kid == key["kid"] == kid_for(verify_key)
        assert signing_key == SigningKey(bytes.fromhex(key["seed_hex"]))
        assert load_jwk(key["public_jwk"])[1] == verify_key
        ring = ring.with_key(kid, verify_key)
    return ring


def test_token_vectors_cover_every_outcome() -> None:
    outcomes = {case["expect"] for case in TOKENS["cases"]}
    assert outcomes == {"ok", "malformed", "unknown_key", "bad_signature", "expired", "not_yet_valid"}


@pytest.mark.parametrize("case", TOKENS["cases"], ids=lambda c: c["name"])
def test_token_vector(case: dict[str, Any]) -> None:
    keyring = _keyring()
    if case["expect"] == "ok":
        claims = verify(case["token"], keyring, case["now"], leeway=TOKENS["leeway"])
        expected = case["claims"]
        assert {k: getattr(claims, k) for k in ("sub", "name", "exp", "iat", "jti", "kid")} == {
            k: expected[k] for k in ("sub", "name", "exp", "iat", "jti", "kid")
        }
        for optional in ("nbf", "room", "role"):
            assert getattr(claims, optional) == expected.get(optional)
    else:
        with pytest.raises(TokenError) as info:
            verify(case["token"], keyring, case["now"], leeway=TOKENS["leeway"])
        assert info.value.reason == case["expect"]


def test_session_token_vector() -> None:
    session = TOKENS["session"]
    signer = SessionSigner(bytes.fromhex(session["secret_hex"]))
    claims = signer.check(session["token"], session["claims"]["exp"])
    assert {"sub": claims.sub, "sid": claims.sid, "exp": claims.exp} == session["claims"]


GUEST = json.loads((VECTORS / "guest.json").read_text(encoding="utf-8"))


def test_committed_guest_vectors_match_the_generator() -> None:
    assert GUEST == json.loads(json.dumps(vectors_gen.guest_vectors()))
    assert {case["expect"] for case in GUEST["cases"]} == {
        "ok", "expired", "not_yet_valid", "wrong_audience", "bad_signature", "malformed"}


@pytest.mark.parametrize("case", GUEST["cases"], ids=lambda c: c["name"])
def test_guest_proof_vector(case: dict[str, Any]) -> None:
    public = GUEST["device"]["public"]
    assert public == vectors_gen._b64(bytes(SigningKey(bytes.fromhex(GUEST["device"]["seed_hex"])).verify_key))
    if case["expect"] == "ok":
        proof = verify_guest_proof(case["proof"], audience=GUEST["audience"], now=case["now"], leeway=GUEST["leeway"])
        assert proof.key == public
    else:
        with pytest.raises(TokenError) as info:
            verify_guest_proof(case["proof"], audience=GUEST["audience"], now=case["now"], leeway=GUEST["leeway"])
        assert info.value.reason == case["expect"]
