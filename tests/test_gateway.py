"""The gateway: authentication, every limit and every kind of bad input gets its documented answer."""

from __future__ import annotations

import socket
import struct
import time

import msgpack
import pytest
import trio

from roost import Config, Engine
from roost.connection import Connection
from roost.testing import TestKeys, start_engine, test_config
from roost.protocol.errors import CloseCode
from roost.protocol import encode
from roost.protocol.frames import ErrorReply, Hello, History, Ok, Ping, Pong, Refresh
from roost.protocol.tokens import generate_key, new_claims, sign, verify
from tests.wire import client_frame, raw_peer

BASE = 1_800_000_000.0


def mock_wall() -> float:
    return BASE + trio.current_time()


async def test_token_in_the_query_string(roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url, resource=f"/?token={roost_keys.token('ann')}")
        await peer.send({"t": "hello", "v": 1})
        welcome = await peer.recv()
        assert welcome.user == "ann"


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda keys: None, CloseCode.BAD_TOKEN),
        (lambda keys: "not.a.token", CloseCode.BAD_TOKEN),
        (lambda keys: keys.token("ann")[:-4] + "AAAA", CloseCode.BAD_TOKEN),
        (lambda keys: sign(new_claims(sub="ann", name="", kid="other", now=BASE, ttl=60), generate_key()[1]),
         CloseCode.BAD_TOKEN),
        (lambda keys: keys.token("ann", ttl=10, now=1_000_000.0), CloseCode.TOKEN_EXPIRED),
    ],
    ids=["missing", "malformed", "bad-signature", "unknown-kid", "expired"],
)
async def test_bad_tokens_are_refused_before_any_room_sees_them(
    roost_engine: Engine, roost_keys: TestKeys, nursery, make_token, code
) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        token = make_token(roost_keys)
        await peer.send({"t": "hello", "v": 1, **({"token": token} if token else {})})
        assert await peer.closed_code() == code
        assert roost_engine.gateway.stats["sessions_opened"] == 0


async def test_revoked_tokens_and_users_are_refused_and_live_ones_closed(
    roost_engine: Engine, roost_keys: TestKeys, nursery
) -> None:
    with trio.fail_after(10):
        live = await raw_peer(nursery, roost_engine.url)
        await live.hello(roost_keys.token("ann"))
        await roost_engine.ops.revoke_user("ann", int(time.time()) + 3600)
        assert await live.closed_code() == CloseCode.TOKEN_REVOKED
        again = await raw_peer(nursery, roost_engine.url)
        await again.send({"t": "hello", "v": 1, "token": roost_keys.token("ann", now=time.time() - 60)})
        assert await again.closed_code() == CloseCode.TOKEN_REVOKED
        token = roost_keys.token("bob")
        jti = verify(token, roost_keys.keyring, time.time()).jti
        await roost_engine.ops.revoke_token(jti, int(time.time()) + 3600)
        bob = await raw_peer(nursery, roost_engine.url)
        await bob.send({"t": "hello", "v": 1, "token": token})
        assert await bob.closed_code() == CloseCode.TOKEN_REVOKED
        fresh = await raw_peer(nursery, roost_engine.url)
        assert (await fresh.hello(roost_keys.token("bob"))).user == "bob"  # another token of bob is fine


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"t": "hello", "v": 2, "token": "x"}, CloseCode.UNSUPPORTED_VERSION),
        ({"t": "ping"}, CloseCode.BAD_FRAME),
        (b"\xc1garbage", CloseCode.BAD_FRAME),
    ],
)
async def test_the_first_frame_must_be_a_good_hello(roost_engine: Engine, nursery, first, code) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.send(first)
        assert await peer.closed_code() == code


async def test_no_hello_before_the_auth_deadline(autojump_clock, roost_engine: Engine, nursery) -> None:
    peer = await raw_peer(nursery, stream=roost_engine.connect_memory())
    start = trio.current_time()
    assert await peer.closed_code() == CloseCode.AUTH_TIMEOUT
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_text_frames_are_refused(roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.hello(roost_keys.token("ann"))
        await peer.ws.send_message("hello as text")
        assert await peer.closed_code() == CloseCode.UNSUPPORTED_DATA


async def test_oversized_messages_close_with_1009(roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.hello(roost_keys.token("ann"))
        await peer.send(b"\x00" * (64 * 1024 + 1))
        assert await peer.closed_code() == CloseCode.MESSAGE_TOO_BIG


async def test_bad_frames_get_error_frames_and_the_connection_stays(
    roost_engine: Engine, roost_keys: TestKeys, nursery
) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.hello(roost_keys.token("ann"))
        cases = [
            (b"\xc1", None, "malformed"),
            (msgpack.packb([1, 2]), None, "not_a_map"),
            (msgpack.packb({"t": "teleport", "id": 7}), 7, "unknown_type"),
            (msgpack.packb({"t": "history", "id": 8}), 8, "missing_field"),
            (msgpack.packb({"t": "history", "id": 9, "room": 5}), 9, "bad_field"),
            (msgpack.packb({"t": "chat_send", "id": 10, "room": "r", "cid": "c", "text": "x" * 5000}), 10, "too_long"),
            (msgpack.packb({"t": "hello", "v": 1}), None, "invalid_state"),
        ]
        for data, request_id, code in cases:
            await peer.send(data)
            reply = await peer.recv()
            assert isinstance(reply, ErrorReply) and (reply.id, reply.code) == (request_id, code), reply
        await peer.send(Ping())
        assert isinstance(await peer.recv(), Pong)


async def test_too_many_bad_frames_close_the_connection(roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.hello(roost_keys.token("ann"))
        for _ in range(11):
            await peer.send(b"\xc1")
        assert await peer.closed_code() == CloseCode.BAD_FRAME


async def test_websocket_pings_are_answered(roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
    with trio.fail_after(10):
        peer = await raw_peer(nursery, roost_engine.url)
        await peer.hello(roost_keys.token("ann"))
        await peer.ws.ping(b"are you there")


async def test_one_connection_failing_never_reaches_another(
    roost_engine: Engine, roost_keys: TestKeys, nursery, monkeypatch
) -> None:
    original = Connection._dispatch

    def explode_for_eve(self, frame):
        if self.user == "eve":
            raise RuntimeError("bug triggered by eve")
        return original(self, frame)

    monkeypatch.setattr(Connection, "_dispatch", explode_for_eve)
    with trio.fail_after(10):
        eve, ann = await raw_peer(nursery, roost_engine.url), await raw_peer(nursery, roost_engine.url)
        await eve.hello(roost_keys.token("eve"))
        await ann.hello(roost_keys.token("ann"))
        await eve.send(Ping())
        assert await eve.closed_code() == CloseCode.INTERNAL_ERROR
        await ann.send(Ping())
        assert isinstance(await ann.recv(), Pong)


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(UPGRADE)
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def _read_close(sock: socket.socket) -> int:
    """Read until a whole Close frame (opcode 8) has arrived; return its code."""
    data = b""
    while True:
        index = data.find(b"\x88")
        if index >= 0 and len(data) >= index + 4:
            return int(struct.unpack("!H", data[index + 2 : index + 4])[0])
        chunk = sock.recv(4096)
        assert chunk, f"connection dropped without a Close frame: {data!r}"
        data += chunk


async def test_rfc6455_violations_get_a_close_frame_not_a_dropped_socket(roost_engine: Engine) -> None:
    port = roost_engine.address[1]

    def unmasked_frame() -> int:
        with _handshake(port) as sock:
            sock.sendall(b"\x82\x02hi")  # client frames must be masked
            return _read_close(sock)

    def bad_opcode() -> int:
        with _handshake(port) as sock:
            sock.sendall(b"\x83\x80\x00\x00\x00\x00")  # reserved opcode 3
            return _read_close(sock)

    with trio.fail_after(10):
        assert await trio.to_thread.run_sync(unmasked_frame) == CloseCode.PROTOCOL_ERROR
        assert await trio.to_thread.run_sync(bad_opcode) == CloseCode.PROTOCOL_ERROR


async def test_plain_http_is_answered_by_the_http_layer(roost_engine: Engine) -> None:
    """Not an upgrade: engine/http.py answers (tests/test_http.py has the rest)."""

    def plain_get() -> bytes:
        with socket.create_connection(("127.0.0.1", roost_engine.address[1]), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(4096)

    with trio.fail_after(10):
        assert (await trio.to_thread.run_sync(plain_get)).startswith(b"HTTP/1.1 404")


class TestSessionLimits:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, max_sessions_per_user=2)

    async def test_sessions_per_user(self, roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
        with trio.fail_after(10):
            first, second, third = [await raw_peer(nursery, roost_engine.url) for _ in range(3)]
            await first.hello(roost_keys.token("ann"))
            await second.hello(roost_keys.token("ann"))
            await third.send({"t": "hello", "v": 1, "token": roost_keys.token("ann")})
            assert await third.closed_code() == CloseCode.TOO_MANY_SESSIONS

    async def test_taking_a_session_over_closes_the_old_connection(
        self, roost_engine: Engine, roost_keys: TestKeys, nursery
    ) -> None:
        with trio.fail_after(10):
            old, new = await raw_peer(nursery, roost_engine.url), await raw_peer(nursery, roost_engine.url)
            welcome = await old.hello(roost_keys.token("ann"))
            again = await new.hello(roost_keys.token("ann"), session=welcome.session)
            assert again.resumed and again.sid == welcome.sid
            assert await old.closed_code() == CloseCode.SUPERSEDED

    async def test_a_session_token_of_another_user_starts_a_new_session(
        self, roost_engine: Engine, roost_keys: TestKeys, nursery
    ) -> None:
        with trio.fail_after(10):
            ann, bob = await raw_peer(nursery, roost_engine.url), await raw_peer(nursery, roost_engine.url)
            welcome = await ann.hello(roost_keys.token("ann"))
            stolen = await bob.hello(roost_keys.token("bob"), session=welcome.session)
            assert not stolen.resumed and stolen.sid != welcome.sid
            forged = await raw_peer(nursery, roost_engine.url)
            assert not (await forged.hello(roost_keys.token("bob"), session="s1.e30.AAAA")).resumed


class TestPendingHandshakes:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, max_pending_handshakes=1)

    async def test_excess_handshakes_are_refused_with_503(self, roost_engine: Engine, roost_keys: TestKeys, nursery) -> None:
        with trio.fail_after(10):
            await raw_peer(nursery, roost_engine.url)  # upgraded, no hello yet: pending

            def second() -> bytes:
                with socket.create_connection(("127.0.0.1", roost_engine.address[1]), timeout=5) as sock:
                    sock.sendall(UPGRADE)
                    return sock.recv(4096)

            assert (await trio.to_thread.run_sync(second)).startswith(b"HTTP/1.1 503")
            assert roost_engine.gateway.stats["handshakes_refused"] == 1


class TestRateLimit:
    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, rate=5.0, burst=5, rate_close_after=2.0)

    async def test_over_the_rate_gets_errors_then_a_close(
        self, autojump_clock, roost_engine: Engine, roost_keys: TestKeys, nursery
    ) -> None:
        peer = await raw_peer(nursery, stream=roost_engine.connect_memory())
        await peer.hello(roost_keys.token("ann"), hb=300_000)
        for i in range(7):
            await peer.send(History(id=i, room="r-none"))
        replies = [await peer.recv() for _ in range(7)]
        codes = [r.code for r in replies]
        assert codes == ["not_found"] * 5 + ["rate_limited"] * 2
        assert replies[-1].retry_ms == 200 and replies[-1].id == 6
        await trio.sleep(1.0)  # refills 5 tokens
        await peer.send(History(id=100, room="r-none"))
        assert (await peer.recv()).code == "not_found"
        for _ in range(400):
            await peer.send(Ping())
            await trio.sleep(0.01)  # 100/s against a 5/s budget, for more than 2 s
            if peer.ws.closed:
                break
        assert await peer.closed_code() == CloseCode.RATE_LIMITED

    async def test_websocket_pings_take_from_the_rate_too(
        self, autojump_clock, roost_engine: Engine, roost_keys: TestKeys, nursery
    ) -> None:
        """WebSocket pings are answered by the WebSocket layer, below the token bucket: a client
        could ping at line rate, reading its pongs, for ever (a core per client). They take a token
        each like any frame; over the rate for ``rate_close_after`` closes 4001. Until then every
        ping is answered (RFC 6455 §5.5.2) and no ``error`` frame is sent for them."""
        peer = await raw_peer(nursery, stream=roost_engine.connect_memory())
        await peer.hello(roost_keys.token("ann"), hb=300_000)
        with trio.fail_after(10):
            for i in range(400):  # 100/s against a 5/s budget, for more than 2 s
                if peer.ws.closed:
                    break
                with trio.move_on_after(0.01):  # no pong comes after the server's Close
                    await peer.ws.ping(i.to_bytes(2, "big"))
                await trio.sleep(0.01)
            assert await peer.closed_code() == CloseCode.RATE_LIMITED


class TestTokenExpiry:
    @pytest.fixture
    def roost_keys(self) -> TestKeys:
        return TestKeys(clock=mock_wall)

    @pytest.fixture
    def roost_config(self, roost_keys: TestKeys) -> Config:
        return test_config(roost_keys, wall_clock=mock_wall, token_leeway=30.0)

    async def test_a_connection_is_closed_when_its_token_expires(
        self, autojump_clock, roost_engine: Engine, roost_keys: TestKeys, nursery
    ) -> None:
        peer = await raw_peer(nursery, stream=roost_engine.connect_memory())
        start = trio.current_time()
        await peer.hello(roost_keys.token("ann", ttl=120), hb=300_000)
        assert await peer.closed_code() == CloseCode.TOKEN_EXPIRED
        assert trio.current_time() - start == pytest.approx(150.0, abs=1.0)  # exp + leeway (exp is whole seconds)

    async def test_a_fresh_token_keeps_the_connection_open(
        self, autojump_clock, roost_engine: Engine, roost_keys: TestKeys, nursery
    ) -> None:
        peer = await raw_peer(nursery, stream=roost_engine.connect_memory())
        await peer.hello(roost_keys.token("ann", ttl=120), hb=300_000)
        await trio.sleep(100)
        await peer.send(Refresh(id=1, token=roost_keys.token("ann", ttl=600)))
        reply = await peer.recv()
        assert isinstance(reply, Ok)
        await trio.sleep(200)  # past the first token's expiry
        await peer.send(Ping())
        assert isinstance(await peer.recv(), Pong)
        await peer.send(Refresh(id=2, token=roost_keys.token("bob")))
        assert (await peer.recv()).code == "forbidden"
        await peer.send(Refresh(id=3, token="garbage"))
        assert (await peer.recv()).code == "unauthorized"


async def test_engine_survives_a_listener_full_of_connections(nursery, roost_keys: TestKeys) -> None:
    engine = await start_engine(nursery, test_config(roost_keys))
    with trio.fail_after(10):
        peers = [await raw_peer(nursery, engine.url) for _ in range(20)]
        for i, peer in enumerate(peers):
            await peer.hello(roost_keys.token(f"u{i}"))
        assert engine.statistics()["sessions"] == 20


async def test_an_endless_http_head_is_refused_with_431(roost_engine: Engine) -> None:
    def endless() -> bytes:
        with socket.create_connection(("127.0.0.1", roost_engine.address[1]), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n")
            return sock.recv(4096)

    with trio.fail_after(10):
        assert (await trio.to_thread.run_sync(endless)).startswith(b"HTTP/1.1 431")


async def test_frames_sent_right_behind_the_upgrade_are_kept(roost_engine: Engine, roost_keys: TestKeys) -> None:
    """RFC 6455 says wait for the 101; some clients do not. Their first frames must not vanish."""

    def eager() -> bytes:
        with socket.create_connection(("127.0.0.1", roost_engine.address[1]), timeout=5) as sock:
            sock.sendall(UPGRADE + client_frame(encode(Hello(v=1, token=roost_keys.token("ann")))))
            data = b""
            while b"welcome" not in data:
                chunk = sock.recv(4096)
                assert chunk, data
                data += chunk
            return data

    with trio.fail_after(10):
        assert b"welcome" in await trio.to_thread.run_sync(eager)
