"""The engine's one error type for requests that cannot be served: the same codes the wire carries.

Room actors, the router and room logic raise :class:`RoomError`; the connection turns it into an
``error`` frame and the in-process API raises it to the embedding app unchanged, so both see the same
codes in the same situations.
"""

from __future__ import annotations

from roost.protocol.errors import ErrorCode

__all__ = ["RoomError"]


class RoomError(Exception):
    """A request was refused. ``code`` is the stable :class:`ErrorCode`; ``message`` is for humans."""

    def __init__(self, code: ErrorCode, message: str, *, retry_ms: int | None = None, url: str | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.retry_ms = retry_ms
        self.url = url
        """With ``moved``: the address of the node that serves the room."""
