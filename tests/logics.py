"""Room logics several test files share."""

from __future__ import annotations

from typing import Any

from roost import RoomContext, RoomLogic


class Fragile(RoomLogic):
    """Room logic with a bug: the move "boom" raises (the supervisor restarts the room)."""

    def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
        if kind == "boom":
            raise ZeroDivisionError("bug in game logic")
        return None
