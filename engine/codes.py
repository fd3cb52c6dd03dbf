"""Room ids and shareable room codes.

Codes are 8 characters of Crockford's base32 alphabet (no I, L, O, U: nothing to misread when a
player reads a code aloud), 40 bits from a CSPRNG. Any code is compared in normal form: upper case,
with I and L read as 1 and O as 0, so "k7m2qx9p" typed by hand still matches. Client-chosen codes
(``join_or_create``) are normalised the same way and share the namespace ("x-O" is "X-0"); other
characters, hyphens included, are kept as they are.
"""

from __future__ import annotations

import secrets

__all__ = ["ALPHABET", "CODE_LENGTH", "in_scope", "new_code", "new_room_id", "normalize_code"]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_code() -> str:
    """A fresh random code (the caller checks it is unused)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def new_room_id() -> str:
    """A fresh room id: ``r`` and 64 random bits in hex."""
    return "r" + secrets.token_hex(8)


def normalize_code(code: str) -> str:
    """The normal form codes are stored and compared in."""
    return code.upper().translate(_READ_AS)


def in_scope(scope: str, room_id: str, code: str) -> bool:
    """Whether a token's ``room`` claim names this room: its id as is, or its code in any spelling.

    The trap: comparing the claim to the stored (normal form) code as is refuses a token scoped to
    "table-o" from the room its own ``join_or_create("table-o")`` made (code "TAB1E-0"). Ids are not
    normalised (they are case-sensitive).
    """
    return scope == room_id or normalize_code(scope) == code
