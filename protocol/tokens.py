"""Signed user tokens (Ed25519) and server-minted session tokens (keyed BLAKE2b).

**User tokens** are JSON Web Tokens in compact form, signed with EdDSA over Ed25519 (RFC 8037), so
any backend language can mint them with a stock JOSE library, or in a few lines by hand::

    base64url(header) "." base64url(claims) "." base64url(signature)

- ``header`` is a JSON object ``{"alg": "EdDSA", "typ": "JWT", "kid": "<key id>"}``;
- ``claims`` is a JSON object with ``sub``, ``name``, ``exp``, ``iat``, ``jti`` and optionally
  ``nbf``, ``room`` (the only room the token may enter: an id or a code) and ``role``;
- ``signature`` is the 64-byte Ed25519 signature of the ASCII bytes ``header_b64 "." claims_b64``;
- base64url is RFC 4648 §5 without padding, and must be canonical (unused bits zero).

The engine holds only public keys, in a :class:`Keyring` by ``kid``: several at once for rotation.
It can verify but never mint user tokens. Verification takes the current time as a parameter, so it
is pure and testable: :func:`verify` checks the key, then the signature, then the claims, then the
time, and raises a distinct :class:`TokenError` subclass for each failure.

**Guest proofs** (PROTOCOL.md §9.3) let a client with no backend sign in with its own Ed25519 key:
the same compact form, header ``{"alg": "EdDSA", "typ": "roost-guest"}``, claims ``key`` (the public
key, base64url), ``aud``, ``iat``, ``exp``, ``jti`` and optionally ``name``, signed by the key the claims
name. :func:`verify_guest_proof` checks shape, signature, audience, lifetime and time;
:class:`SeenProofs` is the single-use ``jti`` memory the server keeps (pure: time is a parameter).

**Session tokens** identify one session of a connected user so a reconnect can take it over. The
server alone mints and checks them, so a keyed MAC (1–3 µs) is used instead of a signature (~73 µs).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import heapq
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .errors import CloseCode, ErrorCode, RemoteProtocolError

__all__ = [
    "DEFAULT_LEEWAY",
    "MAX_KID_CHARS",
    "MAX_TOKEN_CHARS",
    "GUEST_PREFIX",
    "MAX_GUEST_PROOF_TTL",
    "BadSignature",
    "Claims",
    "GuestProof",
    "ProofReplayed",
    "SeenProofs",
    "WrongAudience",
    "Keyring",
    "SessionClaims",
    "SessionSigner",
    "TokenError",
    "TokenExpired",
    "TokenMalformed",
    "TokenNotYetValid",
    "UnknownKey",
    "generate_key",
    "kid_for",
    "load_jwk",
    "new_claims",
    "private_jwk",
    "public_jwk",
    "sign",
    "sign_guest_proof",
    "unverified_kid",
    "verify",
    "verify_guest_proof",
]

MAX_TOKEN_CHARS = 4096
"""Longest token accepted (the ``hello`` frame's limit too)."""
MAX_KID_CHARS = 64
"""Longest ``kid`` a token header may carry; a key with a longer one could sign no acceptable token."""
DEFAULT_LEEWAY = 30.0
"""Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""

_HEADER_ALG = "EdDSA"


class TokenError(RemoteProtocolError):
    """A token was refused. ``reason`` is a stable word for logs (never the token itself)."""

    reason = "token"
    error_code = ErrorCode.UNAUTHORIZED
    close = CloseCode.BAD_TOKEN

    def __init__(self, message: str) -> None:
        super().__init__(self.error_code, message, close_code=self.close)


class TokenMalformed(TokenError):
    """Not a well-formed token: wrong shape, bad base64url or JSON, missing or ill-typed claims."""

    reason = "malformed"


class UnknownKey(TokenError):
    """The token's ``kid`` names no key in the keyring."""

    reason = "unknown_key"


class BadSignature(TokenError):
    """The signature (or session MAC) does not match the content."""

    reason = "bad_signature"


class TokenExpired(TokenError):
    """``exp`` is in the past (beyond the leeway)."""

    reason = "expired"
    error_code = ErrorCode.TOKEN_EXPIRED
    close = CloseCode.TOKEN_EXPIRED


class TokenNotYetValid(TokenError):
    """``nbf`` (or, without it, ``iat``) is in the future (beyond the leeway)."""

    reason = "not_yet_valid"
    error_code = ErrorCode.TOKEN_EXPIRED
    close = CloseCode.TOKEN_EXPIRED


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """The verified content of a user token. Times are Unix seconds."""

    sub: str
    name: str
    exp: int
    iat: int
    jti: str
    kid: str
    nbf: int | None = None
    room: str | None = None
    role: str | None = None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str, error: type[TokenError] = TokenMalformed) -> bytes:
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not base64url") from None
    if _b64encode(data) != text:  # padding given, or unused low bits set: not canonical
        raise error(f"{what} is not canonical base64url")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise TokenMalformed(f"{what} is not valid JSON") from None
    if type(value) is not dict:
        raise TokenMalformed(f"{what} is not a JSON object")
    return value


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _claim(obj: Mapping[str, Any], key: str, kind: type, *, required: bool = True, max_len: int = 128) -> Any:
    value: Any = obj.get(key)
    if value is None:
        if required:
            raise TokenMalformed(f"claim {key!r} is missing")
        return None
    if type(value) is not kind:
        raise TokenMalformed(f"claim {key!r} has the wrong type")
    checked: Any = value
    if kind is str and len(checked) > max_len:
        raise TokenMalformed(f"claim {key!r} is too long")
    if kind is int and not 0 <= checked <= 2**53 - 1:
        raise TokenMalformed(f"claim {key!r} is out of range")
    return checked


def _split(token: object, parts: int) -> list[str]:
    if type(token) is not str or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise TokenMalformed("token must be an ASCII string of at most 4096 characters")
    pieces = token.split(".")
    if len(pieces) != parts:
        raise TokenMalformed(f"token must have {parts} dot-separated parts")
    return pieces


class Keyring:
    """Public keys by ``kid``. Hold the old and the new key during a rotation."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, VerifyKey] | Iterable[tuple[str, VerifyKey]] = ()) -> None:
        self._keys: dict[str, VerifyKey] = dict(keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, kid: str) -> VerifyKey | None:
        """The key for ``kid``, or ``None``."""
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        """Key ids held, sorted."""
        return sorted(self._keys)

    def with_key(self, kid: str, key: VerifyKey) -> Keyring:
        """A new keyring with ``key`` added (or replaced) under ``kid``."""
        return Keyring({**self._keys, kid: key})

    def without(self, kid: str) -> Keyring:
        """A new keyring with ``kid`` removed."""
        return Keyring({k: v for k, v in self._keys.items() if k != kid})


def kid_for(key: VerifyKey) -> str:
    """A short stable key id: base64url of BLAKE2b with ``digest_size=9`` over the raw public key.

    12 characters. Not the first 9 bytes of BLAKE2b-512: the digest size is a BLAKE2 parameter, so
    the two differ in every byte (PROTOCOL.md §9.1 says which one).
    """
    return _b64encode(hashlib.blake2b(bytes(key), digest_size=9).digest())


def generate_key() -> tuple[str, SigningKey]:
    """A new Ed25519 signing key and its derived ``kid``."""
    key = SigningKey.generate()
    return kid_for(key.verify_key), key


def public_jwk(key: VerifyKey, kid: str) -> dict[str, str]:
    """The public key as a JSON Web Key (RFC 8037 OKP), loadable by any JOSE library."""
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": _b64encode(bytes(key))}


def private_jwk(key: SigningKey, kid: str) -> dict[str, str]:
    """The private key as a JSON Web Key (``d`` is the 32-byte seed). Keep it secret."""
    return {**public_jwk(key.verify_key, kid), "d": _b64encode(bytes(key))}


def load_jwk(jwk: Mapping[str, Any]) -> tuple[str, VerifyKey, SigningKey | None]:
    """Read a JWK written by :func:`public_jwk` or :func:`private_jwk`.

    Returns ``(kid, verify_key, signing_key_or_None)``.

    Raises:
        ValueError: not an Ed25519 OKP key, or the private and public halves do not match.
    """
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("not an Ed25519 JWK (kty OKP, crv Ed25519)")
    kid = jwk.get("kid")
    x = jwk.get("x")
    if type(kid) is not str or not kid or type(x) is not str:
        raise ValueError("JWK needs string 'kid' and 'x'")
    if len(kid) > MAX_KID_CHARS:
        raise ValueError(f"JWK 'kid' must be 1 to {MAX_KID_CHARS} characters (a token header carries it)")
    try:
        public = _b64decode(x, "x", TokenMalformed)
        verify_key = VerifyKey(public)
        signing_key = None
        d = jwk.get("d")
        if d is not None:
            signing_key = SigningKey(_b64decode(str(d), "d", TokenMalformed))
    except (TokenMalformed, ValueError, TypeError) as exc:
        raise ValueError(f"bad key material: {exc}") from None
    if signing_key is not None and bytes(signing_key.verify_key) != public:
        raise ValueError("private key 'd' does not match public key 'x'")
    return kid, verify_key, signing_key


def new_claims(
    *,
    sub: str,
    name: str,
    kid: str,
    now: float,
    ttl: float,
    room: str | None = None,
    role: str | None = None,
    jti: str | None = None,
) -> Claims:
    """Claims for a token valid from ``now`` for ``ttl`` seconds, with a random ``jti``."""
    return Claims(
        sub=sub,
        name=name,
        iat=int(now),
        exp=int(now + ttl),
        jti=jti or secrets.token_urlsafe(12),
        kid=kid,
        room=room,
        role=role,
    )


def sign(claims: Claims, key: SigningKey) -> str:
    """Mint a token (for backends written in Python, the CLI and tests; the engine never signs)."""
    header = {"alg": _HEADER_ALG, "typ": "JWT", "kid": claims.kid}
    body: dict[str, Any] = {
        "sub": claims.sub,
        "name": claims.name,
        "iat": claims.iat,
        "exp": claims.exp,
        "jti": claims.jti,
    }
    for optional in ("nbf", "room", "role"):
        value = getattr(claims, optional)
        if value is not None:
            body[optional] = value
    signing_input = _b64encode(_json_bytes(header)) + "." + _b64encode(_json_bytes(body))
    signature = key.sign(signing_input.encode("ascii")).signature
    return signing_input + "." + _b64encode(signature)


def unverified_kid(token: object) -> str | None:
    """The ``kid`` a user token's header names, NOT verified, or None if there is no well-formed one.

    For the log line of a refused token only (which key was it meant for: a rotation gone wrong?),
    never for a decision: anyone can write any ``kid``. Never log the token itself.
    """
    try:
        header = _json_object(_b64decode(_split(token, 3)[0], "header"), "header")
    except TokenError:
        return None
    kid = header.get("kid")
    return kid if type(kid) is str and 0 < len(kid) <= MAX_KID_CHARS else None


def verify(token: object, keyring: Keyring, now: float, *, leeway: float = DEFAULT_LEEWAY) -> Claims:
    """Check a user token and return its claims.

    Args:
        token: the token text as received.
        keyring: the public keys accepted, by ``kid``.
        now: the current wall-clock time in Unix seconds (injected, so tests control it).
        leeway: seconds of clock skew tolerated.

    Raises:
        TokenMalformed, UnknownKey, BadSignature, TokenExpired, TokenNotYetValid.
    """
    header_b64, body_b64, signature_b64 = _split(token, 3)
    header = _json_object(_b64decode(header_b64, "header"), "header")
    if header.get("alg") != _HEADER_ALG:
        raise TokenMalformed("header 'alg' must be EdDSA")
    if "crit" in header:
        raise TokenMalformed("header 'crit' extensions are not supported")
    typ = header.get("typ")
    if typ is not None and typ != "JWT":
        raise TokenMalformed("header 'typ' must be JWT")
    kid = header.get("kid")
    if type(kid) is not str or not kid or len(kid) > MAX_KID_CHARS:
        raise TokenMalformed(f"header 'kid' must be a string of 1 to {MAX_KID_CHARS} characters")
    key = keyring.get(kid)
    if key is None:
        raise UnknownKey(f"no key with kid {kid!r}")
    signature = _b64decode(signature_b64, "signature")
    if len(signature) != 64:
        raise TokenMalformed("signature must be 64 bytes")
    try:
        key.verify((header_b64 + "." + body_b64).encode("ascii"), signature)
    except BadSignatureError:
        raise BadSignature("signature does not match") from None
    body = _json_object(_b64decode(body_b64, "claims"), "claims")
    claims = Claims(
        sub=_claim(body, "sub", str),
        name=_claim(body, "name", str, max_len=64),
        exp=_claim(body, "exp", int),
        iat=_claim(body, "iat", int),
        jti=_claim(body, "jti", str),
        kid=kid,
        nbf=_claim(body, "nbf", int, required=False),
        room=_claim(body, "room", str, required=False, max_len=64),
        role=_claim(body, "role", str, required=False, max_len=64),
    )
    if not claims.sub:
        raise TokenMalformed("claim 'sub' must not be empty")
    if now > claims.exp + leeway:
        raise TokenExpired("token has expired")
    not_before = claims.nbf if claims.nbf is not None else claims.iat
    if not_before > now + leeway:
        raise TokenNotYetValid("token is not valid yet")
    return claims


# -- guest proofs --------------------------------------------------------------------------------

GUEST_PREFIX = "~"
"""First character of every user id Roost makes (guests: ``~g`` + 22 base64url characters). The
server refuses user tokens whose ``sub`` starts with it, so no backend id can ever name a guest."""
MAX_GUEST_PROOF_TTL = 300
"""Longest lifetime (``exp - iat``, seconds) of a guest proof: the server remembers each ``jti`` until
its proof expires, so the lifetime bounds that memory."""
_GUEST_TYP = "roost-guest"


class WrongAudience(TokenError):
    """A guest proof made for another server (its ``aud`` is not this server's audience)."""

    reason = "wrong_audience"


class ProofReplayed(TokenError):
    """A guest proof whose ``jti`` was used before (a captured proof presented again)."""

    reason = "replayed"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GuestProof:
    """The verified content of a guest proof. ``key`` is the signer's public key (base64url)."""

    key: str
    aud: str
    iat: int
    exp: int
    jti: str
    name: str | None = None


def sign_guest_proof(key: SigningKey, *, aud: str, now: float, ttl: int = 60, jti: str | None = None,
                     name: str | None = None) -> str:
    """A guest proof for server audience ``aud``, valid ``ttl`` seconds from ``now``, with a random ``jti``."""
    header = {"alg": _HEADER_ALG, "typ": _GUEST_TYP}
    body: dict[str, Any] = {"key": _b64encode(bytes(key.verify_key)), "aud": aud, "iat": int(now),
                            "exp": int(now) + ttl, "jti": jti or secrets.token_urlsafe(16)}
    if name is not None:
        body["name"] = name
    signing_input = _b64encode(_json_bytes(header)) + "." + _b64encode(_json_bytes(body))
    return signing_input + "." + _b64encode(key.sign(signing_input.encode("ascii")).signature)


def verify_guest_proof(proof: object, *, audience: str, now: float, leeway: float = DEFAULT_LEEWAY) -> GuestProof:
    """Check a guest proof: well formed, signed by the key it names, for ``audience``, of a lifetime
    of at most :data:`MAX_GUEST_PROOF_TTL`, and valid at ``now``. Single use is the caller's
    (:class:`SeenProofs`): it needs memory.

    A user token is never a guest proof nor the reverse: the header ``typ`` differs and a user token
    needs a ``kid`` while a proof carries its key in the claims.

    Raises:
        TokenMalformed, BadSignature, WrongAudience, TokenExpired, TokenNotYetValid.
    """
    header_b64, body_b64, signature_b64 = _split(proof, 3)
    header = _json_object(_b64decode(header_b64, "header"), "header")
    if header.get("alg") != _HEADER_ALG or header.get("typ") != _GUEST_TYP or "crit" in header:
        raise TokenMalformed("header must be {alg: EdDSA, typ: roost-guest}")
    body = _json_object(_b64decode(body_b64, "claims"), "claims")
    public = _b64decode(_claim(body, "key", str), "key")
    if len(public) != 32:
        raise TokenMalformed("claim 'key' must be a 32-byte Ed25519 public key")
    signature = _b64decode(signature_b64, "signature")
    if len(signature) != 64:
        raise TokenMalformed("signature must be 64 bytes")
    try:
        VerifyKey(public).verify((header_b64 + "." + body_b64).encode("ascii"), signature)
    except BadSignatureError:
        raise BadSignature("signature does not match") from None
    claims = GuestProof(
        key=body["key"], aud=_claim(body, "aud", str, max_len=256), iat=_claim(body, "iat", int),
        exp=_claim(body, "exp", int), jti=_claim(body, "jti", str, max_len=64),
        name=_claim(body, "name", str, required=False, max_len=64),
    )
    if len(claims.jti) < 16:
        raise TokenMalformed("claim 'jti' must be 16 to 64 characters")
    if not 0 < claims.exp - claims.iat <= MAX_GUEST_PROOF_TTL:
        raise TokenMalformed(f"a guest proof lives at most {MAX_GUEST_PROOF_TTL} s (exp - iat)")
    if claims.aud != audience:
        raise WrongAudience("the proof is for another server")
    if now > claims.exp + leeway:
        raise TokenExpired("proof has expired")
    if claims.iat > now + leeway:
        raise TokenNotYetValid("proof is not valid yet")
    return claims


class SeenProofs:
    """The ``jti`` of every guest proof accepted and not yet expired: a second use is refused.

    Bounded by count: when full it refuses new proofs (:meth:`claim` returns False: the server
    answers "try again later") instead of forgetting live ones, because forgetting a ``jti`` before
    its proof expires is what would let a captured proof be replayed. Entries leave once their
    proof is past ``exp + leeway``, popped from a heap by expiry: pruning costs the entries it
    drops, not a walk over every live one per sign-in.
    """

    __slots__ = ("_expiry", "_heap", "_leeway", "_max")

    def __init__(self, max_entries: int, *, leeway: float = DEFAULT_LEEWAY) -> None:
        self._max = max_entries
        self._leeway = leeway
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def claim(self, proof: GuestProof, now: float) -> bool:
        """Record ``proof`` as used. False when the memory is full of live proofs.

        Raises:
            ProofReplayed: its ``jti`` was claimed before and has not expired.
        """
        self._prune(now)
        if proof.jti in self._expiry:
            raise ProofReplayed("this proof was used before")
        if len(self._expiry) >= self._max:
            return False
        until = proof.exp + self._leeway
        self._expiry[proof.jti] = until
        heapq.heappush(self._heap, (until, proof.jti))
        return True

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            del self._expiry[heapq.heappop(heap)[1]]


# -- session tokens ------------------------------------------------------------------------------

_SESSION_PREFIX = "s1"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionClaims:
    """A session the server handed out: user ``sub``, session id ``sid``, expiry ``exp`` (Unix s)."""

    sub: str
    sid: str
    exp: int


class SessionSigner:
    """Mints and checks session tokens ``s1.<base64url(JSON)>.<base64url(MAC)>``.

    The MAC is keyed BLAKE2b-128 over ``"s1." + payload``. Only the server holds ``secret``, so the
    token format is private to it (clients treat the token as opaque text).
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16 or len(secret) > 64:
            raise ValueError("session secret must be 16 to 64 bytes")
        self._secret = secret

    def _mac(self, signing_input: str) -> bytes:
        return hashlib.blake2b(
            signing_input.encode("ascii"), key=self._secret, digest_size=16, person=b"roost-session"
        ).digest()

    def mint(self, claims: SessionClaims) -> str:
        """A session token carrying ``claims``."""
        payload = _b64encode(_json_bytes({"sub": claims.sub, "sid": claims.sid, "exp": claims.exp}))
        signing_input = _SESSION_PREFIX + "." + payload
        return signing_input + "." + _b64encode(self._mac(signing_input))

    def check(self, token: object, now: float) -> SessionClaims:
        """Return the claims of a session token this server minted and that has not expired.

        Raises:
            TokenMalformed, BadSignature, TokenExpired.
        """
        prefix, payload_b64, mac_b64 = _split(token, 3)
        if prefix != _SESSION_PREFIX:
            raise TokenMalformed("not a session token")
        mac = _b64decode(mac_b64, "session MAC")
        if not hmac.compare_digest(mac, self._mac(prefix + "." + payload_b64)):
            raise BadSignature("session MAC does not match")
        body = _json_object(_b64decode(payload_b64, "session"), "session")
        claims = SessionClaims(sub=_claim(body, "sub", str), sid=_claim(body, "sid", str), exp=_claim(body, "exp", int))
        if now > claims.exp:
            raise TokenExpired("session has expired")
        return claims
