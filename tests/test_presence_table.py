"""The pure presence table: sessions folded per user, status, grace, typing, paging."""

from __future__ import annotations

from roost.presence import Presence
from roost.protocol.frames import PresenceStatus, Status


def table() -> Presence:
    presence = Presence()
    presence.add("ann", "Ann", "s1", 1000)
    presence.add("bob", "Bob", "s2", 1000)
    return presence


def test_sessions_fold_into_one_member() -> None:
    presence = table()
    assert presence.attach("ann", "s3", "Ann", 2000)  # sessions 1 → 2
    view = presence.members["ann"].view()
    assert (view.status, view.sessions, view.last_seen) == (PresenceStatus.ONLINE, 2, 2000)
    assert presence.update("ann", "s1", None, Status.AWAY, 2100) is False  # another session is still online
    assert presence.update("ann", "s3", None, Status.AWAY, 2200)
    assert presence.members["ann"].view().status is PresenceStatus.AWAY


def test_dropping_the_last_session_starts_the_grace_period() -> None:
    presence = table()
    presence.attach("ann", "s3", "Ann", 1000)
    assert presence.drop("ann", "s1", now=10.0, grace=60.0, wall_ms=3000)  # 2 → 1 session
    assert presence.members["ann"].grace_until is None
    assert presence.drop("ann", "s3", now=11.0, grace=60.0, wall_ms=4000)
    entry = presence.members["ann"]
    assert entry.view().status is PresenceStatus.OFFLINE and entry.grace_until == 71.0
    assert not presence.grace_due("ann", 70.9) and presence.grace_due("ann", 71.0)
    assert not presence.drop("ann", "s3", now=12.0, grace=60.0, wall_ms=5000)  # already dropped
    assert not presence.drop("zed", "s9", now=12.0, grace=60.0, wall_ms=5000)
    assert presence.attach("ann", "s3", "Ann", 6000)
    assert presence.members["ann"].grace_until is None and not presence.grace_due("ann", 100.0)


def test_typing_expires_by_itself() -> None:
    presence = table()
    assert presence.set_typing("ann", True, now=0.0, timeout=5.0)
    assert not presence.set_typing("ann", True, now=2.0, timeout=5.0)  # extended, no flip
    assert not presence.typing_due("ann", 6.9)
    assert presence.typing_due("ann", 7.0)
    assert presence.members["ann"].view().typing is False
    assert not presence.typing_due("ann", 8.0) and not presence.typing_due("nobody", 8.0)
    presence.set_typing("bob", True, now=0.0, timeout=5.0)
    assert presence.set_typing("bob", False, now=1.0, timeout=5.0)


def test_custom_data_changes_are_reported_once() -> None:
    presence = table()
    assert presence.update("bob", "s2", {"color": "red"}, None, 1000)
    assert not presence.update("bob", "s2", {"color": "red"}, None, 1000)
    assert presence.members["bob"].view().data == {"color": "red"}


def test_pages_list_online_first_then_by_user() -> None:
    presence = Presence()
    for i, user in enumerate(["dan", "cat", "bob", "ann", "eve"]):
        presence.add(user, user, f"s{i}", 0)
    presence.drop("ann", "s3", now=0.0, grace=60.0, wall_ms=0)
    presence.update("eve", "s4", None, Status.AWAY, 0)
    first, cursor = presence.page(None, 2)
    assert [m.user for m in first] == ["bob", "cat"]
    second, cursor = presence.page(cursor, 2)
    assert [m.user for m in second] == ["dan", "eve"]
    third, cursor = presence.page(cursor, 2)
    assert [m.user for m in third] == ["ann"] and cursor is None


def test_restore_brings_members_back_dropped_in_join_order() -> None:
    presence = table()
    presence.update("bob", "s2", {"x": 1}, None, 5)
    records = [e.to_record() for e in presence.in_join_order()][::-1]
    copy = Presence()
    copy.restore(records, now=100.0, grace=30.0)
    assert [e.user for e in copy.in_join_order()] == ["ann", "bob"]
    bob = copy.members["bob"]
    assert bob.view().status is PresenceStatus.OFFLINE and bob.grace_until == 130.0 and bob.data == {"x": 1}
    assert copy.attach("bob", "s2", "Bob", 7)
    assert copy.add("cat", "Cat", "s9", 8).joined == 3
