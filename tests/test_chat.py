"""Chat over real sockets: ordering, idempotent sends, edit/delete rules, history, read receipts."""

from __future__ import annotations

import pytest
import trio

from roost.client import RequestError
from roost.protocol.frames import ChatDeleted, ChatEdited, ChatEvent, ReadReceipt


async def two_in_a_room(roost_connect):
    ann, bob = await roost_connect("ann"), await roost_connect("bob")
    snap = await ann.create()
    await bob.join(room=snap.room)
    return ann, bob, snap.room


async def test_messages_reach_every_member_in_order_with_numbers_and_server_time(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, room = await two_in_a_room(roost_connect)
        acks = [await ann.chat_send(room, f"msg {i}") for i in range(5)]
        assert [a.n for a in acks] == [1, 2, 3, 4, 5] and [a.id for a in acks] == [f"m{i}" for i in range(1, 6)]
        got = [await bob.next_event(ChatEvent) for _ in range(5)]
        assert [e.msg.text for e in got] == [f"msg {i}" for i in range(5)]
        assert [e.seq for e in got] == list(range(got[0].seq, got[0].seq + 5))
        assert all(e.msg.user == "ann" and e.msg.name == "Ann" and e.msg.ts > 0 for e in got)


async def test_a_retried_send_is_acknowledged_once_and_posted_once(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, room = await two_in_a_room(roost_connect)
        first = await ann.chat_send(room, "only once", cid="op-42")
        again = await ann.chat_send(room, "only once", cid="op-42")
        assert (first.n, first.dup) == (1, False) and (again.n, again.id, again.dup) == (1, first.id, True)
        await ann.chat_send(room, "next")
        texts = [(await bob.next_event(ChatEvent)).msg.text for _ in range(2)]
        assert texts == ["only once", "next"]


async def test_edit_and_delete_rules(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, room = await two_in_a_room(roost_connect)  # ann hosts
        mine = await bob.chat_send(room, "helo")
        hers = await ann.chat_send(room, "hi")
        await bob.chat_edit(room, mine.id, "hello")
        edited = await ann.next_event(ChatEdited)
        assert (edited.msg.text, edited.msg.n) == ("hello", mine.n) and edited.msg.edited
        with pytest.raises(RequestError) as info:
            await bob.chat_edit(room, hers.id, "hacked")
        assert info.value.code == "forbidden"
        with pytest.raises(RequestError) as info:
            await bob.chat_delete(room, hers.id)
        assert info.value.code == "forbidden"
        await ann.chat_delete(room, mine.id)  # the host may delete any message
        deleted = await bob.next_event(ChatDeleted)
        assert (deleted.msg, deleted.by) == (mine.id, "ann")
        with pytest.raises(RequestError) as info:
            await bob.chat_edit(room, "m99", "?")
        assert info.value.code == "not_found"


async def test_history_pages_backwards(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, room = await two_in_a_room(roost_connect)
        for i in range(7):
            await ann.chat_send(room, str(i))
        await ann.chat_delete(room, "m2")
        page = await bob.history(room, limit=3)
        assert [m.text for m in page.messages] == ["4", "5", "6"] and page.next == 5
        page = await bob.history(room, before=page.next, limit=3)
        assert [(m.n, m.deleted) for m in page.messages] == [(2, True), (3, False), (4, False)]
        page = await bob.history(room, before=page.next, limit=3)
        assert [m.n for m in page.messages] == [1] and page.next is None


async def test_read_cursors_receipts_and_unread_on_rejoin(roost_connect) -> None:
    with trio.fail_after(10):
        ann, bob, room = await two_in_a_room(roost_connect)
        for i in range(4):
            await ann.chat_send(room, str(i))
        await bob.read(room, 3)
        receipt = await ann.next_event(ReadReceipt)
        assert (receipt.user, receipt.n) == ("bob", 3)
        await bob.read(room, 1)  # never backwards: no receipt, no error
        snap = await bob.join(room=room)
        assert (snap.chat_n, snap.read_n, snap.unread) == (4, 3, 1)


async def test_chat_needs_membership(roost_connect) -> None:
    with trio.fail_after(10):
        ann, _bob, room = await two_in_a_room(roost_connect)
        eve = await roost_connect("eve")
        for call in (eve.chat_send(room, "hi"), eve.history(room), eve.read(room, 1), eve.members(room)):
            with pytest.raises(RequestError) as info:
                await call
            assert info.value.code == "not_member"


async def test_a_chat_turn_packs_its_frames_and_record_straight_and_byte_for_byte(
    roost_keys, nursery, monkeypatch
) -> None:
    """The chat path packs its event, its ``ok`` and its stored record straight to msgpack (no frame
    objects, no schema walk, the record packed once and reused inside the event): every byte the
    same as the codec's encoding, cid, meta and dup included."""
    import msgpack

    from roost import Engine, MemoryStore
    from roost.protocol.codec import SERVER_LIMITS, dump_record, encode
    from roost.protocol.frames import ChatAck, ChatMessage, Ok
    from roost.protocol.schema import WireRecord
    from roost.state import chat_key
    from roost.testing import test_config
    from tests.wire import raw_peer

    store = MemoryStore()
    engine = Engine(test_config(roost_keys), store=store)
    await nursery.start(engine.serve)
    ann = await raw_peer(nursery, stream=engine.connect_memory())
    await ann.hello(roost_keys.token("ann"), hb=300_000)
    await ann.send({"t": "create", "id": 1})
    room = (await ann.recv_until(Ok)).result["room"]
    walked: list[str] = []
    for name in ("plain_into", "dump_into"):
        original = getattr(WireRecord, name)
        monkeypatch.setattr(WireRecord, name, lambda self, *a, _o=original, _n=name: (walked.append(_n), _o(self, *a))[1])
    sends = [{"t": "chat_send", "id": 2, "room": room, "cid": "c-1", "text": "é" * 4096, "meta": {"k": [1, "v"]}},
             {"t": "chat_send", "id": 3, "room": room, "cid": "c-1", "text": "é" * 4096},  # a retry: dup
             {"t": "chat_send", "id": 4, "room": room, "cid": "c-2", "text": "x"}]
    received = []
    with trio.fail_after(10):
        for send in sends:
            await ann.send(send)
            raws = []
            while not raws or msgpack.unpackb(raws[-1])["t"] != "ok":
                raws.append(await ann.ws.get_message())
            received.append((send, raws))
    monkeypatch.undo()
    assert walked == []
    for send, raws in received:
        frames = [msgpack.unpackb(raw) for raw in raws]
        for raw, frame in zip(raws, frames, strict=True):
            if frame["t"] == "chat":
                msg = ChatMessage(**frame["msg"])
                expected = encode(ChatEvent(room=room, epoch=frame["epoch"], seq=frame["seq"], ts=frame["ts"], msg=msg),
                                  SERVER_LIMITS)
                assert raw == expected
                assert store._rooms[room][chat_key(msg.n)] == msgpack.packb(dump_record(msg), use_bin_type=True)
            else:
                ack = ChatAck(**frame["result"])
                assert raw == encode(Ok(id=send["id"], result=dump_record(ack)), SERVER_LIMITS)
        assert [f["t"] for f in frames] == (["ok"] if send["id"] == 3 else ["chat", "ok"])


@pytest.mark.parametrize("fields", [
    {},
    {"cid": "op-1", "meta": {"k": 1}},
    {"cid": "op-1", "edited": 5, "deleted": True, "meta": {"a": [1]}},
    {"edited": 7},
])
def test_the_rooms_packed_message_record_is_the_schemas(fields) -> None:
    """The chat log packs records itself (``pack_message``) and decodes them back (``_message``):
    the bytes are the schema's ``dump_record`` packed, and the decoded message is the one it was."""
    import msgpack

    from roost.chat import _message, pack_message
    from roost.protocol.codec import dump_record
    from roost.protocol.frames import ChatMessage

    message = ChatMessage(id="m3", n=3, user="ann", name="Ann", text="hi", ts=1, **fields)
    m = message
    record = pack_message(m.id, m.n, m.user, m.name, m.text, m.ts, m.cid, m.edited, m.deleted, m.meta)
    assert record == msgpack.packb(dump_record(message), use_bin_type=True)
    assert list(msgpack.unpackb(record).items()) == list(message.plain_fields().items())
    decoded = _message(record)
    assert type(decoded) is ChatMessage and decoded == message and repr(decoded) == repr(message)


def test_the_store_keys_are_the_fixed_width_hex_keys() -> None:
    """``chat_key`` and ``event_key`` (and ``take_writes``, which writes them inline) build the key
    from ``to_bytes(8).hex()``, not the f-string: the same string over the whole range of numbers."""
    from roost.state import chat_key, event_key

    for n in (0, 1, 15, 16, 255, 4096, 2**32, 2**53 - 1, 2**64 - 1):
        assert chat_key(n) == f"chat:{n:016x}"
        assert event_key(n) == f"ev:{n:016x}"
