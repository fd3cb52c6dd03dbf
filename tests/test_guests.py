"""Guest play with device keys (PROTOCOL.md §9.3) and the guest → account upgrade (§15).

The proof checks run on ``MockClock`` over in-memory streams (the engine's wall clock follows it);
the Python client's sign-in and the upgrade keeping rooms and history run on real sockets.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from roost import Config, Engine
from roost.client import ConnectionClosedError, HandshakeError, open_client
from roost.protocol.errors import CloseCode
from roost.protocol.frames import ChatEvent, Hello, PresenceDiff, Welcome
from roost.protocol.tokens import GuestProof, ProofReplayed, SeenProofs, sign_guest_proof
from roost.errors import RoomError
from roost.testing import TestKeys, start_client, test_config
from tests.test_users import call, pubkey
from tests.wire import raw_peer

BASE = time.time()


def wall() -> float:
    return BASE + trio.current_time()


def b64(key: SigningKey) -> str:
    import base64

    return base64.urlsafe_b64encode(bytes(key.verify_key)).rstrip(b"=").decode()


async def guest_hello(engine: Engine, nursery: trio.Nursery, proof: str) -> Welcome | int:
    """Say hello with a guest proof over an in-memory stream (Host: localhost): the welcome, or the close code."""
    peer = await raw_peer(nursery, stream=engine.connect_memory())
    await peer.send(Hello(v=1, guest=proof))
    try:
        frame = await peer.recv()
    except Exception:
        return await peer.closed_code()
    assert isinstance(frame, Welcome), frame
    return frame


class TestOnMockClock:
    @pytest.fixture
    def roost_keys(self) -> TestKeys:
        return TestKeys(clock=wall)

    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, wall_clock=wall, guests=True, guest_burst=2, guest_rate=1.0)

    async def test_a_guest_signs_in_and_the_same_key_is_the_same_user(self, autojump_clock, roost_engine: Engine,
                                                                       nursery) -> None:
        device = SigningKey.generate()
        first = await guest_hello(roost_engine, nursery, sign_guest_proof(device, aud="localhost", now=wall(), name="Pip"))
        assert isinstance(first, Welcome) and first.user.startswith("~g") and len(first.user) == 24
        assert first.name == "Pip" and first.exp == int(wall() + roost_engine.config.guest_ttl)
        again = await guest_hello(roost_engine, nursery, sign_guest_proof(device, aud="localhost", now=wall()))
        assert isinstance(again, Welcome) and (again.user, again.name) == (first.user, "Pip")
        user = await roost_engine.ops.user_get(key=b64(device))
        assert (user.id, user.guest, [k.key for k in user.keys]) == (first.user, True, [b64(device)])

    async def test_a_captured_proof_replayed_is_refused(self, autojump_clock, roost_engine: Engine, nursery) -> None:
        proof = sign_guest_proof(SigningKey.generate(), aud="localhost", now=wall())
        assert isinstance(await guest_hello(roost_engine, nursery, proof), Welcome)
        assert await guest_hello(roost_engine, nursery, proof) == CloseCode.BAD_TOKEN
        assert roost_engine.gateway.auth_failures["guest_replayed"] == 1
        # Still refused near its expiry: the jti is remembered as long as the proof could be used.
        await trio.sleep(60 + roost_engine.config.token_leeway - 1)
        assert await guest_hello(roost_engine, nursery, proof) == CloseCode.BAD_TOKEN
        assert roost_engine.gateway.auth_failures["guest_replayed"] == 2
        await trio.sleep(2)
        assert await guest_hello(roost_engine, nursery, proof) == CloseCode.TOKEN_EXPIRED

    async def test_an_expired_or_foreign_or_forged_proof_is_refused(self, autojump_clock, roost_engine: Engine,
                                                                    nursery) -> None:
        device = SigningKey.generate()
        stale = sign_guest_proof(device, aud="localhost", now=wall() - 120, ttl=60)
        assert await guest_hello(roost_engine, nursery, stale) == CloseCode.TOKEN_EXPIRED
        foreign = sign_guest_proof(device, aud="other.example", now=wall())
        assert await guest_hello(roost_engine, nursery, foreign) == CloseCode.BAD_TOKEN
        head, body, _sig = sign_guest_proof(device, aud="localhost", now=wall()).split(".")
        other = sign_guest_proof(SigningKey.generate(), aud="localhost", now=wall()).split(".")[2]
        assert await guest_hello(roost_engine, nursery, f"{head}.{body}.{other}") == CloseCode.BAD_TOKEN
        failures = roost_engine.gateway.auth_failures
        assert (failures["guest_expired"], failures["guest_wrong_audience"], failures["guest_bad_signature"]) == (1, 1, 1)
        with pytest.raises(RoomError) as info:  # no user was created for any of them
            await roost_engine.ops.user_get(key=b64(device))
        assert info.value.code == "not_found"

    async def test_new_guests_are_rate_limited_per_address_but_known_keys_are_not(
            self, autojump_clock, roost_engine: Engine, nursery) -> None:
        keys = [SigningKey.generate() for _ in range(4)]
        for key in keys[:2]:
            assert isinstance(await guest_hello(roost_engine, nursery, sign_guest_proof(key, aud="localhost", now=wall())), Welcome)
        third = sign_guest_proof(keys[2], aud="localhost", now=wall())
        assert await guest_hello(roost_engine, nursery, third) == CloseCode.TRY_AGAIN_LATER
        assert roost_engine.gateway.auth_failures["guest_rate_limited"] == 1
        known = sign_guest_proof(keys[0], aud="localhost", now=wall())
        assert isinstance(await guest_hello(roost_engine, nursery, known), Welcome)
        await trio.sleep(61)  # guest_rate 1 per minute
        later = sign_guest_proof(keys[3], aud="localhost", now=wall())
        assert isinstance(await guest_hello(roost_engine, nursery, later), Welcome)
        assert roost_engine.gateway.guests.created == 3

    async def test_a_token_and_a_proof_together_are_a_bad_hello(self, autojump_clock, roost_engine: Engine,
                                                                roost_keys: TestKeys, nursery) -> None:
        peer = await raw_peer(nursery, stream=roost_engine.connect_memory())
        proof = sign_guest_proof(SigningKey.generate(), aud="localhost", now=wall())
        await peer.send({"t": "hello", "v": 1, "token": roost_keys.token("ann"), "guest": proof})
        assert await peer.closed_code() == CloseCode.BAD_FRAME


async def test_guests_are_off_by_default(roost_engine: Engine, nursery) -> None:
    with trio.fail_after(10):
        proof = sign_guest_proof(SigningKey.generate(), aud="localhost", now=time.time())
        assert await guest_hello(roost_engine, nursery, proof) == CloseCode.BAD_TOKEN
        assert roost_engine.gateway.auth_failures["guest_disabled"] == 1
        with pytest.raises(HandshakeError) as info:
            async with open_client(roost_engine.url, guest_key=SigningKey.generate(), reconnect=False):
                pass  # pragma: no cover - refused before welcome
        assert info.value.code == CloseCode.BAD_TOKEN


def test_seen_proofs_refuse_a_second_use_and_refuse_rather_than_forget_when_full() -> None:
    seen = SeenProofs(2, leeway=0)

    def proof(jti: str, exp: int) -> GuestProof:
        return GuestProof(key="k", aud="a", iat=0, exp=exp, jti=jti)

    assert seen.claim(proof("a" * 16, 10), now=0)
    with pytest.raises(ProofReplayed):
        seen.claim(proof("a" * 16, 10), now=5)
    assert seen.claim(proof("b" * 16, 20), now=5)
    assert not seen.claim(proof("c" * 16, 20), now=5)  # full of live proofs: refused, nothing forgotten
    assert len(seen) == 2
    assert seen.claim(proof("c" * 16, 30), now=11)  # a's proof expired at 10: its slot is free
    assert seen.claim(proof("a" * 16, 40), now=21)  # and after expiry a jti is forgotten
    assert len(seen) == 2


# -- the upgrade, on real sockets


class TestWithGuests:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, guests=True, reconnect_grace=30.0)

    async def test_guest_to_account_upgrade_keeps_rooms_host_read_cursor_and_history(
            self, nursery, roost_engine: Engine, roost_connect) -> None:
        with trio.fail_after(20):
            device = SigningKey.generate()
            guest = await start_client(nursery, roost_engine.url, guest_key=device, guest_name="Pip")
            guest_id = guest.user
            assert guest_id.startswith("~g") and not guest.welcome.resumed
            room = await guest.create()
            sent = await guest.chat_send(room.room, "hello as a guest")
            bob = await roost_connect("bob")
            await bob.join(room=room.room)
            await bob.chat_send(room.room, "hi Pip")
            await guest.read(room.room, 2)

            # The backend signs the player in: an account, then the device key moves to it.
            status, account = await call(roost_engine, "user_upsert", {"provider": "google", "subject": "pip@example",
                                                                      "id": "acct-pip", "name": "Pip"})
            assert status == 200
            status, moved = await call(roost_engine, "user_move_key", {"key": b64(device), "to": "acct-pip"})
            assert status == 200 and [k["key"] for k in moved["keys"]] == [b64(device)]
            assert moved["merged_from"] == [guest_id]

            # Members see one diff: the guest leaves, the account takes its seat; hosting follows.
            diff = await bob.next_event(PresenceDiff)
            while diff.reason != "merged":
                diff = await bob.next_event(PresenceDiff)
            assert diff.leave == (guest_id,) and [m.user for m in diff.join] == ["acct-pip"]

            # The device was closed with 4006, reconnected by itself, and is the account now.
            with trio.fail_after(10):
                while guest.user != "acct-pip":
                    await trio.sleep(0.05)
            assert not guest.welcome.resumed
            snapshot = await guest.join(room=room.room)
            assert snapshot.host == "acct-pip" and snapshot.read_n == 2 and snapshot.unread == 0
            assert {m.user for m in snapshot.members} == {"acct-pip", "bob"}
            history = await guest.history(room.room)
            assert [(m.user, m.text) for m in history.messages] == [(guest_id, "hello as a guest"), ("bob", "hi Pip")]
            assert history.messages[0].id == sent.id
            await guest.chat_send(room.room, "now with an account")
            event = await bob.next_event(ChatEvent)
            assert event.msg.user == "acct-pip"

            status, old = await call(roost_engine, "user_get", {"id": guest_id})
            assert old["merged_into"] == "acct-pip" and old.get("keys", []) == []
            _, audit = await call(roost_engine, "user_audit", {"id": guest_id})
            assert [e["action"] for e in audit["entries"]] == ["created", "key_linked", "key_moved_out", "merged_into"]
            assert roost_engine.gateway.closes[str(int(CloseCode.USER_MERGED))] == 1


    async def test_a_merge_folds_into_a_seat_the_account_already_has(
            self, nursery, roost_engine: Engine, roost_connect) -> None:
        with trio.fail_after(20):
            device = SigningKey.generate()
            guest = await start_client(nursery, roost_engine.url, guest_key=device, reconnect=False)
            room = await guest.create()
            await guest.chat_send(room.room, "one")
            await guest.read(room.room, 1)
            acct = await roost_connect("acct-2")
            await acct.join(room=room.room)
            await call(roost_engine, "user_upsert", {"provider": "google", "subject": "two", "id": "acct-2"})
            status, _ = await call(roost_engine, "user_move_key", {"key": b64(device), "to": "acct-2"})
            assert status == 200
            closed = await guest.wait_closed()
            assert isinstance(closed, ConnectionClosedError) and closed.code == CloseCode.USER_MERGED
            diff = await acct.next_event(PresenceDiff)
            while diff.reason != "merged":
                diff = await acct.next_event(PresenceDiff)
            assert diff.leave == (guest.welcome.user,) and diff.join == () and [m.user for m in diff.update] == ["acct-2"]
            snapshot = await roost_engine.ops.snapshot(room.room)
            assert (snapshot.host, snapshot.member_count) == ("acct-2", 1)
            rejoined = await acct.join(room=room.room)
            assert rejoined.read_n == 1


    async def test_a_python_client_signs_in_as_a_guest_over_a_socket(self, nursery, roost_engine: Engine) -> None:
        with trio.fail_after(10):
            device = SigningKey.generate()
            first = await start_client(nursery, roost_engine.url, guest_key=device, guest_name="Pip")
            second = await start_client(nursery, roost_engine.url, guest_key=device)
            assert first.user == second.user and first.user.startswith("~g")
            assert first.sid != second.sid
            with pytest.raises(ValueError):
                await start_client(nursery, roost_engine.url, "token", guest_key=device)


async def test_a_merged_guest_and_the_room_come_back_alike_after_a_restart(tmp_path: Path) -> None:
    """Cursors taken back from the messages (ChatLog.restore) across a guest merged into an account,
    with a history and a replay buffer smaller than the chat (trims write the authors' cursors): the
    room's seq and count, and each member's read position and unread count, are the live ones.
    (Written by the hostile review of the change.)"""
    from roost.store.lmdb import LmdbStore
    from roost.testing import connect_client, start_engine

    keys = TestKeys()
    config = test_config(keys, guests=True, reconnect_grace=30.0, history_limit=3, replay_events=2)
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            device = SigningKey.generate()
            guest = await start_client(nursery, engine.url, guest_key=device, guest_name="Pip", reconnect=False)
            room = await guest.create()
            await guest.chat_send(room.room, "g1")
            bob = await connect_client(nursery, engine.url, keys.token("bob"), reconnect=False)
            await bob.join(room=room.room)
            await bob.chat_send(room.room, "b1")
            await guest.chat_send(room.room, "g2")
            await bob.read(room.room, 1)
            status, _ = await call(engine, "user_upsert", {"provider": "google", "subject": "pip", "id": "acct"})
            assert status == 200
            status, _ = await call(engine, "user_move_key", {"key": b64(device), "to": "acct"})
            assert status == 200
            acct = await connect_client(nursery, engine.url, keys.token("acct"), reconnect=False)
            with trio.fail_after(10):
                while True:
                    snap = await engine.ops.snapshot(room.room)
                    if "acct" in {m.user for m in snap.members}:
                        break
                    await trio.sleep(0.05)
            await bob.chat_send(room.room, "b2")
            live_acct = await acct.join(room=room.room)
            live_bob = await bob.join(room=room.room)
            live = await engine.ops.snapshot(room.room)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            engine = await start_engine(nursery, config, store=LmdbStore(tmp_path / "db"))
            back = await engine.ops.snapshot(room.room)
            assert (back.seq, back.chat_n) == (live.seq, live.chat_n)
            acct = await connect_client(nursery, engine.url, keys.token("acct"), reconnect=False)
            bob = await connect_client(nursery, engine.url, keys.token("bob"), reconnect=False)
            a = await acct.join(room=room.room)
            b = await bob.join(room=room.room)
            assert (a.read_n, a.unread) == (live_acct.read_n, live_acct.unread)
            assert (b.read_n, b.unread) == (live_bob.read_n, live_bob.unread)
            nursery.cancel_scope.cancel()
