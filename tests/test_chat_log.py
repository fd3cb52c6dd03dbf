"""The pure chat log: numbering, idempotency, edit/delete rules, paging, read cursors."""

from __future__ import annotations

import pytest

from roost.chat import ChatLog
from roost.errors import RoomError
from roost.protocol.codec import record_size
from roost.protocol.errors import ErrorCode


def send(log: ChatLog, user: str, text: str, cid: str | None = None) -> int:
    message, _dup = log.send(user=user, name=user, cid=cid or f"{user}-{text}", text=text, meta=None, ts=1)
    return message.n


def test_messages_are_numbered_without_gaps_and_get_ids() -> None:
    log = ChatLog(limit=100)
    assert [send(log, "ann", t) for t in "abc"] == [1, 2, 3]
    assert [m.id for m in log.messages] == ["m1", "m2", "m3"]
    assert log.by_id("m2") is not None and log.by_id("m2").text == "b"
    assert log.by_id("x2") is None and log.by_id("m") is None and log.by_id("m9") is None


def test_a_retried_client_op_id_returns_the_original() -> None:
    log = ChatLog(limit=100)
    first, dup = log.send(user="ann", name="Ann", cid="op-1", text="hi", meta=None, ts=1)
    again, dup2 = log.send(user="ann", name="Ann", cid="op-1", text="hi (retry)", meta=None, ts=2)
    assert (dup, dup2) == (False, True)
    assert again == first and log.last_n == 1
    other, dup3 = log.send(user="bob", name="Bob", cid="op-1", text="mine", meta=None, ts=3)
    assert not dup3 and other.n == 2  # client op ids are per user


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
    message, dup = log.send(user="ann", name="ann", cid="c0", text="again", meta=None, ts=9)
    assert not dup and message.n == 6  # the dropped message's op id is forgotten with it
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
    copy.restore(list(log.messages), dict(log.read), log.last_n)
    assert list(copy.messages) == list(log.messages)
    assert copy.unread("bob") == 1
    assert copy.send(user="ann", name="ann", cid="ann-0", text="0", meta=None, ts=1)[1] is True


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


def test_the_fast_message_builder_makes_the_same_message_as_the_dataclass() -> None:
    """``new_message`` sets the slots directly (a chat turn's cheapest way to a ChatMessage): the
    message must be the one ``ChatMessage(...)`` makes, equal, hashed alike, with its defaults."""
    from roost.chat import new_message
    from roost.protocol.codec import dump_record
    from roost.protocol.frames import ChatMessage

    for meta in (None, {"k": [1, "v"]}):
        built = ChatMessage(id="m7", n=7, user="ann", name="Ann", text="hi", ts=5, cid="op-1", meta=meta)
        fast = new_message("m7", 7, "ann", "Ann", "hi", 5, "op-1", meta)
        assert type(fast) is ChatMessage and fast == built and repr(fast) == repr(built)
        assert fast.edited is None and fast.deleted is False
        assert dump_record(fast) == dump_record(built)
        if meta is None:
            assert hash(fast) == hash(built)
    log = ChatLog(limit=10)
    sent, _dup = log.send(user="ann", name="Ann", cid="op-1", text="hi", meta=None, ts=5)
    assert sent == ChatMessage(id="m1", n=1, user="ann", name="Ann", text="hi", ts=5, cid="op-1")
