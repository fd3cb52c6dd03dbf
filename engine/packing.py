"""msgpack for the event loop's thread: one reused Packer (the room, its state and its chat log share it).

``msgpack.packb`` builds a ``Packer`` per call (a chat turn packed three or four values); a reused one
is safe because ``autoreset`` makes every ``pack`` return bytes of its own, and a failed one resets
it. The trap: a Packer is not thread-safe. Only code on the loop's thread may call :func:`packb`
(the store's threads have their own)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

__all__ = ["packb", "unpackb"]

_packer = msgpack.Packer(use_bin_type=True)

packb: Callable[[Any], bytes] = _packer.pack
"""The shared Packer's own ``pack``, not a function around it: a chat turn packs seven values, and a
Python frame around each C call was ~0.6 k instructions of it."""


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)
