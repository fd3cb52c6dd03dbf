"""The Trio client against a scripted fake server: handshake, requests, ordered events, heartbeats,
reconnect and resume, terminal closes.

The fake server is trio-websocket on 127.0.0.1 port 0, or over ``trio.testing.memory_stream_pair``
for the tests that run on a ``MockClock`` (autojump misfires with real sockets). It welcomes each
connection on its own (or closes it, as scripted) and hands it to the test, which then plays the
server frame by frame.
"""

from __future__ import annotations

import contextlib

import dataclasses
import functools
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import msgpack
import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, WebSocketRequest

from roost.protocol import SERVER_LIMITS, Sender, decode, dump_record, encode
from roost.client import (
    Client,
    ClientError,
    ConnectionClosedError,
    ConnectionLost,
    EventOverflow,
    HandshakeError,
    ProtocolViolation,
    RequestError,
    RoomPosition,
    open_client,
)
from roost.protocol.errors import ErrorCode, LocalProtocolError
from roost.protocol.frames import (
    AdminOp,
    AdminRequest,
    ChatAck,
    ChatDelete,
    ChatEdit,
    ChatEvent,
    ChatMessage,
    ChatSend,
    ClientFrame,
    Create,
    ErrorReply,
    Hello,
    History,
    HistoryPage,
    HostSet,
    Join,
    JoinOrCreate,
    Kick,
    Leave,
    Lobby,
    LobbyPage,
    Members,
    MembersPage,
    Ok,
    Phase,
    Ping,
    Pong,
    PresenceDiff,
    PresenceSet,
    Read,
    Refresh,
    Resume,
    ResumeResult,
    RoomSnapshot,
    Send,
    ServerFrame,
    StateSet,
    Status,
    Sync,
    Typing,
    Welcome,
)

T = TypeVar("T")
TS = 1_795_000_000_000
TOKEN = "eyJhbGciOiJFZERTQSJ9.e30.c2ln"
MEMORY_URL = "ws://roost.test/"


# -- the fake server -----------------------------------------------------------------------------


def welcome(session: str, *, resumed: bool = False, hb: int = 10_000, limits: dict[str, Any] | None = None) -> Welcome:
    return Welcome(
        v=1, sid="sid-1", session=session, user="u-ann", name="Ann", hb=hb, exp=TS // 1000 + 3600, time=TS,
        resumed=resumed, limits=limits,
    )  # fmt: skip


def snapshot(room: str = "r1", epoch: int = 1, seq: int = 5) -> RoomSnapshot:
    return RoomSnapshot(
        room=room, code="K7M2QX9P", epoch=epoch, seq=seq, public=False, max=4, host="u-ann", phase=Phase.LOBBY,
        version=0, created=TS,
    )  # fmt: skip


def chat(room: str, epoch: int, seq: int) -> ChatEvent:
    message = ChatMessage(id=f"m-{seq}", n=seq, user="u-bob", name="Bob", text=f"hello {seq}", ts=TS)
    return ChatEvent(room=room, epoch=epoch, seq=seq, ts=TS, msg=message)


def binary(message: str | bytes) -> bytes:
    assert isinstance(message, bytes), "Roost speaks binary messages only"
    return message


class FakeConn:
    """One accepted, welcomed connection, driven by the test."""

    def __init__(self, ws: WebSocketConnection, hello: Hello, stream: trio.abc.Stream | None) -> None:
        self.ws = ws
        self.hello = hello
        self.stream = stream
        self.done = trio.Event()

    async def recv(self, *, pings: bool = False) -> ClientFrame:
        """The next client frame; pings are answered and skipped unless ``pings`` is set."""
        while True:
            frame = decode(binary(await self.ws.get_message()), Sender.CLIENT)
            if isinstance(frame, Ping) and not pings:
                await self.send(Pong(time=TS))
                continue
            assert isinstance(frame, ClientFrame)
            return frame

    async def send(self, *frames: ServerFrame) -> None:
        for frame in frames:
            await self.ws.send_message(encode(frame))

    async def answer(self, *events: ServerFrame, result: Any = None, error: ErrorReply | None = None) -> ClientFrame:
        """Take the next request; send the events it causes, then its ``ok`` (or ``error``)."""
        request = await self.recv()
        request_id: int = request.id  # type: ignore[attr-defined]
        await self.send(*events)
        if error is not None:
            await self.send(ErrorReply(id=request_id, code=error.code, message=error.message, retry_ms=error.retry_ms))
        else:
            await self.send(Ok(id=request_id, result=result))
        return request

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.aclose(code, reason)
        self.done.set()

    async def drop(self) -> None:
        """Cut the byte stream without a Close frame (the client sees 1006)."""
        assert self.stream is not None, "only memory connections can be dropped"
        await trio.aclose_forcefully(self.stream)
        self.done.set()


class FakeServer:
    """Welcomes every connection (or closes it as ``script`` says) and queues it for the test.

    ``script`` holds one entry per connection, in order: a ``(code, reason)`` pair closes the
    connection after ``hello``; a frame is sent instead of ``welcome`` (and the client's close
    awaited); ``None`` (or running out of entries) welcomes it, with ``resumed`` set when the hello
    presented a session and ``limits`` as ``welcome.limits``.
    """

    def __init__(self, script: list[tuple[int, str] | ServerFrame | None] | None = None) -> None:
        self.script = list(script or [])
        self.hellos: list[Hello] = []
        self.limits: dict[str, Any] | None = None
        self._send, self._recv = trio.open_memory_channel[FakeConn](16)

    async def serve_ws(self, ws: WebSocketConnection, stream: trio.abc.Stream | None) -> None:
        hello = decode(binary(await ws.get_message()), Sender.CLIENT)
        assert isinstance(hello, Hello)
        self.hellos.append(hello)
        step = self.script.pop(0) if self.script else None
        if isinstance(step, tuple):
            await ws.aclose(*step)
            return
        if step is not None:
            await ws.send_message(encode(step))
            await ws.get_message()  # raises ConnectionClosed when the client gives up
            return  # pragma: no cover
        n = len(self.hellos)
        hb = hello.hb or 10_000
        await ws.send_message(encode(welcome(f"s-{n}", resumed=hello.session is not None, hb=hb, limits=self.limits)))
        conn = FakeConn(ws, hello, stream)
        await self._send.send(conn)
        await conn.done.wait()

    async def accept(self) -> FakeConn:
        with trio.fail_after(10):  # also virtual seconds, under MockClock
            return await self._recv.receive()


class SocketServer(FakeServer):
    """The fake server on a real socket (real clock)."""

    url = ""

    async def start(self, nursery: trio.Nursery) -> SocketServer:
        server = await nursery.start(trio_websocket.serve_websocket, self._handler, "127.0.0.1", 0, None)
        self.url = f"ws://127.0.0.1:{server.port}/"
        return self

    async def _handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(ConnectionClosed):
            await self.serve_ws(ws, None)


class MemoryServer(FakeServer):
    """The fake server over in-memory streams; ``connect`` is the client's stream factory."""

    def __init__(self, nursery: trio.Nursery, script: list[tuple[int, str] | ServerFrame | None] | None = None) -> None:
        super().__init__(script)
        self._nursery = nursery

    async def connect(self) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        self._nursery.start_soon(self._serve_stream, server_end)
        return client_end

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(nursery, stream)
            ws = await request.accept()
            with contextlib.suppress(ConnectionClosed):
                await self.serve_ws(ws, stream)
            nursery.cancel_scope.cancel()


async def served(conn: FakeConn, call: Callable[[], Awaitable[T]], **answer: Any) -> tuple[T, ClientFrame]:
    """Run a client call while the fake server answers it; return the result and the request."""
    seen: list[ClientFrame] = []

    async def server_side() -> None:
        seen.append(await conn.answer(**answer))

    failure: ClientError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        try:
            result = await call()
        except ClientError as exc:  # raised below, outside the nursery, so it is not grouped
            failure = exc
    if failure is not None:
        raise failure
    return result, seen[0]


async def capture(box: list[Any], call: Callable[[], Awaitable[Any]]) -> None:
    """Run a call in the background, keeping its result or its ClientError."""
    try:
        box.append(await call())
    except ClientError as exc:
        box.append(exc)


async def close_code_seen_by(conn: FakeConn) -> tuple[int, str | None]:
    """Read until the client's Close frame arrives; return its code and reason."""
    with trio.fail_after(2), pytest.raises(ConnectionClosed) as info:
        while True:
            await conn.recv()
    reason = info.value.reason
    assert reason is not None
    return reason.code, reason.reason


@pytest.fixture
async def socket_server(nursery: trio.Nursery) -> SocketServer:
    return await SocketServer().start(nursery)


# -- handshake -----------------------------------------------------------------------------------


async def test_handshake_sends_hello_and_exposes_welcome(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN, heartbeat_ms=5_000, agent="tests/1") as client:
        conn = await socket_server.accept()
        assert conn.hello == Hello(v=1, token=TOKEN, hb=5_000, agent="tests/1")  # no session on a first connect
        assert client.user == "u-ann"
        assert client.sid == "sid-1"
        assert client.welcome.session == "s-1"
        assert client.connected
        assert client.close_error is None
    assert await close_code_seen_by(conn) == (1000, None)  # leaving the block closes normally
    assert isinstance(client.close_error, ConnectionClosedError)
    assert not client.connected


async def test_close_before_welcome_raises_handshake_error(nursery: trio.Nursery) -> None:
    server = await SocketServer([(4500, "bad_token")]).start(nursery)
    with pytest.raises(HandshakeError) as info:
        async with open_client(server.url, TOKEN):
            pytest.fail("the client must not be yielded without a welcome")  # pragma: no cover
    assert (info.value.code, info.value.reason) == (4500, "bad_token")
    assert isinstance(info.value, ConnectionClosedError)
    assert "4500" in str(info.value) and "bad_token" in str(info.value)


async def test_unreachable_server_raises_handshake_error_1006() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))  # bound, never listening: the connection is refused
    port = listener.getsockname()[1]
    with listener, pytest.raises(HandshakeError) as info:
        async with open_client(f"ws://127.0.0.1:{port}/", TOKEN):
            pytest.fail("unreachable")  # pragma: no cover
    assert info.value.code == 1006
    assert isinstance(info.value.__cause__, OSError)


async def test_a_refused_upgrade_raises_handshake_error_1006(nursery: trio.Nursery) -> None:
    async def refuse(request: WebSocketRequest) -> None:
        await request.reject(403, body=b"go away")

    server = await nursery.start(trio_websocket.serve_websocket, refuse, "127.0.0.1", 0, None)
    with pytest.raises(HandshakeError) as info:
        async with open_client(f"ws://127.0.0.1:{server.port}/", TOKEN):
            pytest.fail("refused")  # pragma: no cover
    assert info.value.code == 1006
    cause = info.value.__cause__
    assert isinstance(cause, ExceptionGroup)
    assert cause.subgroup(ConnectionRejected) is not None


async def test_a_server_that_does_not_welcome_is_refused(nursery: trio.Nursery) -> None:
    server = await SocketServer([Pong(time=TS)]).start(nursery)
    with pytest.raises(HandshakeError) as info:
        async with open_client(server.url, TOKEN):
            pytest.fail("not welcomed")  # pragma: no cover
    assert info.value.code == 1002
    assert "expected welcome, got pong" in info.value.reason


def test_bad_arguments_are_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="ws://"):
        Client("http://roost.test/", TOKEN, **CLIENT_DEFAULTS)
    with pytest.raises(ValueError, match="heartbeat_ms"):
        Client(MEMORY_URL, TOKEN, **{**CLIENT_DEFAULTS, "heartbeat_ms": 500})
    with pytest.raises(ValueError, match="event_buffer"):
        Client(MEMORY_URL, TOKEN, **{**CLIENT_DEFAULTS, "event_buffer": 0})


CLIENT_DEFAULTS: dict[str, Any] = {
    "heartbeat_ms": 10_000, "reconnect": True, "agent": None, "stream": None, "max_backoff": 1.0, "backoff_base": 0.1,
    "event_buffer": 8, "connect_timeout": 1.0, "disconnect_timeout": 1.0, "ssl_context": None, "limits": SERVER_LIMITS,
}  # fmt: skip


# -- requests ------------------------------------------------------------------------------------


async def test_requests_get_typed_results_and_increasing_ids(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        snap, join = await served(conn, functools.partial(client.join, room="r1"), result=dump_record(snapshot()))
        assert snap == snapshot()
        assert join == Join(id=1, room="r1")
        assert client.rooms == {"r1": RoomPosition(1, 5)}

        page, lobby = await served(conn, client.lobby, result={"rooms": []})
        assert page == LobbyPage(rooms=())
        assert lobby.id == 2  # type: ignore[attr-defined]

        version, state_set = await served(
            conn, functools.partial(client.set_state, "r1", 0, phase="playing"), result={"version": 1}
        )
        assert version == 1
        assert state_set == StateSet(id=3, room="r1", version=0, phase=Phase.PLAYING)

        ack, send = await served(
            conn, functools.partial(client.chat_send, "r1", "hi"), result={"id": "m-1", "n": 1, "ts": TS}
        )
        assert ack == ChatAck(id="m-1", n=1, ts=TS)
        assert isinstance(send, ChatSend) and send.text == "hi" and send.cid  # a cid was generated

        members, request = await served(
            conn, functools.partial(client.request, {"t": "members", "room": "r1"}), result={"members": []}
        )
        assert members == MembersPage(members=())
        assert request == Members(id=5, room="r1")

        none, typing = await served(conn, functools.partial(client.request, Typing(id=999, room="r1", on=True)))
        assert none is None
        assert typing == Typing(id=6, room="r1", on=True)  # the given id is replaced


async def test_every_helper_sends_its_frame_and_returns_its_result(socket_server: SocketServer) -> None:
    member = {"user": "u-bob", "name": "Bob", "status": "online", "last_seen": TS}
    history = {"messages": [], "next": 4}
    cases: list[tuple[Callable[[Client], Awaitable[Any]], ClientFrame, Any, Any]] = [
        (lambda c: c.create(public=True, max=4, meta={"mode": "duel"}, logic="duel"),
         Create(id=0, public=True, max=4, meta={"mode": "duel"}, logic="duel"),
         dump_record(snapshot("r1")), snapshot("r1")),
        (lambda c: c.join_or_create("ranked-1", max=2),
         JoinOrCreate(id=0, code="ranked-1", max=2), dump_record(snapshot("r2")), snapshot("r2")),
        (lambda c: c.leave("r2"), Leave(id=0, room="r2"), None, None),
        (lambda c: c.lobby(cursor="c1", limit=10), Lobby(id=0, cursor="c1", limit=10), {"rooms": []},
         LobbyPage(rooms=())),
        (lambda c: c.members("r1", limit=5), Members(id=0, room="r1", limit=5), {"members": [member]}, None),
        (lambda c: c.set_presence("r1", {"color": "red"}, "away"),
         PresenceSet(id=0, room="r1", data={"color": "red"}, status=Status.AWAY), None, None),
        (lambda c: c.chat_send("r1", "hi", cid="c-1"), ChatSend(id=0, room="r1", cid="c-1", text="hi"),
         {"id": "m-1", "n": 1, "ts": TS}, ChatAck(id="m-1", n=1, ts=TS)),
        (lambda c: c.chat_edit("r1", "m-1", "hey"), ChatEdit(id=0, room="r1", msg="m-1", text="hey"), None, None),
        (lambda c: c.chat_delete("r1", "m-1"), ChatDelete(id=0, room="r1", msg="m-1"), None, None),
        (lambda c: c.history("r1", before=5, limit=2), History(id=0, room="r1", before=5, limit=2), history,
         HistoryPage(messages=(), next=4)),
        (lambda c: c.read("r1", 1), Read(id=0, room="r1", n=1), None, None),
        (lambda c: c.send("r1", "move", {"x": 1}), Send(id=0, room="r1", kind="move", body={"x": 1}), None, None),
        (lambda c: c.kick("r1", "u-bob"), Kick(id=0, room="r1", user="u-bob"), None, None),
        (lambda c: c.set_host("r1", "u-bob"), HostSet(id=0, room="r1", user="u-bob"), None, None),
        (lambda c: c.admin("key", "rooms"), AdminRequest(id=0, key="key", op=AdminOp.ROOMS), {"rooms": []},
         LobbyPage(rooms=())),
        (lambda c: c.admin("key", AdminOp.STATS), AdminRequest(id=0, key="key", op=AdminOp.STATS),
         {"rooms": 1}, {"rooms": 1}),
        (lambda c: c.refresh("fresh-token"), Refresh(id=0, token="fresh-token"), None, None),
    ]  # fmt: skip
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        for call, expected_frame, result, expected in cases:
            value, request = await served(conn, functools.partial(call, client), result=result)
            assert request == dataclasses.replace(cast(Any, expected_frame), id=cast(Any, request).id)
            if expected is not None:
                assert value == expected
        assert client.rooms == {"r1": RoomPosition(1, 5)}  # left r2


async def test_error_reply_raises_request_error_with_its_fields(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        with pytest.raises(RequestError) as info:
            await served(
                conn,
                functools.partial(client.join, code="K7M2QX9P"),
                error=ErrorReply(code="room_full", message="room r1 is full"),
            )
        assert info.value.code == ErrorCode.ROOM_FULL
        assert info.value.message == "room r1 is full"
        assert info.value.retry_ms is None
        assert info.value.request_id == 1
        assert client.rooms == {}

        with pytest.raises(RequestError) as info:
            await served(
                conn,
                functools.partial(client.history, "r1"),
                error=ErrorReply(code="rate_limited", message="slow down", retry_ms=250),
            )
        assert (info.value.code, info.value.retry_ms, info.value.request_id) == ("rate_limited", 250, 2)
        assert "retry in 250 ms" in str(info.value)

        with pytest.raises(RequestError) as info:  # a code from a later version reads as internal
            await served(conn, functools.partial(client.read, "r1", 3), error=ErrorReply(code="brand_new"))
        assert (info.value.code, info.value.wire_code) == (ErrorCode.INTERNAL, "brand_new")


async def test_a_bad_result_fails_only_its_request(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        with pytest.raises(ProtocolViolation):
            await served(conn, functools.partial(client.join, room="r1"), result={"room": "r1"})
        page, _ = await served(conn, client.lobby, result={"rooms": []})
        assert page == LobbyPage(rooms=())


# -- events --------------------------------------------------------------------------------------


async def test_events_arrive_in_order_without_duplicates(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        await served(conn, functools.partial(client.join, room="r1"), result=dump_record(snapshot(seq=5)))
        # The snapshot includes event 5: 4 and 5 are old, and 6 comes twice.
        await conn.send(chat("r1", 1, 4), chat("r1", 1, 5), chat("r1", 1, 6), chat("r1", 1, 6))
        await conn.send(chat("r2", 3, 1), chat("r1", 1, 7))
        received = []
        async for event in client.events():
            received.append((event.room, event.seq))  # type: ignore[attr-defined]
            if len(received) == 3:
                break
        assert received == [("r1", 6), ("r2", 1), ("r1", 7)]
        assert client.statistics().duplicates_dropped == 3
        assert client.statistics().events_delivered == 3
        assert client.rooms == {"r1": RoomPosition(1, 7), "r2": RoomPosition(3, 1)}


async def test_sync_replaces_the_room_position(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        await served(conn, functools.partial(client.join, room="r1"), result=dump_record(snapshot(seq=7)))
        restarted = snapshot(epoch=2, seq=3)
        await conn.send(Sync(room="r1", epoch=2, seq=3, ts=TS, snapshot=restarted, reason="restarted"))
        await conn.send(chat("r1", 2, 3), chat("r1", 2, 4))  # 3 is in the snapshot
        sync = await client.next_event()
        assert isinstance(sync, Sync) and sync.snapshot == restarted
        assert (await client.next_event("chat")).seq == 4  # type: ignore[attr-defined]

        # A sync may also move the position back within an epoch: what it says wins.
        await conn.send(Sync(room="r1", epoch=2, seq=1, ts=TS, snapshot=snapshot(epoch=2, seq=1)))
        await conn.send(chat("r1", 2, 2))
        assert (await client.next_event(ChatEvent)).seq == 2  # type: ignore[attr-defined]
        assert client.rooms == {"r1": RoomPosition(2, 2)}


async def test_being_removed_from_a_room_stops_following_it(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        await served(conn, functools.partial(client.join, room="r1"), result=dump_record(snapshot(seq=1)))
        await conn.send(PresenceDiff(room="r1", epoch=1, seq=2, ts=TS, leave=("u-ann",)))
        assert isinstance(await client.next_event(), PresenceDiff)
        assert client.rooms == {}


async def test_an_unread_event_buffer_closes_the_client_instead_of_blocking(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN, event_buffer=2) as client:
        conn = await socket_server.accept()
        blocked: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture, blocked, client.lobby)
            await conn.recv()  # the lobby request, never answered
            await conn.send(chat("r1", 1, 1), chat("r1", 1, 2), chat("r1", 1, 3))
            assert await close_code_seen_by(conn) == (1000, "event_buffer_full")
        assert isinstance(blocked[0], EventOverflow)
        seen = []
        with pytest.raises(EventOverflow):  # after the events it did buffer
            async for event in client.events():
                seen.append(event.seq)  # type: ignore[attr-defined]
        assert seen == [1, 2]
        with pytest.raises(EventOverflow):
            await client.lobby()


# -- heartbeats ----------------------------------------------------------------------------------


async def test_pings_are_sent_only_after_an_idle_interval(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = MemoryServer(nursery)
    async with open_client(MEMORY_URL, TOKEN, heartbeat_ms=1_000, stream=server.connect) as client:
        conn = await server.accept()
        start = trio.current_time()
        assert isinstance(await conn.recv(pings=True), Ping)
        assert trio.current_time() - start == pytest.approx(1.0)
        await conn.send(Pong(time=TS + 1))

        await trio.sleep(0.5)  # a request at 1.5 s counts as a heartbeat: the next ping waits until 2.5 s
        await served(conn, functools.partial(client.typing, "r1", True))
        assert isinstance(await conn.recv(pings=True), Ping)
        assert trio.current_time() - start == pytest.approx(2.5)
        await conn.send(Pong(time=TS + 2))
        assert isinstance(await conn.recv(pings=True), Ping)
        assert trio.current_time() - start == pytest.approx(3.5)
        assert client.statistics().pings_sent == 3
        assert client.last_pong == Pong(time=TS + 2)


async def test_a_silent_server_is_dropped_and_the_session_resumed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = MemoryServer(nursery)
    async with open_client(MEMORY_URL, TOKEN, heartbeat_ms=1_000, stream=server.connect) as client:
        await server.accept()  # and never answer: no pong, no frame at all
        start = trio.current_time()
        second = await server.accept()
        assert 2.5 <= trio.current_time() - start <= 2.5 + 0.25  # 2.5 intervals, then a jittered backoff
        assert second.hello.session == "s-1"
        await served(second, client.lobby, result={"rooms": []})  # requests go out on the new link
        assert client.welcome.resumed
        assert client.statistics().connections == 2


# -- reconnect and resume ------------------------------------------------------------------------


async def test_reconnect_resumes_rooms_and_resends_chat(socket_server: SocketServer) -> None:
    # deliver=False: this test reads the frames in flight one by one (delivered cursors: test_receipts.py)
    async with open_client(socket_server.url, TOKEN, max_backoff=0.01, deliver=False) as client:
        first = await socket_server.accept()
        await served(first, functools.partial(client.join, room="r1"), result=dump_record(snapshot(seq=5)))
        await first.send(chat("r1", 1, 6), chat("r1", 1, 7))
        assert (await client.next_event()).seq == 6  # type: ignore[attr-defined]
        assert (await client.next_event()).seq == 7  # type: ignore[attr-defined]

        sent: list[Any] = []
        lost: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture, sent, functools.partial(client.chat_send, "r1", "still there?"))
            nursery.start_soon(capture, lost, functools.partial(client.history, "r1"))
            in_flight = {type(frame): frame for frame in [await first.recv(), await first.recv()]}
            chat_send = in_flight[ChatSend]
            assert isinstance(chat_send, ChatSend) and History in in_flight
            await first.close(1012, "restart")  # service restart: may reconnect

            second = await socket_server.accept()
            assert second.hello.session == "s-1"
            resume = await second.recv()  # first the room, from the last event processed
            assert isinstance(resume, Resume)
            assert (resume.room, resume.epoch, resume.seq) == ("r1", 1, 7)
            again = await second.recv()
            assert isinstance(again, ChatSend)
            assert (again.cid, again.text, again.room) == (chat_send.cid, "still there?", "r1")
            await second.send(Ok(id=resume.id, result=dump_record(ResumeResult(replayed=2))))
            await second.send(chat("r1", 1, 7), chat("r1", 1, 8))  # 7 was seen already
            await second.send(Ok(id=again.id, result=dump_record(ChatAck(id="m-8", n=8, ts=TS, dup=True))))

        assert sent == [ChatAck(id="m-8", n=8, ts=TS, dup=True)]
        assert isinstance(lost[0], ConnectionLost)
        assert (await client.next_event()).seq == 8  # type: ignore[attr-defined]
        stats = client.statistics()
        assert (stats.connections, stats.duplicates_dropped, stats.requests_resent) == (2, 1, 1)
        assert client.rooms == {"r1": RoomPosition(1, 8)}
        assert client.welcome.resumed


async def test_a_dropped_link_reconnects_and_forgets_rooms_it_no_longer_holds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = MemoryServer(nursery)
    async with open_client(MEMORY_URL, TOKEN, stream=server.connect) as client:
        first = await server.accept()
        await served(first, functools.partial(client.join, room="r1"), result=dump_record(snapshot(seq=5)))
        await first.drop()  # no Close frame: 1006

        second = await server.accept()
        waiting: list[Any] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(capture, waiting, client.lobby)  # waits for the resume phase, then goes out
            resume = await second.recv()
            assert isinstance(resume, Resume)
            await second.send(ErrorReply(id=resume.id, code="not_member"))
            await second.answer(result={"rooms": []})
        assert waiting == [LobbyPage(rooms=())]
        assert client.rooms == {}


async def test_terminal_close_ends_the_client(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN, max_backoff=0.01) as client:
        conn = await socket_server.accept()
        outcome: list[Any] = []
        events: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture, outcome, client.lobby)
            nursery.start_soon(capture, events, lambda: _collect(client))
            await conn.recv()
            await conn.send(chat("r1", 1, 1))
            await conn.close(4505, "kicked")
        assert isinstance(outcome[0], ConnectionClosedError)
        assert (outcome[0].code, outcome[0].reason) == (4505, "kicked")
        assert [event.seq for event in events[0]] == [1]  # events() delivered what came, then ended
        with pytest.raises(ConnectionClosedError) as info:
            await client.members("r1")
        assert info.value.code == 4505
        with pytest.raises(ConnectionClosedError):
            await client.next_event()
        assert isinstance(await client.wait_closed(), ConnectionClosedError)
        assert not client.connected
        with trio.move_on_after(0.05):
            await socket_server.accept()
            pytest.fail("a terminal close must not reconnect")  # pragma: no cover


async def _collect(client: Client) -> list[Any]:
    return [event async for event in client.events()]


async def test_a_terminal_close_while_reconnecting_is_a_handshake_error(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = MemoryServer(nursery, script=[None, (4501, "token_revoked")])
    async with open_client(MEMORY_URL, TOKEN, stream=server.connect) as client:
        first = await server.accept()
        await first.close(1001, "going_away")
        failure = await client.wait_closed()
        assert isinstance(failure, HandshakeError)
        assert (failure.code, failure.reason) == (4501, "token_revoked")
        assert [hello.session for hello in server.hellos] == [None, "s-1"]


async def test_a_single_stream_cannot_reconnect(nursery: trio.Nursery) -> None:
    server = MemoryServer(nursery)
    async with open_client(MEMORY_URL, TOKEN, stream=await server.connect()) as client:
        conn = await server.accept()
        await conn.close(1012, "restart")
        failure = await client.wait_closed()
        assert isinstance(failure, ConnectionClosedError)
        assert failure.code == 1012


async def test_aclose_ends_pending_requests_and_the_event_stream(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        outcome: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture, outcome, client.lobby)
            await conn.recv()
            await client.aclose()
        assert isinstance(outcome[0], ConnectionClosedError)
        assert outcome[0].code == 1000
        assert await _collect(client) == []
        assert await close_code_seen_by(conn) == (1000, None)


async def test_an_undecodable_server_frame_closes_the_client(socket_server: SocketServer) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        await conn.send(chat("r1", 1, 1))
        await conn.ws.send_message(b"\xc1")  # never valid msgpack
        assert await close_code_seen_by(conn) == (1002, "bad_server_frame")
        assert isinstance(await client.wait_closed(), ProtocolViolation)
        assert (await client.next_event()).seq == 1  # type: ignore[attr-defined]
        with pytest.raises(ProtocolViolation):
            await client.next_event()


async def test_cancelling_from_outside_still_closes_promptly(socket_server: SocketServer) -> None:
    start = trio.current_time()
    with trio.CancelScope() as scope:
        async with open_client(socket_server.url, TOKEN):
            conn = await socket_server.accept()
            scope.cancel()
            await trio.sleep_forever()
    assert trio.current_time() - start < 1.0
    assert await close_code_seen_by(conn) == (1000, None)


async def test_reconnects_use_the_token_source_and_then_the_refreshed_token(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = MemoryServer(nursery)
    minted = iter(["token-1", "token-2"])

    async def token_source() -> str:
        return next(minted)

    async with open_client(MEMORY_URL, token_source, stream=server.connect) as client:
        first = await server.accept()
        await first.close(4003, "heartbeat_timeout")
        second = await server.accept()
        await served(second, functools.partial(client.refresh, "token-fresh"))
        await second.close(4000, "slow_consumer")
        third = await server.accept()
    assert [hello.token for hello in server.hellos] == ["token-1", "token-2", "token-fresh"]
    assert third.hello.session == "s-2"  # the latest welcome's session


async def test_odd_but_harmless_frames_do_not_end_the_client(socket_server: SocketServer) -> None:
    socket_server.limits = {"chat": 5}
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        await conn.send(ErrorReply(code="malformed", message="frame 3"))  # connection-level: logged
        await conn.send(Ok(id=4242, result=None))  # a reply to nothing (a cancelled request): ignored
        with pytest.raises(LocalProtocolError):
            await client.chat_send("r1", "longer than five")  # welcome.limits applies locally
        with pytest.raises(TypeError):
            await client.request(Ping())
        with pytest.raises(ValueError, match="not a client frame type"):
            await client.request({"t": "welcome"})
        with pytest.raises(ProtocolViolation):  # a reply whose result does not fit
            await served(conn, functools.partial(client.set_state, "r1", 0, {"a": 1}), result={"version": "1"})
        deep: Any = 0
        for _ in range(40):
            deep = [deep]
        failed: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture, failed, client.lobby)
            request = await conn.recv()
            raw = {"t": "ok", "id": cast(Any, request).id, "result": deep}
            await conn.ws.send_message(msgpack.packb(raw))  # undecodable, but its id can be read
        assert isinstance(failed[0], ProtocolViolation)
        page, _ = await served(conn, client.lobby, result={"rooms": []})
        assert page == LobbyPage(rooms=())
        assert client.connected


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        (lambda ws: ws.send_message("text"), "bad_server_frame"),
        (lambda ws: ws.send_message(encode(welcome("s"))), "bad_server_frame"),
    ],
)
async def test_text_or_a_second_welcome_is_a_protocol_violation(
    socket_server: SocketServer, send: Callable[[WebSocketConnection], Awaitable[None]], reason: str
) -> None:
    async with open_client(socket_server.url, TOKEN) as client:
        conn = await socket_server.accept()
        await send(conn.ws)
        assert await close_code_seen_by(conn) == (1002, reason)
        assert isinstance(await client.wait_closed(), ProtocolViolation)


async def test_a_failed_resume_drops_the_link_and_tries_again(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = MemoryServer(nursery)
    async with open_client(MEMORY_URL, TOKEN, stream=server.connect) as client:
        first = await server.accept()
        await served(first, functools.partial(client.join, room="r1"), result=dump_record(snapshot(seq=5)))
        await first.close(1011, "internal_error")
        second = await server.accept()
        await second.answer(error=ErrorReply(code="internal", message="store busy"))  # the resume
        third = await server.accept()
        resume = await third.answer(result=dump_record(ResumeResult(replayed=0)))
        assert isinstance(resume, Resume)
        assert (resume.room, resume.epoch, resume.seq) == ("r1", 1, 5)
        assert client.statistics().connections == 3


async def test_requests_wait_while_reconnecting_and_closing_ends_the_wait(
    socket_server: SocketServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the longest backoff: 60 s
    async with open_client(socket_server.url, TOKEN, backoff_base=60.0, max_backoff=60.0) as client:
        conn = await socket_server.accept()
        await conn.close(1012, "restart")
        await trio.testing.wait_all_tasks_blocked(0.01)
        assert not client.connected
        waiting: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture, waiting, client.lobby)
            await trio.testing.wait_all_tasks_blocked(0.01)
            assert waiting == []  # the request waits for the next connection
            with trio.fail_after(1):
                await client.aclose()  # interrupts the backoff
        assert isinstance(waiting[0], ConnectionClosedError)
        assert waiting[0].code == 1000


def test_welcome_limits_apply_to_what_the_client_sends() -> None:
    from roost.client import _limits_from_welcome
    from roost.protocol.schema import Limits

    assert _limits_from_welcome(None) == Limits()
    announced = {"frame": 2**20, "chat": 10, "meta": 100, "data": 200, "chat_meta": 300, "state": 400, "rate": 50.0}
    assert _limits_from_welcome(announced) == Limits(max_frame_bytes=2**20, max_chat_chars=10, max_meta_bytes=100,
                                                     max_presence_bytes=200, max_chat_meta_bytes=300,
                                                     max_state_bytes=400)
    assert _limits_from_welcome({"meta": "big", "data": 0}) == Limits()  # nonsense is ignored
