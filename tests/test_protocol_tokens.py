"""Tokens: Ed25519 user tokens (JWT/EdDSA) and server-minted session tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from nacl.signing import SigningKey

from roost.protocol.errors import CloseCode, ErrorCode
from roost.protocol.tokens import (
    DEFAULT_LEEWAY,
    BadSignature,
    Claims,
    Keyring,
    SessionClaims,
    SessionSigner,
    TokenError,
    TokenExpired,
    TokenMalformed,
    TokenNotYetValid,
    UnknownKey,
    generate_key,
    kid_for,
    load_jwk,
    new_claims,
    private_jwk,
    public_jwk,
    sign,
    sign_guest_proof,
    unverified_kid,
    verify,
    verify_guest_proof,
)

NOW = 1_795_000_000.0
KEY = SigningKey(bytes(range(32)))
KID = kid_for(KEY.verify_key)
KEYRING = Keyring({KID: KEY.verify_key})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> Claims:
    base = new_claims(sub="u-ann", name="Ann", kid=KID, now=NOW, ttl=3600, jti="j-1")
    return Claims(**{**{f: getattr(base, f) for f in Claims.__dataclass_fields__}, **changes})


def forge(header: Any, body: Any, key: SigningKey = KEY) -> str:
    """A token with arbitrary header and body JSON, correctly signed."""
    h = b64(header if isinstance(header, bytes) else json.dumps(header).encode())
    b = b64(body if isinstance(body, bytes) else json.dumps(body).encode())
    return f"{h}.{b}.{b64(key.sign(f'{h}.{b}'.encode()).signature)}"


HEADER = {"alg": "EdDSA", "typ": "JWT", "kid": KID}
BODY = {"sub": "u-ann", "name": "Ann", "iat": int(NOW), "exp": int(NOW) + 3600, "jti": "j-1"}


def test_sign_then_verify_returns_the_claims() -> None:
    token = sign(claims(room="r-1", role="player", nbf=int(NOW)), KEY)
    got = verify(token, KEYRING, NOW)
    assert got == claims(room="r-1", role="player", nbf=int(NOW))
    assert got.kid == KID


def test_the_token_is_a_standard_eddsa_jwt() -> None:
    header_b64, body_b64, sig_b64 = sign(claims(), KEY).split(".")
    assert json.loads(base64.urlsafe_b64decode(header_b64 + "==")) == HEADER
    assert json.loads(base64.urlsafe_b64decode(body_b64 + "==")) == BODY
    signature = base64.urlsafe_b64decode(sig_b64 + "==")
    KEY.verify_key.verify(f"{header_b64}.{body_b64}".encode(), signature)


def test_every_flipped_byte_is_rejected() -> None:
    token = sign(claims(), KEY)
    for index in range(len(token)):
        for bit in (1, 2, 4, 8, 16, 32, 64):
            mutated = token[:index] + chr(ord(token[index]) ^ bit) + token[index + 1 :]
            with pytest.raises(TokenError):
                verify(mutated, KEYRING, NOW)


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        (-DEFAULT_LEEWAY - 1, None),
        (0, None),
        (DEFAULT_LEEWAY, None),
        (DEFAULT_LEEWAY + 0.001, TokenExpired),
        (DEFAULT_LEEWAY + 1, TokenExpired),
    ],
)
def test_expiry_boundary(offset: float, error: type[TokenError] | None) -> None:
    token = sign(claims(), KEY)
    exp = NOW + 3600
    if error is None:
        assert verify(token, KEYRING, exp + offset).sub == "u-ann"
    else:
        with pytest.raises(error) as info:
            verify(token, KEYRING, exp + offset)
        assert info.value.code is ErrorCode.TOKEN_EXPIRED
        assert info.value.close_code is CloseCode.TOKEN_EXPIRED


@pytest.mark.parametrize(
    ("offset", "valid"),
    [(0, True), (-DEFAULT_LEEWAY, True), (-DEFAULT_LEEWAY - 0.001, False), (-100, False)],
)
def test_not_before_boundary(offset: float, valid: bool) -> None:
    """``nbf`` is checked against ``now`` with the leeway; without ``nbf``, ``iat`` is."""
    for token, start in (
        (sign(claims(nbf=int(NOW) + 600), KEY), NOW + 600),
        (sign(claims(iat=int(NOW) + 600, exp=int(NOW) + 4000), KEY), NOW + 600),
    ):
        if valid:
            verify(token, KEYRING, start + offset)
        else:
            with pytest.raises(TokenNotYetValid):
                verify(token, KEYRING, start + offset)


def test_leeway_is_configurable() -> None:
    token = sign(claims(), KEY)
    with pytest.raises(TokenExpired):
        verify(token, KEYRING, NOW + 3601, leeway=0)
    assert verify(token, KEYRING, NOW + 3601, leeway=5).sub == "u-ann"


def test_unknown_kid_is_refused() -> None:
    other = SigningKey(bytes(32))
    token = sign(claims(kid=kid_for(other.verify_key)), other)
    with pytest.raises(UnknownKey) as info:
        verify(token, KEYRING, NOW)
    assert info.value.reason == "unknown_key"
    assert info.value.close_code is CloseCode.BAD_TOKEN
    assert info.value.code is ErrorCode.UNAUTHORIZED


def test_a_known_kid_with_another_keys_signature_is_refused() -> None:
    impostor = SigningKey(bytes(32))
    with pytest.raises(BadSignature):
        verify(sign(claims(), impostor), KEYRING, NOW)


def test_rotation_accepts_old_and_new_keys_while_both_are_configured() -> None:
    new_kid, new_key = generate_key()
    rotating = KEYRING.with_key(new_kid, new_key.verify_key)
    old_token = sign(claims(), KEY)
    new_token = sign(claims(kid=new_kid), new_key)
    assert verify(old_token, rotating, NOW).kid == KID
    assert verify(new_token, rotating, NOW).kid == new_kid
    assert sorted([KID, new_kid]) == rotating.kids()
    retired = rotating.without(KID)
    assert len(retired) == 1
    assert KID not in retired
    assert new_kid in retired
    with pytest.raises(UnknownKey):
        verify(old_token, retired, NOW)
    assert verify(new_token, retired, NOW).sub == "u-ann"


@pytest.mark.parametrize(
    "token",
    [
        None,
        42,
        "",
        "a.b",
        "a.b.c.d",
        "é.b.c",
        "x" * 4097,
        "!!!.e30.AAAA",
        b64(b"{}") + "=.e30.AAAA",
    ],
)
def test_malformed_shapes(token: Any) -> None:
    with pytest.raises(TokenMalformed) as info:
        verify(token, KEYRING, NOW)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "kid": KID},
        {"alg": "HS256", "kid": KID},
        {"kid": KID},
        {"alg": "EdDSA", "kid": KID, "crit": ["exp"]},
        {"alg": "EdDSA", "kid": KID, "typ": "JWS"},
        {"alg": "EdDSA"},
        {"alg": "EdDSA", "kid": ""},
        {"alg": "EdDSA", "kid": 5},
        {"alg": "EdDSA", "kid": "k" * 65},
        [1, 2],
        b"not json",
        b'{"alg":"EdDSA","alg":"EdDSA","kid":"x"}',
        b"\xff\xfe",
    ],
)
def test_malformed_headers(header: Any) -> None:
    with pytest.raises(TokenMalformed):
        verify(forge(header, BODY), KEYRING, NOW)


@pytest.mark.parametrize(
    "body",
    [
        {k: v for k, v in BODY.items() if k != "sub"},
        {k: v for k, v in BODY.items() if k != "exp"},
        {k: v for k, v in BODY.items() if k != "jti"},
        {**BODY, "sub": ""},
        {**BODY, "sub": 7},
        {**BODY, "exp": "tomorrow"},
        {**BODY, "exp": 1.5e9},
        {**BODY, "exp": True},
        {**BODY, "exp": -1},
        {**BODY, "name": "n" * 65},
        {**BODY, "room": 3},
        "just a string",
        b'{"sub":"a","exp":NaN}',
        b"{",
    ],
)
def test_malformed_claims_in_a_validly_signed_token(body: Any) -> None:
    with pytest.raises(TokenMalformed):
        verify(forge(HEADER, body), KEYRING, NOW)


def test_signature_of_the_wrong_length_is_malformed() -> None:
    h, b, _ = sign(claims(), KEY).split(".")
    with pytest.raises(TokenMalformed):
        verify(f"{h}.{b}.{b64(b'short')}", KEYRING, NOW)


def test_header_without_typ_is_accepted() -> None:
    assert verify(forge({"alg": "EdDSA", "kid": KID}, BODY), KEYRING, NOW).sub == "u-ann"


def test_kid_is_stable_and_short() -> None:
    assert kid_for(KEY.verify_key) == KID
    assert len(KID) == 12


# -- JWK key files -------------------------------------------------------------------------------------


def test_jwk_round_trip() -> None:
    kid, verify_key, signing_key = load_jwk(private_jwk(KEY, "k1"))
    assert kid == "k1"
    assert verify_key == KEY.verify_key
    assert signing_key == KEY
    kid, verify_key, signing_key = load_jwk(public_jwk(KEY.verify_key, "k1"))
    assert signing_key is None
    assert verify_key == KEY.verify_key


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "RSA"}, "not an Ed25519"),
        ({"kty": "OKP", "crv": "X25519"}, "not an Ed25519"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AA"}, "kid"),
        ({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": 5}, "kid"),
        ({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "AAAA"}, "bad key material"),
        ({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "!!"}, "bad key material"),
        ({**public_jwk(KEY.verify_key, "k"), "d": "AAAA"}, "bad key material"),
        ({**public_jwk(KEY.verify_key, "k"), "d": b64(bytes(32))}, "does not match"),
    ],
)
def test_bad_jwks_are_refused(jwk: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_jwk(jwk)


# -- session tokens ------------------------------------------------------------------------------------

SIGNER = SessionSigner(b"s" * 32)
SESSION = SessionClaims(sub="u-ann", sid="s-1", exp=int(NOW) + 600)


def test_session_token_round_trip() -> None:
    token = SIGNER.mint(SESSION)
    assert token.startswith("s1.")
    assert SIGNER.check(token, NOW) == SESSION
    assert SIGNER.check(token, NOW + 600) == SESSION


def test_session_token_expiry() -> None:
    with pytest.raises(TokenExpired):
        SIGNER.check(SIGNER.mint(SESSION), NOW + 600.001)


def test_session_token_from_another_secret_is_refused() -> None:
    with pytest.raises(BadSignature):
        SessionSigner(b"t" * 32).check(SIGNER.mint(SESSION), NOW)


def test_every_flipped_byte_of_a_session_token_is_rejected() -> None:
    token = SIGNER.mint(SESSION)
    for index in range(len(token)):
        mutated = token[:index] + chr(ord(token[index]) ^ 1) + token[index + 1 :]
        with pytest.raises(TokenError):
            SIGNER.check(mutated, NOW)


@pytest.mark.parametrize("token", ["s2.e30.AAAA", "s1.e30", 7, "s1.e30.!!"])
def test_malformed_session_tokens(token: Any) -> None:
    with pytest.raises(TokenMalformed):
        SIGNER.check(token, NOW)


def test_session_secret_length_is_checked() -> None:
    with pytest.raises(ValueError, match="16 to 64"):
        SessionSigner(b"short")
    with pytest.raises(ValueError, match="16 to 64"):
        SessionSigner(b"x" * 65)


@pytest.mark.parametrize(
    ("token", "kid"),
    [
        (sign(claims(), KEY), KID),
        (forge({"alg": "EdDSA", "kid": "someone-elses"}, BODY), "someone-elses"),  # unverified: for logs only
        (forge({"alg": "EdDSA", "kid": 5}, BODY), None),
        (forge({"alg": "EdDSA", "kid": ""}, BODY), None),
        (forge({"alg": "EdDSA", "kid": "k" * 65}, BODY), None),
        (forge({"alg": "EdDSA"}, BODY), None),
        (forge(b"not json", BODY), None),
        ("no.dots", None),
        ("!!.b.c", None),
        (None, None),
    ],
)
def test_unverified_kid_reads_the_header_or_gives_none(token: Any, kid: str | None) -> None:
    assert unverified_kid(token) == kid


def test_a_guest_proof_with_a_short_signature_or_a_crit_header_is_malformed() -> None:
    device = SigningKey.generate()
    head, body, signature = sign_guest_proof(device, aud="a", now=1000).split(".")
    short = base64.urlsafe_b64encode(bytes(63)).rstrip(b"=").decode()
    with pytest.raises(TokenMalformed, match="64 bytes"):
        verify_guest_proof(f"{head}.{body}.{short}", audience="a", now=1000)
    crit = base64.urlsafe_b64encode(json.dumps({"alg": "EdDSA", "typ": "roost-guest", "crit": ["x"]}).encode())
    with pytest.raises(TokenMalformed, match="header"):
        verify_guest_proof(f"{crit.rstrip(b'=').decode()}.{body}.{signature}", audience="a", now=1000)
    assert verify_guest_proof(f"{head}.{body}.{signature}", audience="a", now=1000).aud == "a"
