"""The pure chat log: numbering, idempotency, edit/delete rules, paging, read cursors."""

from __future__ import annotations

import pytest

from roost.chat import ChatLog
from roost.errors import RoomError
from roost.protocol.codec import record_size
from roost.protocol.errors import ErrorCode


def send(log: ChatLog, user: str, text: str, cid: str | None = None) -> int:
    n, _ts, _record, _dup = log.send(user=user, name=user, cid=cid or f"{user}-{text}", text=text, meta=None, ts=1)
    return n


def test_messages_are_numbered_without_gaps_and_get_ids() -> None:
    log = ChatLog(limit=100)
    assert [send(log, "ann", t) for t in "abc"] == [1, 2, 3]
    assert [m.id for m in log.messages] == ["m1", "m2", "m3"]
    assert log.by_id("m2") is not None and log.by_id("m2").text == "b"
    assert log.by_id("x2") is None and log.by_id("m") is None and log.by_id("m9") is None


def test_a_retried_client_op_id_returns_the_original() -> None:
    log = ChatLog(limit=100)
    *first, dup = log.send(user="ann", name="Ann", cid="op-1", text="hi", meta=None, ts=1)
    *again, dup2 = log.send(user="ann", name="Ann", cid="op-1", text="hi (retry)", meta=None, ts=2)
    assert (dup, dup2) == (False, True)
    assert again == first and first[:2] == [1, 1] and log.last_n == 1  # the original's n, ts and record
    assert log.get(1).text == "hi"
    other, _ts, _record, dup3 = log.send(user="bob", name="Bob", cid="op-1", text="mine", meta=None, ts=3)
    assert not dup3 and other == 2  # client op ids are per user


def test_edit_own_messages_only() -> None:
    log = ChatLog(limit=100)
    send(log, "ann", "helo")
    edited = log.edit(user="ann", msg_id="m1", text="hello", ts=5)
    assert (edited.text, edited.edited) == ("hello", 5)
    with pytest.raises(RoomError) as info:
        log.edit(user="bob", msg_id="m1", text="hacked", ts=6)
    assert info.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(RoomError) as info:
        log.edit(user="ann", msg_id="m7", text="?", ts=6)
    assert info.value.code is ErrorCode.NOT_FOUND


def test_delete_own_or_as_host_leaves_a_tombstone() -> None:
    log = ChatLog(limit=100)
    send(log, "ann", "one")
    send(log, "bob", "two")
    with pytest.raises(RoomError) as info:
        log.delete(user="bob", msg_id="m1", is_host=False, ts=3)
    assert info.value.code is ErrorCode.FORBIDDEN
    gone = log.delete(user="bob", msg_id="m1", is_host=True, ts=3)
    assert gone.deleted and gone.text == "" and gone.n == 1
    assert log.delete(user="bob", msg_id="m2", is_host=False, ts=4).deleted
    with pytest.raises(RoomError) as info:
        log.delete(user="bob", msg_id="m2", is_host=True, ts=5)
    assert info.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(RoomError):
        log.edit(user="bob", msg_id="m2", text="back", ts=6)


def test_history_pages_backwards_oldest_first_within_a_page() -> None:
    log = ChatLog(limit=100)
    for i in range(1, 8):
        send(log, "ann", str(i))
    page, before = log.page(None, 3)
    assert [m.n for m in page] == [5, 6, 7] and before == 5
    page, before = log.page(before, 3)
    assert [m.n for m in page] == [2, 3, 4] and before == 2
    page, before = log.page(before, 3)
    assert [m.n for m in page] == [1] and before is None
    assert log.page(1, 3) == ([], None)
    assert ChatLog(limit=5).page(None, 3) == ([], None)
    assert [m.n for m in log.page(100, 2)[0]] == [6, 7]


def test_the_log_keeps_at_most_its_limit() -> None:
    log = ChatLog(limit=3)
    for i in range(5):
        send(log, "ann", str(i), cid=f"c{i}")
    assert [m.n for m in log.messages] == [3, 4, 5]
    assert log.by_id("m1") is None
    n, _ts, _record, dup = log.send(user="ann", name="ann", cid="c0", text="again", meta=None, ts=9)
    assert not dup and n == 6  # the dropped message's op id is forgotten with it
    page, before = log.page(None, 10)
    assert [m.n for m in page] == [4, 5, 6] and before is None


def test_read_cursors_and_unread_counts() -> None:
    log = ChatLog(limit=100)
    send(log, "ann", "a")
    send(log, "bob", "b")
    send(log, "bob", "c")
    assert log.unread("ann") == 2
    assert log.unread("bob") == 0  # writing moves one's cursor to one's own message
    assert log.mark_read("ann", 2) == 2
    assert log.mark_read("ann", 1) is None  # never backwards
    assert log.unread("ann") == 1
    assert log.mark_read("ann", 99) == 3  # capped at the newest
    assert log.unread("ann") == 0
    send(log, "ann", "d")
    log.delete(user="ann", msg_id="m4", is_host=False, ts=5)
    assert log.unread("bob") == 0  # deleted messages are not unread
    send(log, "ann", "e")
    assert log.unread("bob") == 1


def test_restore_rebuilds_the_log() -> None:
    log = ChatLog(limit=100)
    for i in range(3):
        send(log, "ann", str(i))
    log.mark_read("bob", 2)
    copy = ChatLog(limit=100)
    copy.restore([log.record(n) for n in (1, 2, 3)], dict(log.read), log.last_n)
    assert copy.messages == log.messages and [copy.record(n) for n in (1, 2, 3)] == [log.record(n) for n in (1, 2, 3)]
    assert copy.unread("bob") == 1
    assert copy.send(user="ann", name="ann", cid="ann-0", text="0", meta=None, ts=1)[3] is True


def test_pages_are_cut_by_encoded_size_and_an_edit_is_measured_again() -> None:
    log = ChatLog(limit=100)
    for i in range(5):
        log.send(user="ann", name="Ann", cid=f"c{i}", text="a" * 100, meta=None, ts=1)
    size = record_size(log.messages[0])
    page, before = log.page(None, 10, budget=3 * size)
    assert [m.n for m in page] == [3, 4, 5] and before == 3  # the newest that fit; next page from 3
    page, before = log.page(before, 10, budget=3 * size)
    assert [m.n for m in page] == [1, 2] and before is None
    log.edit(user="ann", msg_id="m4", text="b" * 1000, ts=2)  # grows: its old size must not be reused
    page, before = log.page(None, 10, budget=3 * size)
    assert [m.n for m in page] == [5] and before == 5
    log.delete(user="ann", msg_id="m4", is_host=False, ts=3)  # a tombstone is small again
    assert [m.n for m in log.page(None, 10, budget=3 * size)[0]] == [3, 4, 5]
    page, _ = log.page(None, 1, budget=1)
    assert [m.n for m in page] == [5]  # one message always, whatever the budget


def test_the_log_holds_nothing_the_cyclic_collector_walks() -> None:
    """Why the log keeps records in dicts of numbers, strings and bytes (``ChatLog``'s docstring): a
    tracked object per message made every full collection walk every room's history (11-16 ms pauses
    with a few hundred messages in 200 rooms). After one full collection the log holds no tracked
    container but its few own, however many messages it has (with and without ``meta``, edited,
    deleted, restored), more messages do not track them again, and each decodes to the message the
    dataclass makes."""
    import gc

    from roost.protocol.frames import ChatMessage

    log = ChatLog(limit=10)
    for i in range(6):
        log.send(user="ann", name="Ann", cid=f"op-{i}", text=f"hi {i}", meta={"k": [i, "v"]} if i % 2 else None, ts=5)
    log.edit(user="ann", msg_id="m2", text="edited", ts=6)
    log.delete(user="ann", msg_id="m3", is_host=False, ts=7)
    copy = ChatLog(limit=10)
    copy.restore([log.record(n) for n in range(1, 7)], {}, 6)
    gc.collect()
    per_message = ("_records", "_users", "_deleted", "_cid_keys", "_by_cid")
    for each in (log, copy):
        assert len(each) == 6 and not any(gc.is_tracked(getattr(each, name)) for name in per_message)
    log.send(user="bob", name="Bob", cid="op-9", text="more", meta={"k": [1]}, ts=8)
    log.delete(user="bob", msg_id="m7", is_host=False, ts=9)
    assert not any(gc.is_tracked(getattr(log, name)) for name in per_message)
    assert [m.n for m in log.messages] == [1, 2, 3, 4, 5, 6, 7] and log.unread("ann") == 0
    assert log.get(2) == ChatMessage(id="m2", n=2, user="ann", name="Ann", text="edited", ts=5, cid="op-1",
                                     edited=6, meta={"k": [1, "v"]})
    assert log.get(3) == ChatMessage(id="m3", n=3, user="ann", name="Ann", text="", ts=5, cid="op-2", edited=7,
                                     deleted=True)
    assert copy.messages == log.messages[:6]
    assert [(h.n, h.user, h.deleted) for h in log.heads(4, 2)] == [(4, "ann", False), (3, "ann", True), (2, "ann", False)]
    assert [h.n for h in log.heads(99, -5)] == [7, 6, 5, 4, 3, 2, 1] and list(ChatLog(limit=3).heads(5, 1)) == []


def test_restore_refuses_a_gap_and_trims_to_the_limit() -> None:
    log = ChatLog(limit=10)
    for i in range(5):
        send(log, "ann", str(i))
    records = [log.record(n) for n in range(1, 6)]
    with pytest.raises(ValueError, match="chat message 4 follows 2"):
        ChatLog(limit=10).restore(records[:2] + records[3:], {}, 5)
    with pytest.raises(ValueError, match="end at 4, the counters at 5"):
        ChatLog(limit=10).restore(records[:4], {}, 5)
    smaller = ChatLog(limit=2)  # the limit was lowered between runs
    smaller.restore(records, {}, 5)
    assert [m.n for m in smaller.messages] == [4, 5] and smaller.take_trimmed() == [1, 2, 3]
    assert smaller.first_n == 4 and smaller.get(3) is None and smaller.unread("bob") == 2
    empty = ChatLog(limit=2)
    empty.restore([], {}, 7)
    assert empty.first_n is None and empty.messages == [] and empty.page(None, 5) == ([], None)
    assert empty.send(user="ann", name="Ann", cid="x", text="t", meta=None, ts=1)[0] == 8 and empty.first_n == 8


def test_the_replay_buffer_keeps_the_last_events_gap_free_and_untracked() -> None:
    import gc

    from roost.state import Replay

    replay = Replay(3)
    assert len(replay) == 0 and replay.after(0) == []
    for seq in range(1, 6):
        replay.append(seq, b"e%d" % seq)
    assert (replay.first, len(replay)) == (3, 3) and replay.after(0) == [b"e3", b"e4", b"e5"]
    assert replay.after(4) == [b"e5"] and replay.after(5) == [] and replay.after(9) == []
    replay.append(9, b"e9")  # a gap (only damaged data gives one): start anew, never skip silently
    assert (replay.first, replay.after(0)) == (9, [b"e9"])
    gc.collect()
    replay.append(10, b"e10")
    assert not gc.is_tracked(replay._events)
    none = Replay(0)
    none.append(1, b"e1")
    assert len(none) == 0 and none.after(0) == []
