"""The two-player game story, end to end on MockClock: create, share a code, chat, play, one goes silent."""

from __future__ import annotations

import pytest
import trio

from roost.testing import TestKeys
from roost.protocol.codec import load_record
from roost.protocol.frames import (
    ChatEvent,
    ChatSend,
    InactivePolicy,
    Join,
    Ok,
    Phase,
    PresenceDiff,
    PresenceStatus,
    RoomSnapshot,
    StateEvent,
)
from tests.wire import raw_peer


async def test_two_player_game(autojump_clock, roost_connect, roost_engine, roost_keys: TestKeys, nursery) -> None:
    # Ann hosts a private two-seat room whose game resets when a player goes inactive mid-game.
    ann = await roost_connect("ann", memory=True)
    room = await ann.create(max=2, inactive=InactivePolicy.RESET)
    assert room.inactive is InactivePolicy.RESET and room.host == "ann"

    # She shares the code; Bob (a phone with a 2 s heartbeat) joins with it.
    bob = await raw_peer(nursery, stream=roost_engine.connect_memory())
    await bob.hello(roost_keys.token("bob"), hb=2000)
    await bob.send(Join(id=1, code=room.code))
    joined = load_record(RoomSnapshot, (await bob.recv_until(Ok)).result)
    assert joined.member_count == 2 and joined.host == "ann"

    # Both chat.
    await ann.chat_send(room.room, "ready?")
    assert (await bob.recv_until(ChatEvent)).msg.text == "ready?"
    await bob.send(ChatSend(id=2, room=room.room, cid="b1", text="go"))
    assert [(await ann.next_event(ChatEvent)).msg.text for _ in range(2)] == ["ready?", "go"]

    # The host starts the game.
    version = await ann.set_state(room.room, room.version, state={"board": [None] * 9, "turn": "ann"}, phase="playing")
    started = await bob.recv_until(StateEvent)
    assert (started.phase, started.version) == (Phase.PLAYING, version)
    assert (await ann.next_event(StateEvent)).version == version

    # Bob's phone goes silent mid-game: after 2.5 heartbeats his session expires and the policy resets the game.
    silent_since = trio.current_time()
    reset = await ann.next_event(StateEvent)
    assert (reset.phase, reset.state, reset.reason) == (Phase.LOBBY, None, "member_inactive")
    assert reset.version == version + 1
    assert trio.current_time() - silent_since == pytest.approx(5.0, abs=0.01)
    snapshot = await roost_engine.ops.snapshot(room.room)
    bob_entry = next(m for m in snapshot.members if m.user == "bob")
    assert bob_entry.status is PresenceStatus.OFFLINE  # still seated: dropped is not left

    # Bob comes back within the grace period and takes his seat again.
    back = await raw_peer(nursery, stream=roost_engine.connect_memory())
    await back.hello(roost_keys.token("bob"), hb=300_000)
    await back.send(Join(id=3, room=room.room))
    again = load_record(RoomSnapshot, (await back.recv_until(Ok)).result)
    assert again.phase is Phase.LOBBY and again.member_count == 2
    diff = await ann.next_event(PresenceDiff)
    while not any(m.user == "bob" and m.status is PresenceStatus.ONLINE for m in diff.update):
        diff = await ann.next_event(PresenceDiff)
