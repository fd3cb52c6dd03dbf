"""A room's ``seq``, ``chat_n`` and read cursors come back from its stored records although chat
turns and broadcasts write no ``counters`` record and no author's ``read:`` (``state.stored_position``,
``ChatLog.restore``).

The rule rests on three facts: every seq is stored with its event, every message number with its
record, in the same commit; the newest event and message are never deleted; and an author's
cursor, which a send moves to the message, is stored when that message is trimmed. A property test
drives a room's state through random turns at the smallest limits (a replay buffer and a history
of one, where every turn deletes what the one before wrote), commits each turn's writes into a
dict the way the stores do, and restores from it after any turn: the restored room must be the
live one, number for number.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from roost.packing import packb
from roost.state import RoomOptions, RoomState, stored_position
from roost.store import Write


def _commit(records: dict[str, bytes], writes: list[Write]) -> None:
    for write in writes:
        if write.room is None:  # the inbox table's membership index: not the room's records
            continue
        if write.value is None:
            records.pop(write.key, None)
        else:
            records[write.key] = write.value


def _room(history: int, replay: int) -> RoomState:
    state = RoomState(room_id="r1", code="c1", options=RoomOptions(), created=1, history_limit=history,
                      replay_limit=replay)
    return state


def _restored(records: dict[str, bytes], history: int, replay: int) -> RoomState:
    return RoomState.restore(dict(sorted(records.items())), now=0.0, grace=60.0, history_limit=history,
                             replay_limit=replay)


_TURNS = st.lists(st.tuples(st.sampled_from(["chat", "chat", "event", "edit", "delete", "read", "empty", "shared",
                                             "quiet"]), st.sampled_from(["ann", "bob", "cy"]),
                            st.integers(0, 40)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(turns=_TURNS, history=st.integers(1, 3), replay=st.integers(1, 3), restart_at=st.sets(st.integers(0, 40)))
def test_seq_and_chat_n_come_back_without_a_counters_write_per_turn(
        turns: list[tuple[str, str, int]], history: int, replay: int, restart_at: set[int]) -> None:
    records: dict[str, bytes] = {}
    state = _room(history, replay)
    _commit(records, state.take_writes())
    counters_writes = 0
    for i, (turn, user, at) in enumerate(turns):
        if turn == "chat":
            n, ts, record, _dup = state.chat.send(user=user, name=user, cid=f"c{i}", text="hi", meta=None, ts=i)
            state.chat_sent(n, record, state.seq + 1, packb(["chat", state.seq + 1, n]))
        elif turn == "event":
            state.seq += 1
            state.record_event(state.seq, packb(["event", state.seq]))
        elif turn in ("edit", "delete") and state.chat.messages and not state.chat.messages[-1].deleted:
            newest = state.chat.messages[-1]
            if turn == "edit":
                state.chat.edit(user=newest.user, msg_id=newest.id, text=f"edited {i}", ts=i)
            else:
                state.chat.delete(user=newest.user, msg_id=newest.id, is_host=False, ts=i)
            state.touch_chat(newest.n)
            state.seq += 1
            state.record_event(state.seq, packb(["changed", state.seq, newest.n]))
        elif turn == "read" and state.chat.last_n:
            if state.chat.mark_read(user, at) is not None:  # any number: below, at or past the log
                state.touch_read(user)
        elif turn == "empty":
            state.empty_since = None if state.empty_since is not None else float(i)
            state.touch("counters")
        elif turn == "shared":
            state.shared = True
            state.touch("counters")
        writes = state.take_writes()
        counters_writes += sum(1 for w in writes if w.key == "counters")
        _commit(records, writes)
        if i in restart_at:
            back = _restored(records, history, replay)
            _same(back, state)
            assert stored_position(records) == (state.seq, state.chat.last_n)
            state = back  # the restored room goes on, as after a crash
    _same(_restored(records, history, replay), state)
    # The point of the rule: chat turns and broadcasts wrote no counters.
    assert counters_writes <= sum(1 for t in turns if t[0] in ("empty", "shared"))


def _same(back: RoomState, live: RoomState) -> None:
    assert back.seq == live.seq
    assert back.chat.last_n == live.chat.last_n
    assert back.replay.after(0) == live.replay.after(0)
    assert [m.n for m in back.chat.messages] == [m.n for m in live.chat.messages]
    assert back.chat.messages == live.chat.messages
    assert back.chat.read == live.chat.read
    assert back.empty_since == live.empty_since and back.shared == live.shared


def test_a_store_written_before_the_rule_keeps_its_counters() -> None:
    """Counters written with every turn (older stores) are never behind: they are taken as they are."""
    records: dict[str, bytes] = {}
    _commit(records, _room(5, 5).take_writes())
    records["counters"] = packb({"epoch": 1, "seq": 7, "chat_n": 3, "empty_since": None, "shared": True})
    assert stored_position(records) == (7, 3)
    back = _restored(records, 5, 5)
    assert back.seq == 7 and back.chat.last_n == 3 and back.shared is True
