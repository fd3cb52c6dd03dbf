"""Outgoing bytes: WebSocket framing done once, direct non-blocking writes, a writer only for backlog.

Measured on this machine (reference/stack-limits.md §A.7–A.8): queueing every delivery to a per-member
writer task costs 2.5× a direct non-blocking ``send()``; trio-websocket's ``send_message`` costs 4×.
So :meth:`Outbox.push` writes straight to the socket from whichever task calls it (a room actor in the
middle of a broadcast), and only what the kernel did not take goes to a bounded backlog that the
connection's writer task drains, coalescing everything queued into one ``send``. A backlog over its
bound marks a slow consumer: the connection is closed with a resumable code instead of stalling its
rooms.
"""

from __future__ import annotations

import abc
import collections
import socket
from collections.abc import Callable

import trio

__all__ = ["Outbox", "SocketTransport", "StreamTransport", "Transport", "ws_frame"]


def ws_frame(payload: bytes) -> bytes:
    """One unmasked binary WebSocket frame (FIN set) carrying ``payload``: the server-side framing.

    Server frames are never masked (RFC 6455 §5.1), so the same bytes serve every recipient.
    """
    size = len(payload)
    if size < 126:
        return bytes((0x82, size)) + payload
    if size < 65536:
        return bytes((0x82, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x82, 127)) + size.to_bytes(8, "big") + payload


class Transport(abc.ABC):
    """The byte pipe under one connection: a real socket, or a Trio stream in tests."""

    @abc.abstractmethod
    def try_send(self, data: bytes | memoryview) -> int:
        """Write without blocking; return how many bytes the kernel took (0 if none).

        Raises:
            OSError: the connection is broken.
        """

    @abc.abstractmethod
    async def send_some(self, data: bytes | memoryview) -> int:
        """Wait until writable, then write; return how many bytes were written."""

    @abc.abstractmethod
    async def receive_some(self) -> bytes:
        """The next bytes from the peer; ``b""`` at end of stream."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the transport (idempotent)."""

    async def send_eof(self) -> None:  # noqa: B027 - a default, not abstract: fakes need not half-close
        """Half-close: the peer reads end of stream after everything written so far (default: no-op)."""

    async def linger_close(self, timeout: float, max_bytes: int) -> None:
        """End the stream so that what was written (a Close frame) reaches the peer: half-close, discard.

        The trap: closing a socket that still has unread bytes from the peer makes the kernel send RST
        instead of FIN, and an RST can destroy the peer's unread receive buffer, our Close frame in it.
        So: FIN first, then read and discard until the peer closes too (a client answers our Close and
        closes at once), for at most ``timeout`` seconds and ``max_bytes`` bytes. Call it once
        everything is flushed; then :meth:`aclose`.
        """
        try:
            await self.send_eof()
        except OSError:
            return
        with trio.move_on_after(timeout):
            while max_bytes > 0:
                data = await self.receive_some()
                if not data:
                    break
                max_bytes -= len(data)


class SocketTransport(Transport):
    """A TCP socket: reads through Trio's ``SocketStream``, writes directly on the stdlib socket.

    Both share one file descriptor. Writing directly (``sock.send`` is a non-blocking syscall) is what
    lets a broadcast reach N sockets without N task switches.
    """

    __slots__ = ("_sock", "_stream")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    def try_send(self, data: bytes | memoryview) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    async def send_some(self, data: bytes | memoryview) -> int:
        await trio.lowlevel.wait_writable(self._sock)
        return self.try_send(data)

    async def receive_some(self) -> bytes:
        # Wait first, then one recv: an idle socket (the common case for a game client between
        # messages) costs one epoll wake-up and one syscall, not a failed recv plus a wait plus a recv.
        while True:
            try:
                await trio.lowlevel.wait_readable(self._sock)
            except trio.ClosedResourceError:
                return b""
            try:
                return self._sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def send_eof(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)


class StreamTransport(Transport):
    """Any Trio stream (memory streams in tests). It cannot write without awaiting, so every write
    goes through the writer task; behaviour is otherwise identical."""

    __slots__ = ("_stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    def try_send(self, data: bytes | memoryview) -> int:
        return 0

    async def send_some(self, data: bytes | memoryview) -> int:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise OSError("stream closed") from exc
        return len(data)

    async def receive_some(self) -> bytes:
        try:
            return bytes(await self._stream.receive_some(65536))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def send_eof(self) -> None:
        try:
            if isinstance(self._stream, trio.abc.HalfCloseableStream):
                await self._stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise OSError("stream closed") from exc


class Outbox:
    """All bytes bound for one connection, in order.

    ``push`` never blocks and never awaits: rooms call it mid-broadcast. Order is kept because once
    anything is in the backlog, later pushes queue behind it.
    """

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_closing",
        "_max_bytes",
        "_max_frames",
        "_on_overflow",
        "_transport",
        "_wakeup",
        "broken",
        "bytes_sent",
        "pushes",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        max_frames: int,
        max_bytes: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._backlog: collections.deque[bytes | memoryview] = collections.deque()
        self._backlog_bytes = 0
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._wakeup = trio.Event()
        self._closing = False
        self.broken = False
        self.bytes_sent = 0
        self.pushes = 0

    @property
    def backlog_bytes(self) -> int:
        """Bytes waiting for the writer task."""
        return self._backlog_bytes

    def push(self, data: bytes) -> bool:
        """Queue ``data`` (whole WebSocket frames) for sending; write now if nothing is waiting.

        Returns False when the data was dropped: the connection is closing or broken.
        """
        if self._closing or self.broken:
            return False
        self.pushes += 1
        if not self._backlog:
            self._write_now(data)
            return not self.broken
        self._queue(data)
        if len(self._backlog) > self._max_frames or self._backlog_bytes > self._max_bytes:
            self._on_overflow()
        return True

    def push_final(self, data: bytes) -> None:
        """Queue the last frame (a Close) past the bounds; nothing is accepted after it."""
        if self._closing or self.broken:
            return
        self._closing = True
        self._wakeup.set()  # the writer returns once flushed
        if not self._backlog:
            self._write_now(data)
        else:
            self._queue(data)

    def _write_now(self, data: bytes) -> None:
        """Write directly; whatever the kernel does not take goes to the backlog for the writer."""
        try:
            sent = self._transport.try_send(data)
        except OSError:
            self.broken = True
            self._wakeup.set()
            return
        self.bytes_sent += sent
        if sent < len(data):
            self._queue(memoryview(data)[sent:] if sent else data)

    def finish(self) -> None:
        """Accept nothing more; the writer returns once the backlog is flushed."""
        self._closing = True
        self._wakeup.set()

    def _queue(self, data: bytes | memoryview) -> None:
        self._backlog.append(data)
        self._backlog_bytes += len(data)
        self._wakeup.set()

    @property
    def idle(self) -> bool:
        """Nothing is waiting to be written."""
        return not self._backlog

    async def run_writer(self) -> None:
        """Drain the backlog whenever there is one, coalescing it into as few writes as possible.

        Returns when the outbox is closing and fully flushed, or the transport broke.
        """
        while True:
            if not self._backlog:
                if self._closing or self.broken:
                    return
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            if len(self._backlog) == 1:
                data = self._backlog.popleft()
            else:
                data = b"".join(self._backlog)
                self._backlog.clear()
            try:
                sent = await self._transport.send_some(data)
            except OSError:
                self.broken = True
                self._backlog.clear()
                self._backlog_bytes = 0
                return
            self.bytes_sent += sent
            self._backlog_bytes -= sent
            if sent < len(data):
                self._backlog.appendleft(memoryview(data)[sent:])
