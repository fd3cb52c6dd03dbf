"""Resume: a reconnecting client gets exactly the events it missed, or a full resync when they are gone."""

from __future__ import annotations

import pytest
import trio

from roost import Config
from roost.testing import TestKeys, test_config
from roost.protocol.errors import CloseCode
from roost.protocol.frames import ChatEvent, ChatSend, Resume, ResumeResult, Sync, Ok
from roost.protocol.codec import load_record
from roost.protocol import encode
from tests.wire import raw_peer


async def test_a_dropped_client_reconnects_and_gets_exactly_what_it_missed(roost_connect, roost_engine) -> None:
    with trio.fail_after(15):
        ann, bob = await roost_connect("ann"), await roost_connect("bob", max_backoff=0.05, backoff_base=0.01)
        snap = await ann.create()
        await bob.join(room=snap.room)
        await ann.chat_send(snap.room, "seen")
        assert (await bob.next_event(ChatEvent)).msg.text == "seen"
        roost_engine.gateway.by_sid[bob.sid].close(CloseCode.SERVICE_RESTART, "test drop")
        for i in range(5):
            await ann.chat_send(snap.room, f"missed {i}")
        texts = [(await bob.next_event(ChatEvent)).msg.text for _ in range(5)]
        assert texts == [f"missed {i}" for i in range(5)]  # in order, none twice, none lost
        await ann.chat_send(snap.room, "live again")
        assert (await bob.next_event(ChatEvent)).msg.text == "live again"


async def test_resume_replays_from_the_given_seq(roost_engine, roost_keys: TestKeys, roost_connect, nursery) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        snap = await ann.create()
        peer = await raw_peer(nursery, roost_engine.url)
        welcome = await peer.hello(roost_keys.token("bob"))
        await peer.send({"t": "join", "id": 1, "room": snap.room})
        joined = await peer.recv_until(Ok)
        seq = joined.result["seq"]
        for i in range(3):
            await ann.chat_send(snap.room, str(i))
        await peer.ws.aclose()
        again = await raw_peer(nursery, roost_engine.url)
        assert (await again.hello(roost_keys.token("bob"), session=welcome.session)).resumed
        await again.send(Resume(id=2, room=snap.room, epoch=snap.epoch, seq=seq))
        ok = await again.recv()
        assert isinstance(ok, Ok) and load_record(ResumeResult, ok.result).replayed >= 3
        replayed = [await again.recv() for _ in range(load_record(ResumeResult, ok.result).replayed)]
        assert [e.seq for e in replayed] == list(range(seq + 1, seq + 1 + len(replayed)))
        assert [e.msg.text for e in replayed if isinstance(e, ChatEvent)] == ["0", "1", "2"]


class TestTooOld:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, replay_events=3)

    async def test_events_no_longer_held_mean_a_resync(self, roost_engine, roost_keys, roost_connect, nursery) -> None:
        with trio.fail_after(10):
            ann = await roost_connect("ann")
            snap = await ann.create()
            peer = await raw_peer(nursery, roost_engine.url)
            await peer.hello(roost_keys.token("bob"))
            await peer.send({"t": "join", "id": 1, "room": snap.room})
            seq = (await peer.recv_until(Ok)).result["seq"]
            for i in range(10):
                await ann.chat_send(snap.room, str(i))
            await peer.send(Resume(id=2, room=snap.room, epoch=snap.epoch, seq=seq))
            ok = await peer.recv_until(Ok)
            assert load_record(ResumeResult, ok.result).resync
            sync = await peer.recv_until(Sync)
            assert sync.snapshot.chat_n == 10 and sync.seq == sync.snapshot.seq
            await peer.send(Resume(id=3, room=snap.room, epoch=snap.epoch + 7, seq=0))
            assert load_record(ResumeResult, (await peer.recv_until(Ok)).result).resync


async def test_resume_for_a_room_one_left_is_not_member(roost_engine, roost_keys, roost_connect, nursery) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        snap = await ann.create()
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.hello(roost_keys.token("bob"))
        await peer.send(Resume(id=1, room=snap.room, epoch=1, seq=0))
        reply = await peer.recv()
        assert reply.code == "not_member"
        await peer.send(ChatSend(id=2, room=snap.room, cid="c", text="x"))
        assert (await peer.recv()).code == "not_member"


async def test_a_resume_whose_replay_exceeds_the_outbox_is_a_resync_not_a_slow_consumer_close(
    roost_engine, roost_keys: TestKeys, roost_connect
) -> None:
    """The replay of a resume goes out as one push. 2.4 MB of missed events against a 1 MiB outbox:
    the first event anyone sends next found the outbox over its bound and closed the member 4000
    (resumable), and the resume it then makes asks for the same replay again. A gap the outbox
    cannot carry is answered as a gap the room no longer holds: ``resync`` and one bounded ``sync``."""
    from roost.protocol import Sender, decode
    from roost.protocol.frames import MessageEvent
    from tests.wire import SlowMember, client_frame

    with trio.fail_after(30):
        ann = await roost_connect("ann")
        snap = await ann.create()
        zed = await SlowMember.join(roost_engine.address, roost_keys.token("zed"), snap.room)
        seq = snap.seq + 1  # zed's own join (its diff came before its Ok, which join() read)
        for i in range(40):  # zed keeps up: it reads every blob before ann sends the next
            await ann.send(snap.room, "blob", i.to_bytes(4, "big") * 15_000)
            while not isinstance(decode((await zed.next_frame(chunk=65536, pause=0))[1], Sender.SERVER),
                                 MessageEvent):
                pass
        # Now zed asks for all 40 again and reads nothing until ann's next chat is acknowledged.
        await zed.stream.send_all(client_frame(encode(Resume(id=2, room=snap.room, epoch=snap.epoch, seq=seq))))
        (connection,) = roost_engine.gateway.by_user["zed"]
        while connection.requests < 2:  # join, resume: the resume is in the room's inbox before ann's chat
            await trio.sleep(0.001)
        await ann.chat_send(snap.room, "next")
        frames = []
        while True:
            frame = await zed.next_frame(chunk=65536, pause=0)
            assert frame is not None and frame[0] == 0x2, f"closed after {len(frames)} frames: {frame}"
            frames.append(decode(frame[1], Sender.SERVER))
            if isinstance(frames[-1], ChatEvent):
                break
        ok = next(f for f in frames if isinstance(f, Ok) and f.id == 2)
        assert load_record(ResumeResult, ok.result).resync
        assert any(isinstance(f, Sync) for f in frames)
        await zed.stream.aclose()
