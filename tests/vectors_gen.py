"""Regenerate ``protocol/vectors/*.json``: ``python -m tests.vectors_gen``.

The vectors let an implementation in any language check itself against Roost byte for byte. They are
generated once and committed; ``tests/test_protocol_vectors.py`` checks the committed files against
this implementation, so a change to the wire format shows up as a failing test (regenerate only on
purpose, with a protocol version bump where old peers would break).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgpack
from nacl.signing import SigningKey

from roost.protocol import Sender, encode
from roost.protocol.tokens import (
    Claims,
    SessionClaims,
    SessionSigner,
    kid_for,
    private_jwk,
    public_jwk,
    sign,
    sign_guest_proof,
)
from tests.samples import CLIENT, SERVER

OUT = Path(__file__).resolve().parent.parent / "protocol" / "vectors"
NOW = 1_795_000_000
LEEWAY = 30


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jsonable(value: Any) -> Any:
    """msgpack-decoded value → JSON (bytes become {"$bin": hex}, which no sample uses today)."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _pack(value: Any) -> str:
    return msgpack.packb(value, use_bin_type=True).hex()


def frame_vectors() -> dict[str, Any]:
    valid = []
    for sender, samples in ((Sender.CLIENT, CLIENT), (Sender.SERVER, SERVER)):
        for name, frame in samples.items():
            data = encode(frame)
            valid.append(
                {
                    "name": name,
                    "sender": sender.value,
                    "frame": _jsonable(msgpack.unpackb(data, raw=False)),
                    "hex": data.hex(),
                }
            )
    chat = {"t": "chat_send", "id": 1, "room": "r1", "cid": "c1", "text": "hi"}
    invalid = [
        ("empty input", "client", "", "malformed"),
        ("reserved byte 0xc1", "client", "c1", "malformed"),
        ("truncated map", "client", _pack(chat)[:-4], "malformed"),
        ("trailing bytes", "client", _pack(chat) + "00", "malformed"),
        ("ext type", "client", "d40500", "malformed"),
        ("timestamp ext in a field", "client", _pack({**chat, "meta": {}})[:-2] + "81a177d6ff00000001", "malformed"),
        ("timestamp ext in an unknown key", "client", "82a174a470696e67a177d6ff00000001", "malformed"),
        ("duplicate map key", "client", "83a174a56c65617665a2696401a2696402", "malformed"),
        ("invalid UTF-8 string", "client", "81a174a2fffe", "malformed"),
        ("integer map key", "client", _pack({"t": "ping", 1: 2}), "malformed"),
        ("array instead of map", "client", _pack(["chat_send", 1]), "not_a_map"),
        ("missing t", "client", _pack({"id": 1}), "unknown_type"),
        ("unknown t", "client", _pack({"t": "teleport", "id": 1}), "unknown_type"),
        ("server frame sent by a client", "client", _pack({"t": "pong", "time": 1}), "unknown_type"),
        ("client frame sent by the server", "server", _pack({"t": "ping"}), "unknown_type"),
        ("missing required field", "client", _pack({k: v for k, v in chat.items() if k != "cid"}), "missing_field"),
        ("nil in a required field", "client", _pack({**chat, "cid": None}), "bad_field"),
        ("string where an int belongs", "client", _pack({**chat, "id": "1"}), "bad_field"),
        ("bool where an int belongs", "client", _pack({**chat, "id": True}), "bad_field"),
        ("request id out of range", "client", _pack({**chat, "id": 2**32}), "bad_field"),
        ("room id with a bad character", "client", _pack({**chat, "room": "a b"}), "bad_field"),
        ("empty chat text", "client", _pack({**chat, "text": ""}), "bad_field"),
        ("chat text of 4097 characters", "client", _pack({**chat, "text": "x" * 4097}), "too_long"),
        ("room id of 65 characters", "client", _pack({**chat, "room": "r" * 65}), "too_long"),
        ("status outside its set", "client", _pack({"t": "presence_set", "id": 1, "room": "r", "status": "busy"}), "bad_field"),
        ("join with both room and code", "client", _pack({"t": "join", "id": 1, "room": "r", "code": "C"}), "bad_field"),
        ("opaque value nested 17 deep", "client", _pack({"t": "send", "id": 1, "room": "r", "kind": "k", "body": _deep(17)}), "too_deep"),
        ("frame over 65536 bytes", "client", _pack({**chat, "text": "x" * 65_510}), "too_large"),
    ]
    return {
        "description": "Roost wire frames. 'valid': decode(hex) gives 'frame' and encode(frame) gives hex "
        "(map keys in the order listed). 'invalid': decode(hex) fails with 'error' (an ErrorCode). "
        "Client limits: 65536-byte frames, depth 16, 4096-character chat text. "
        "A JSON object {\"$bin\": hex} stands for a msgpack bin value.",
        "protocol_version": 1,
        "valid": valid,
        "invalid": [{"name": n, "sender": s, "hex": h, "error": e} for n, s, h, e in invalid],
    }


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def token_vectors() -> dict[str, Any]:
    key_a = SigningKey(bytes(range(32)))
    key_b = SigningKey(bytes(range(32, 64)))
    stranger = SigningKey(bytes(range(64, 96)))
    kid_a, kid_b, kid_x = kid_for(key_a.verify_key), kid_for(key_b.verify_key), kid_for(stranger.verify_key)

    def claims(**changes: Any) -> Claims:
        base: dict[str, Any] = {"sub": "u-ann", "name": "Ann", "iat": NOW, "exp": NOW + 3600, "jti": "j-1", "kid": kid_a}
        return Claims(**{**base, **changes})

    def raw(header: dict[str, Any], body: dict[str, Any], key: SigningKey) -> str:
        h = _b64(json.dumps(header, separators=(",", ":")).encode())
        b = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{h}.{b}.{_b64(key.sign(f'{h}.{b}'.encode()).signature)}"

    good = sign(claims(), key_a)
    body = {"sub": "u-ann", "name": "Ann", "iat": NOW, "exp": NOW + 3600, "jti": "j-1"}
    head, payload, signature = good.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    cases: list[dict[str, Any]] = [
        {"name": "valid", "token": good, "now": NOW + 60, "expect": "ok"},
        {"name": "valid with room scope, role and nbf", "token": sign(claims(room="r-1", role="host", nbf=NOW), key_a), "now": NOW, "expect": "ok"},
        {"name": "signed by the second key of a rotation", "token": sign(claims(kid=kid_b), key_b), "now": NOW, "expect": "ok"},
        {"name": "expired exactly at exp + leeway (still valid)", "token": good, "now": NOW + 3600 + LEEWAY, "expect": "ok"},
        {"name": "expired one second after exp + leeway", "token": good, "now": NOW + 3600 + LEEWAY + 1, "expect": "expired"},
        {"name": "iat in the future beyond leeway", "token": good, "now": NOW - LEEWAY - 1, "expect": "not_yet_valid"},
        {"name": "nbf in the future beyond leeway", "token": sign(claims(nbf=NOW + 600), key_a), "now": NOW, "expect": "not_yet_valid"},
        {"name": "unknown kid", "token": sign(claims(kid=kid_x), stranger), "now": NOW, "expect": "unknown_key"},
        {"name": "known kid, signed by another key", "token": sign(claims(), stranger), "now": NOW, "expect": "bad_signature"},
        {"name": "one signature character changed", "token": f"{head}.{payload}.{flipped}", "now": NOW, "expect": "bad_signature"},
        {"name": "claims changed after signing", "token": f"{head}.{_b64(json.dumps({**body, 'sub': 'u-eve'}).encode())}.{signature}", "now": NOW, "expect": "bad_signature"},
        {"name": "alg none", "token": raw({"alg": "none", "kid": kid_a}, body, key_a), "now": NOW, "expect": "malformed"},
        {"name": "alg HS256", "token": raw({"alg": "HS256", "kid": kid_a}, body, key_a), "now": NOW, "expect": "malformed"},
        {"name": "no kid", "token": raw({"alg": "EdDSA"}, body, key_a), "now": NOW, "expect": "malformed"},
        {"name": "two parts", "token": f"{head}.{payload}", "now": NOW, "expect": "malformed"},
        {"name": "padded base64", "token": f"{head}.{payload}.{signature}==", "now": NOW, "expect": "malformed"},
        {"name": "exp is a string", "token": raw({"alg": "EdDSA", "kid": kid_a}, {**body, "exp": "soon"}, key_a), "now": NOW, "expect": "malformed"},
        {"name": "sub missing", "token": raw({"alg": "EdDSA", "kid": kid_a}, {k: v for k, v in body.items() if k != "sub"}, key_a), "now": NOW, "expect": "malformed"},
    ]
    signer = SessionSigner(bytes(range(100, 132)))
    session = signer.mint(SessionClaims(sub="u-ann", sid="s-1", exp=NOW + 600))
    return {
        "description": "Roost user tokens: compact JWS (JWT), alg EdDSA (Ed25519), kid in the header. "
        "Check each case with the keyring 'keys', leeway 'leeway' seconds and the case's 'now' (Unix s); "
        "'expect' is 'ok' (then 'claims' must match) or the failure kind. Keys are JWKs; 'seed_hex' is the "
        "private seed.",
        "leeway": LEEWAY,
        "keys": [
            {"kid": kid_a, "seed_hex": bytes(key_a).hex(), "public_jwk": public_jwk(key_a.verify_key, kid_a), "private_jwk": private_jwk(key_a, kid_a)},
            {"kid": kid_b, "seed_hex": bytes(key_b).hex(), "public_jwk": public_jwk(key_b.verify_key, kid_b), "private_jwk": private_jwk(key_b, kid_b)},
        ],
        "not_in_keyring": {"kid": kid_x, "seed_hex": bytes(stranger).hex()},
        "cases": [
            {**case, "claims": _claims_json(case)} if case["expect"] == "ok" else case for case in cases
        ],
        "session": {
            "description": "Server-side session token: 's1.' + base64url(JSON) + '.' + base64url(BLAKE2b-128 keyed MAC, "
            "person 'roost-session', over 's1.' + payload). Clients treat it as opaque.",
            "secret_hex": bytes(range(100, 132)).hex(),
            "token": session,
            "claims": {"sub": "u-ann", "sid": "s-1", "exp": NOW + 600},
        },
    }


GUEST_AUDIENCE = "play.example.com"


def guest_vectors() -> dict[str, Any]:
    """Guest proofs (PROTOCOL.md §9.3): each case checked with audience GUEST_AUDIENCE at ``now``."""
    device = SigningKey(bytes(range(128, 160)))
    other = SigningKey(bytes(range(160, 192)))
    jti = "AAAAAAAAAAAAAAAAAAAAAA"

    def proof(**changes: Any) -> str:
        options: dict[str, Any] = {"aud": GUEST_AUDIENCE, "now": NOW, "ttl": 60, "jti": jti, "name": "Pip"}
        options.update(changes)
        return sign_guest_proof(device, **options)

    def raw(header: dict[str, Any], body: dict[str, Any], key: SigningKey) -> str:
        h = _b64(json.dumps(header, separators=(",", ":")).encode())
        b = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{h}.{b}.{_b64(key.sign(f'{h}.{b}'.encode()).signature)}"

    public = _b64(bytes(device.verify_key))
    body = {"key": public, "aud": GUEST_AUDIENCE, "iat": NOW, "exp": NOW + 60, "jti": jti}
    good = proof()
    head, payload, signature = good.split(".")
    cases: list[dict[str, Any]] = [
        {"name": "valid", "proof": good, "now": NOW + 5, "expect": "ok"},
        {"name": "valid without a name, at exp + leeway", "proof": proof(name=None), "now": NOW + 60 + LEEWAY, "expect": "ok"},
        {"name": "expired one second after exp + leeway", "proof": good, "now": NOW + 60 + LEEWAY + 1, "expect": "expired"},
        {"name": "iat in the future beyond leeway", "proof": good, "now": NOW - LEEWAY - 1, "expect": "not_yet_valid"},
        {"name": "made for another server", "proof": proof(aud="evil.example.com"), "now": NOW, "expect": "wrong_audience"},
        {"name": "signed by a key other than the one it names", "proof": raw({"alg": "EdDSA", "typ": "roost-guest"}, body, other),
         "now": NOW, "expect": "bad_signature"},
        {"name": "claims changed after signing", "proof": f"{head}.{_b64(json.dumps({**body, 'aud': 'x'}).encode())}.{signature}",
         "now": NOW, "expect": "bad_signature"},
        {"name": "lifetime over 300 s", "proof": proof(ttl=301), "now": NOW, "expect": "malformed"},
        {"name": "a user token's header (typ JWT)", "proof": raw({"alg": "EdDSA", "typ": "JWT"}, body, device), "now": NOW,
         "expect": "malformed"},
        {"name": "jti shorter than 16 characters", "proof": proof(jti="short"), "now": NOW, "expect": "malformed"},
        {"name": "key of 31 bytes", "proof": raw({"alg": "EdDSA", "typ": "roost-guest"}, {**body, "key": _b64(bytes(31))}, device),
         "now": NOW, "expect": "malformed"},
    ]
    return {
        "description": "Roost guest proofs: compact JWS, header {alg: EdDSA, typ: roost-guest}, claims key (base64url "
        "Ed25519 public key, the signer), aud, iat, exp (exp - iat at most 300), jti (16 to 64 chars, single use: the "
        "server refuses a second use with 'replayed'), name (optional). Check each case with audience 'audience', "
        "leeway 'leeway' and the case's 'now'; 'expect' is 'ok' or the failure kind.",
        "audience": GUEST_AUDIENCE,
        "leeway": LEEWAY,
        "device": {"seed_hex": bytes(device).hex(), "public": public},
        "cases": cases,
    }


def _claims_json(case: dict[str, Any]) -> dict[str, Any]:
    _h, payload, _s = case["token"].split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    header = json.loads(base64.urlsafe_b64decode(_h + "=" * (-len(_h) % 4)))
    return {**body, "kid": header["kid"]}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, content in (("frames.json", frame_vectors()), ("tokens.json", token_vectors()),
                          ("guest.json", guest_vectors())):
        (OUT / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
