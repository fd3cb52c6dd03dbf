"""The gateway's one reader task (engine/reader.py): many sockets, one inner epoll, one deadline heap.

Connections here are Unix socketpairs handed to the reader (``Reader.add``), so MockClock can run the
whole engine (memory store, no threads, no bytes in flight between the two ends of a socketpair): the
deadlines are checked to the exact mock second, and the property test is deterministic.
"""

from __future__ import annotations

import collections
import random
import socket
import struct
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost import Engine
from roost.gateway import Gateway
from roost.outbox import SocketTransport
from roost.protocol import PROTOCOL_VERSION, Sender, decode, encode
from roost.protocol.errors import CloseCode
from roost.protocol.frames import (
    AdminRequest, ChatSend, ErrorReply, Hello, JoinOrCreate, Ok, Ping, Pong, Refresh, Welcome,
)
from roost.testing import SERVICE_KEY, TestKeys, test_config
from tests.wire import ServerFrames, client_frame, raw_peer

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
T0 = 1_900_000_000
"""Wall time at mock time 0 (config.wall_clock and the tokens follow the mock clock from there)."""


def mock_config(keys: TestKeys, **overrides: Any):  # noqa: ANN201
    return test_config(keys, wall_clock=lambda: T0 + trio.current_time(), **overrides)


class Peer:
    """The client end of a socketpair whose server end the engine's reader drives."""

    def __init__(self, engine: Engine, name: str) -> None:
        ours, theirs = socket.socketpair()
        reader = engine.gateway.reader
        assert reader is not None, "the gateway runs a reader on this system"
        reader.add(SocketTransport(theirs), name)
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        self.frames = ServerFrames()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def frame(self) -> tuple[int, bytes] | None:
        """The next server frame; None at end of stream."""
        while not self.frames:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.frames.feed(data)
        return self.frames.popleft()

    async def reply(self) -> Any:
        frame = await self.frame()
        assert frame is not None and frame[0] == 0x2, frame
        return decode(frame[1], Sender.SERVER)

    async def close_code(self) -> int | None:
        """Read to the server's Close (its code), or to end of stream without one (None)."""
        while (frame := await self.frame()) is not None:
            if frame[0] == 0x8:
                return struct.unpack("!H", frame[1][:2])[0]
        return None

    async def eof(self) -> None:
        """Read (and drop) until the server's end of stream, then close our end."""
        while await self.stream.receive_some(65536):
            pass
        await self.stream.aclose()


def hello(token: str, hb: int) -> bytes:
    return client_frame(encode(Hello(v=PROTOCOL_VERSION, token=token, hb=hb)))


# -- the deadline heap ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2000])
async def test_every_deadline_of_thousands_of_connections_fires_at_its_time(autojump_clock, count: int) -> None:
    """Auth (no upgrade, no hello), heartbeat (various hb, re-armed by activity), token expiry
    (re-armed by a refresh) and close (our Close unanswered) deadlines of many connections, each
    checked to the mock second, from one heap; and no task per idle connection."""
    keys = TestKeys(clock=lambda: T0 + trio.current_time())
    config = mock_config(keys, auth_timeout=5.0, close_timeout=2.0, heartbeat_min_ms=1000, max_pending_handshakes=5000)
    rng = random.Random(9)
    async with trio.open_nursery() as nursery:
        engine = Engine(config)
        await nursery.start(engine.serve)
        outcomes: dict[int, tuple[Any, ...]] = {}
        expected: dict[int, tuple[Any, ...]] = {}
        kinds = ["silent", "no_hello", "heartbeat", "active", "token", "refresh", "answers"]
        ready = trio.Semaphore(0)

        async def run(i: int, kind: str) -> None:
            peer = Peer(engine, f"p{i}")
            start = trio.current_time()
            hb = rng.randrange(1, 40) * 1000
            if kind == "silent":
                expected[i] = ("eof", start + 5.0)
                ready.release()
                await peer.eof()
                outcomes[i] = ("eof", trio.current_time())
                return
            if kind == "no_hello":
                await peer.send(UPGRADE)
                expected[i] = (CloseCode.AUTH_TIMEOUT, start + 5.0, start + 7.0)
                ready.release()
            else:
                ttl = rng.randrange(2, 60) if kind in ("token", "refresh") else 3600
                await peer.send(UPGRADE + hello(keys.token(f"u{i}", ttl=ttl, now=T0 + start), hb))
                welcome = await peer.reply()
                assert isinstance(welcome, Welcome)
                ready.release()
                last = start
                if kind == "active":  # pings now and then move the heartbeat deadline later
                    for _ in range(rng.randrange(1, 4)):
                        await trio.sleep(hb / 1000 * rng.uniform(0.2, 2.0))
                        await peer.send(client_frame(encode(Ping())))
                        assert type(await peer.reply()).__name__ == "Pong"
                        last = trio.current_time()
                token_at = int(T0 + start + ttl) + config.token_leeway - T0  # its exp (whole seconds), mock clock
                if kind == "refresh":  # a fresh token, sent before the old one ends, moves that deadline
                    await trio.sleep(min(ttl + config.token_leeway, hb / 1000 * 2.5) * rng.uniform(0.1, 0.9))
                    now = trio.current_time()
                    ttl2 = rng.randrange(2, 90)
                    await peer.send(client_frame(encode(Refresh(id=7, token=keys.token(f"u{i}", ttl=ttl2, now=T0 + now)))))
                    assert isinstance(await peer.reply(), Ok)
                    last = now
                    token_at = int(T0 + now + ttl2) + config.token_leeway - T0
                heartbeat_at = last + hb / 1000 * 2.5
                code = CloseCode.HEARTBEAT_TIMEOUT
                if kind in ("token", "refresh") and token_at <= heartbeat_at:
                    code = CloseCode.TOKEN_EXPIRED
                at = min(heartbeat_at, token_at) if kind in ("token", "refresh") else heartbeat_at
                expected[i] = (code, at, at if kind == "answers" else at + 2.0)
            code = await peer.close_code()
            closed_at = trio.current_time()
            if kind == "answers":
                await peer.send(client_frame(struct.pack("!H", code or 1000), opcode=0x8))
            await peer.eof()
            outcomes[i] = (code, closed_at, trio.current_time())

        for i in range(count):
            nursery.start_soon(run, i, kinds[i % len(kinds)])
        for _ in range(count):
            await ready.acquire()
        await trio.testing.wait_all_tasks_blocked()
        # Every connection is idle: no task of its own; the gateway nursery holds the reader alone.
        gateway_tasks = engine.gateway._nursery.child_tasks  # type: ignore[union-attr]
        assert len(engine.gateway.connections) == count
        assert [task.name.rsplit(".", 1)[-1] for task in gateway_tasks] == ["run"]
        with trio.fail_after(400):
            while len(outcomes) < count:
                await trio.sleep(1)
        engine.request_shutdown()
    for i in range(count):
        got, want = outcomes[i], expected[i]
        assert got[0] == want[0], (i, kinds[i % len(kinds)], got, want)
        assert got[1:] == pytest.approx(want[1:], abs=1e-6), (i, kinds[i % len(kinds)], got, want)
    assert not engine.gateway.connections
    assert {want[0] for want in expected.values()} == {
        "eof", CloseCode.AUTH_TIMEOUT, CloseCode.HEARTBEAT_TIMEOUT, CloseCode.TOKEN_EXPIRED}


async def test_a_deadline_moved_earlier_from_another_task_wakes_the_reader(autojump_clock) -> None:
    """A room (or the gateway) closing a connection moves its deadline earlier than the one the
    reader sleeps until: the close deadline still holds to the second."""
    keys = TestKeys(clock=lambda: T0 + trio.current_time())
    async with trio.open_nursery() as nursery:
        engine = Engine(mock_config(keys, close_timeout=2.0))
        await nursery.start(engine.serve)
        peer = Peer(engine, "p")
        await peer.send(UPGRADE + hello(keys.token("alice"), 300_000))
        assert isinstance(await peer.reply(), Welcome)
        await trio.sleep(10)
        (connection,) = engine.gateway.connections
        connection.close(CloseCode.GOING_AWAY, "resume")  # from this task, not the reader
        assert await peer.close_code() == CloseCode.GOING_AWAY
        closed = trio.current_time()
        await peer.eof()
        assert trio.current_time() - closed == pytest.approx(2.0, abs=1e-6)
        engine.request_shutdown()


# -- parking ---------------------------------------------------------------------------------------


async def test_a_peer_gone_while_parked_ends_cleanly(autojump_clock, caplog) -> None:
    """The peer closes its socket while its request awaits (an admin call that takes long): once the
    call is done, the connection ends (no traceback, out of the gateway, sessions ended); and a call
    that never ends is cut off by the connection's deadlines."""
    keys = TestKeys(clock=lambda: T0 + trio.current_time())
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        engine = Engine(mock_config(keys, close_timeout=2.0))
        await nursery.start(engine.serve)
        admin = engine.gateway.admin
        real_call = admin.call

        async def slow_call(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("remote") == "forever":
                await trio.sleep_forever()
            await release.wait()
            return await real_call(*args, **kwargs)

        admin.call = slow_call  # type: ignore[method-assign]
        request = client_frame(encode(AdminRequest(id=1, key=SERVICE_KEY, op="stats")))
        peer = Peer(engine, "p")
        await peer.send(UPGRADE + hello(keys.token("alice"), 2000) + request)
        assert isinstance(await peer.reply(), Welcome)
        await trio.testing.wait_all_tasks_blocked()
        assert engine.gateway.reader.parks == 1  # type: ignore[union-attr]
        peer.stream.socket.close()  # gone, mid-call
        await trio.sleep(1)
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert not engine.gateway.connections
        assert not engine.gateway.by_sid

        # A call that never returns: the heartbeat deadline (2.5 x 2 s), then the close deadline (2 s).
        stuck = Peer(engine, "forever")
        started = trio.current_time()
        await stuck.send(UPGRADE + hello(keys.token("bob"), 2000) + request)
        assert isinstance(await stuck.reply(), Welcome)
        assert await stuck.close_code() == CloseCode.HEARTBEAT_TIMEOUT
        assert trio.current_time() - started == pytest.approx(5.0, abs=1e-6)
        await stuck.eof()
        assert trio.current_time() - started == pytest.approx(7.0, abs=1e-6)
        await trio.testing.wait_all_tasks_blocked()
        assert not engine.gateway.connections
        engine.request_shutdown()
    assert "Traceback" not in caplog.text


async def test_an_engine_cancelled_at_once_closes_parked_and_idle_sockets(autojump_clock) -> None:
    """Cancelling serve (no graceful shutdown) with one connection parked in a call that never ends
    and one idle: both sockets are closed (each peer reads end of stream), nothing escapes."""
    keys = TestKeys(clock=lambda: T0 + trio.current_time())
    async with trio.open_nursery() as nursery:
        engine = Engine(mock_config(keys))
        await nursery.start(engine.serve)

        async def never(*args: Any, **kwargs: Any) -> Any:
            await trio.sleep_forever()

        engine.gateway.admin.call = never  # type: ignore[method-assign]
        parked, idle = Peer(engine, "parked"), Peer(engine, "idle")
        await parked.send(UPGRADE + hello(keys.token("alice"), 300_000)
                          + client_frame(encode(AdminRequest(id=1, key=SERVICE_KEY, op="stats"))))
        await idle.send(UPGRADE + hello(keys.token("bob"), 300_000))
        assert isinstance(await parked.reply(), Welcome)
        assert isinstance(await idle.reply(), Welcome)
        await trio.testing.wait_all_tasks_blocked()
        # Parked now: the admin call only (each welcome parked too, for its inbox read, and came back).
        assert engine.gateway.reader is not None
        assert [c.user for c in engine.gateway.connections if c.parked is not None] == ["alice"]
        nursery.cancel_scope.cancel()
    with trio.fail_after(5):
        await parked.eof()
        await idle.eof()
    assert not engine.gateway.connections


Script = list[tuple[str, int]]
"""One connection's requests: ("chat" | "admin", admin delay in ms)."""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scripts=st.lists(st.lists(st.tuples(st.sampled_from(["chat", "chat", "admin", "ping"]), st.integers(0, 30)),
                              min_size=1, max_size=12), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 400), min_size=1, max_size=40),
    pauses=st.lists(st.sampled_from([0, 0, 0, 1, 5]), min_size=1, max_size=40),
    inbox=st.integers(1, 3),
)
def test_requests_keep_their_order_over_partial_reads_and_parking(scripts: list[Script], cuts: list[int],
                                                                   pauses: list[int], inbox: int) -> None:
    """Many connections, each sending its requests in random pieces with random pauses; parking at
    random (admin calls that await a random time; a room inbox of 1-3 that the others fill). Per
    connection: every request is answered exactly once, chats reach the room in the order sent, and
    whatever was sent after an admin request is answered after that request's ``ok``."""
    trio.run(_ordering_scenario, scripts, cuts, pauses, inbox, clock=trio.testing.MockClock(autojump_threshold=0))


async def _ordering_scenario(scripts: list[Script], cuts: list[int], pauses: list[int], inbox: int) -> None:
    keys = TestKeys(clock=lambda: T0 + trio.current_time())
    async with trio.open_nursery() as nursery:
        engine = Engine(mock_config(keys, room_inbox_size=inbox))
        await nursery.start(engine.serve)
        admin = engine.gateway.admin
        real_call = admin.call
        delays: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)

        async def delayed_call(op: Any, args: Any, key: Any, *, remote: str) -> Any:
            await trio.sleep(delays[remote].popleft() / 1000)  # a connection's admin calls come in order
            return await real_call(op, args, key, remote=remote)

        admin.call = delayed_call  # type: ignore[method-assign]
        peers, room_id = await joined(engine, keys, len(scripts))  # in order, so the chats can name the room
        answers: dict[int, list[tuple[int, Any]]] = {c: [] for c in range(len(scripts))}

        async def client(c: int, script: Script) -> None:
            peer = peers[c]
            wire = b""
            for k, (kind, delay) in enumerate(script, start=2):
                if kind == "chat":
                    wire += client_frame(encode(ChatSend(id=k, room=room_id, cid=f"{c}-{k}", text=f"{c}:{k}")))
                elif kind == "admin":
                    wire += client_frame(encode(AdminRequest(id=k, key=SERVICE_KEY, op="stats")))
                    delays[f"c{c}"].append(delay)
                else:
                    wire += client_frame(b"\x81\xa1t\xa4ping")  # {"t": "ping"}: answered by a pong (no id)

            async def feed() -> None:
                data = wire
                i = c
                while data:
                    size = cuts[i % len(cuts)]
                    await peer.send(data[:size])
                    data = data[size:]
                    await trio.sleep(pauses[i % len(pauses)] / 1000)
                    i += 1

            async with trio.open_nursery() as inner:
                inner.start_soon(feed)
                expected = len(script)
                seen = 0
                while seen < expected:
                    reply = await peer.reply()
                    if isinstance(reply, Pong):
                        answers[c].append((-1, reply))
                    elif isinstance(reply, Ok | ErrorReply):
                        answers[c].append((reply.id, reply))
                    else:
                        continue  # the room's events: chats (this member's and the others'), presence
                    seen += 1

        with trio.fail_after(600):
            async with trio.open_nursery() as clients:
                for c, script in enumerate(scripts):
                    clients.start_soon(client, c, script)
        assert engine.gateway.reader is not None
        parks = engine.gateway.reader.parks
        for peer in peers:
            await peer.stream.aclose()
        engine.request_shutdown()
    for c, script in enumerate(scripts):
        got = answers[c]
        ids = [i for i, _ in got if i >= 0]
        kinds = {k: kind for k, (kind, _) in enumerate(script, start=2)}
        assert sorted(ids) == [k for k, kind in kinds.items() if kind != "ping"], (c, got)
        assert all(isinstance(reply, Ok) for i, reply in got if i >= 0), got
        chats = [(i, reply.result["n"]) for i, reply in got if i >= 0 and kinds[i] == "chat"]
        assert chats == sorted(chats), (c, chats)  # answered in the order sent, numbered in that order
        position = {i: n for n, (i, _) in enumerate(got)}
        for k, kind in kinds.items():
            if kind == "admin":
                later = [i for i in ids if i > k]
                assert all(position[i] > position[k] for i in later), (c, k, got)
    if any(kind == "admin" for script in scripts for kind, _ in script):
        assert parks  # an admin call awaits in a parked step (those behind it follow in the same task)


# -- both drivers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_reader", [True, False], ids=["reader", "task-per-connection"])
async def test_both_drivers_serve_the_same_story_over_real_sockets(nursery, monkeypatch, use_reader: bool) -> None:
    """The reader task and the task-per-connection driver (in-memory transports, non-Linux) run the
    same Connection: a room, chats, an admin call, history, a refused frame, a graceful shutdown
    with 1001."""
    from roost.client import start_client
    from roost.testing import start_engine

    monkeypatch.setattr(Gateway, "use_reader", use_reader)
    keys = TestKeys()
    engine = await start_engine(nursery, test_config(keys))
    assert (engine.gateway.reader is not None) is use_reader
    with trio.fail_after(20):
        alice = await start_client(nursery, engine.url, keys.token("alice"))
        bob = await start_client(nursery, engine.url, keys.token("bob"))
        snapshot = await alice.create(public=True)
        room = snapshot.room
        await bob.join(room)
        inline = engine.router.passes.inline_passes
        for k in range(20):
            ack = await alice.chat_send(room, f"hello {k}")
            assert ack.n == k + 1
        # the reader runs the pass of each lone chat in its own step (TurnScheduler.release)
        assert (engine.router.passes.inline_passes - inline >= 20) is use_reader
        assert (await alice.admin(SERVICE_KEY, "stats"))["connections"] == 2
        await bob.chat_send(room, "x" * 4000)
        assert (await alice.history(room)).messages[-1].text == "x" * 4000
        carol = await raw_peer(nursery, engine.url)  # a bad frame is refused in band
        await carol.hello(keys.token("carol"))
        await carol.send(b"\x81\xa1t\xa3bad")
        assert isinstance(await carol.recv(), ErrorReply)
        await alice.aclose()
        await bob.aclose()
        engine.request_shutdown()
        assert await carol.closed_code() == CloseCode.GOING_AWAY
        while engine.gateway.connections:
            await trio.sleep(0.01)
    assert not engine.gateway.connections


async def joined(engine: Engine, keys: TestKeys, count: int) -> tuple[list[Peer], str]:
    """``count`` raw peers over the reader, each authenticated and in the room with code ``room``."""
    peers, room_id = [], ""
    for c in range(count):
        peer = Peer(engine, f"c{c}")
        await peer.send(UPGRADE + hello(keys.token(f"u{c}"), 300_000)
                        + client_frame(encode(JoinOrCreate(id=1, code="room", max=16))))
        assert isinstance(await peer.reply(), Welcome)
        while not isinstance(ok := await peer.reply(), Ok) or ok.id != 1:
            pass
        room_id = ok.result["room"]
        peers.append(peer)
    return peers, room_id


async def test_two_members_bursts_read_in_one_pass_are_all_answered(autojump_clock: trio.testing.MockClock) -> None:
    """Two members of one room each send 65 chats (within the default burst) that the reader reads in
    one pass: 130 commands for one room, more than a turn takes, so the inline pass's room pokes
    itself again (this took the gateway down once: see TurnScheduler.release)."""
    keys = TestKeys(clock=lambda: T0 + trio.current_time())
    async with trio.open_nursery() as nursery:
        engine = Engine(mock_config(keys))
        await nursery.start(engine.serve)
        peers, room_id = await joined(engine, keys, 2)
        await trio.sleep(1)
        wires = [b"".join(client_frame(encode(ChatSend(id=k, room=room_id, cid=f"{c}-{k}", text="x")))
                          for k in range(2, 67)) for c in range(2)]
        for peer, wire in zip(peers, wires):  # both written in one step: the reader's next pass reads both
            peer.stream.socket._sock.sendall(wire)

        async def acks(peer: Peer) -> None:
            seen = set()
            while len(seen) < 65:
                reply = await peer.reply()
                if isinstance(reply, Ok):
                    seen.add(reply.id)

        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                for peer in peers:
                    inner.start_soon(acks, peer)
        for peer in peers:
            await peer.stream.aclose()
        nursery.cancel_scope.cancel()
