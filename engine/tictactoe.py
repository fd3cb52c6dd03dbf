"""Tic-tac-toe as :class:`~roost.logic.RoomLogic`: the demo game ``roost serve --dev`` registers.

The logic is the authority: a client only asks (``send`` kinds ``start``, ``move``, ``rematch``);
every move is validated here inside the room's turn, so two tabs clicking at once cannot both move,
and the state every member sees is the one this logic set (broadcast as ``state`` events).

State: ``{"board": [9 x "", "X" or "O"], "x": user, "o": user, "turn": "X"|"O", "winner": user|None,
"draw": bool, "forfeit": user|None}``. The room's inactive-member policy acts when a player's presence
goes offline mid-game (a closed tab): rooms made by the demo use ``inactive: "end"``, the engine ends
the game, and :meth:`on_inactive` names the other player the winner by forfeit.
"""

from __future__ import annotations

from typing import Any

from roost.protocol.errors import ErrorCode
from roost.protocol.frames import Phase

from .errors import RoomError
from .logic import RoomContext, RoomLogic

__all__ = ["LOGIC_NAME", "TicTacToe"]

LOGIC_NAME = "tictactoe"
_LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


def _winner(board: list[str]) -> str | None:
    for a, b, c in _LINES:
        if board[a] and board[a] == board[b] == board[c]:
            return board[a]
    return None


class TicTacToe(RoomLogic):
    def on_message(self, room: RoomContext, user: str, kind: str, body: Any) -> Any:
        if kind in ("start", "rematch"):
            return self._start(room, user)
        if kind == "move":
            return self._move(room, user, body)
        raise RoomError(ErrorCode.BAD_FIELD, f"unknown move kind {kind!r}: start, move or rematch")

    def _start(self, room: RoomContext, user: str) -> Any:
        if room.phase is Phase.PLAYING:
            raise RoomError(ErrorCode.INVALID_STATE, "a game is already being played")
        online = [m.user for m in room.members() if m.status.value != "offline"]
        if user not in online or len(online) < 2:
            raise RoomError(ErrorCode.INVALID_STATE, "two online players are needed to start")
        other = next(u for u in online if u != user)
        state = {"board": [""] * 9, "x": user, "o": other, "turn": "X", "winner": None, "draw": False,
                 "forfeit": None}
        return {"version": room.set_state(state, phase=Phase.PLAYING, reason="start")}

    def _move(self, room: RoomContext, user: str, body: Any) -> Any:
        if room.phase is not Phase.PLAYING or not isinstance(room.state, dict):
            raise RoomError(ErrorCode.INVALID_STATE, "no game is being played")
        state = dict(room.state)
        mark = "X" if state.get("x") == user else "O" if state.get("o") == user else None
        if mark is None:
            raise RoomError(ErrorCode.FORBIDDEN, "only the two players move")
        if state["turn"] != mark:
            raise RoomError(ErrorCode.INVALID_STATE, "not your turn")
        cell = body.get("cell") if isinstance(body, dict) else None
        if type(cell) is not int or not 0 <= cell <= 8:
            raise RoomError(ErrorCode.BAD_FIELD, "cell must be an integer 0..8")
        board = list(state["board"])
        if board[cell]:
            raise RoomError(ErrorCode.INVALID_STATE, "that cell is taken")
        board[cell] = mark
        state["board"] = board
        won = _winner(board)
        phase = Phase.PLAYING
        if won is not None:
            state["winner"] = state["x"] if won == "X" else state["o"]
            phase = Phase.ENDED
        elif all(board):
            state["draw"] = True
            phase = Phase.ENDED
        else:
            state["turn"] = "O" if mark == "X" else "X"
        return {"version": room.set_state(state, phase=phase, reason="move")}

    def on_inactive(self, room: RoomContext, user: str, policy_applied: bool) -> None:
        state = room.state
        if not policy_applied or not isinstance(state, dict) or user not in (state.get("x"), state.get("o")):
            return
        if room.phase is Phase.ENDED and state.get("winner") is None and not state.get("draw"):
            other = state["o"] if user == state["x"] else state["x"]
            room.set_state({**state, "winner": other, "forfeit": user}, phase=Phase.ENDED, reason="forfeit")
