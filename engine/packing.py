"""msgpack for the event loop's thread: one reused Packer (the room, its state and its chat log share it).

``msgpack.packb`` builds a ``Packer`` per call (a chat turn packed three or four values); a reused one
is safe because ``autoreset`` makes every ``pack`` return bytes of its own, and a failed one resets
it. The trap: a Packer is not thread-safe. Only code on the loop's thread may call :func:`packb`
(the store's threads have their own)."""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["packb", "unpackb"]

_packer = msgpack.Packer(use_bin_type=True)


def packb(value: Any) -> bytes:
    return _packer.pack(value)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)
