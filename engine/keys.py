"""Key files on disk: Ed25519 JSON Web Keys written with safe permissions, and read back with clear errors.

The private key file is a JWK with ``d`` (the seed), created with mode 0600 and never overwritten
unless asked; the public key file sits beside it (``<name>.pub.jwk``) and is what a server's keyring
is built from. Any JOSE library in any backend language can load both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from roost.protocol.tokens import MAX_KID_CHARS, generate_key, load_jwk, private_jwk, public_jwk

__all__ = ["KeyFileError", "public_path_for", "read_private_key", "read_public_key", "write_key_pair"]


class KeyFileError(Exception):
    """A key file is missing, unreadable or not an Ed25519 JWK. The message is one line."""


def public_path_for(private_path: Path) -> Path:
    """Where the public half of ``private_path`` lives: ``x.jwk`` → ``x.pub.jwk``."""
    name = private_path.name
    stem = name[: -len(".jwk")] if name.endswith(".jwk") else name
    return private_path.with_name(stem + ".pub.jwk")


def _write_new(path: Path, text: str, mode: int, *, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists (use --force to replace it)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)  # O_CREAT's mode is masked by umask, and an existing file keeps its own


def write_key_pair(private_path: Path, *, kid: str | None = None, overwrite: bool = False) -> tuple[str, VerifyKey]:
    """Generate a key pair; write the private JWK (0600) and the public JWK (0644).

    Without ``overwrite``, either file existing is refused before anything is written (no half pair).
    Returns ``(kid, verify_key)``.
    """
    if kid is not None and not 0 < len(kid) <= MAX_KID_CHARS:
        raise ValueError(f"kid must be 1 to {MAX_KID_CHARS} characters")
    if not overwrite:
        for path in (private_path, public_path_for(private_path)):
            if os.path.lexists(path):
                raise KeyFileError(f"{path} already exists (use --force to replace it)")
    derived_kid, key = generate_key()
    kid = kid or derived_kid
    _write_new(private_path, json.dumps(private_jwk(key, kid), indent=2) + "\n", 0o600, overwrite=overwrite)
    _write_new(
        public_path_for(private_path),
        json.dumps(public_jwk(key.verify_key, kid), indent=2) + "\n",
        0o644,
        overwrite=overwrite,
    )
    return kid, key.verify_key


def _read_jwk(path: Path) -> tuple[str, VerifyKey, SigningKey | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {path} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise KeyFileError(f"key file {path} is not JSON") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"key file {path} is not a JSON object")
    try:
        return load_jwk(data)
    except ValueError as exc:
        raise KeyFileError(f"key file {path}: {exc}") from None


def read_private_key(path: Path) -> tuple[str, SigningKey]:
    """Read a private JWK. Returns ``(kid, signing_key)``."""
    kid, _verify_key, signing_key = _read_jwk(path)
    if signing_key is None:
        raise KeyFileError(f"key file {path} holds no private key ('d')")
    return kid, signing_key


def read_public_key(path: Path) -> tuple[str, VerifyKey]:
    """Read a public JWK. Returns ``(kid, verify_key)``.

    A private JWK is refused: a server must never hold the signing key (whoever reads its files could
    then mint any user's token), and accepting one silently hides that it was deployed."""
    kid, verify_key, signing_key = _read_jwk(path)
    if signing_key is not None:
        raise KeyFileError(f"key file {path} holds a private key: a server takes public keys only "
                           f"(give it {public_path_for(path)})")
    return kid, verify_key
