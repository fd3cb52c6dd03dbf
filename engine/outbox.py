"""Outgoing bytes: WebSocket framing done once, direct non-blocking writes, a writer only for backlog.

Measured on this machine (reference/stack-limits.md §A.7–A.8): queueing every delivery to a per-member
writer task costs 2.5× a direct non-blocking ``send()``; trio-websocket's ``send_message`` costs 4×.
So :meth:`Outbox.push` writes straight to the socket from whichever task calls it (a room actor in the
middle of a broadcast) when nothing is unsent, and only what the kernel did not take goes to a bounded
backlog that the connection's writer task drains, coalescing queued frames into few ``send`` calls.
Frames are atomic on the wire: no byte is written directly while an earlier byte is unsent.

A backlog over its bound marks a slow consumer: the push that overflows is refused, the frames queued
but never begun are dropped, and the Close (4000, resumable) goes right behind the frame being sent,
instead of the connection stalling its rooms or the Close waiting behind a megabyte the peer is not
reading.
"""

from __future__ import annotations

import abc
import collections
import itertools
import socket
from collections.abc import Awaitable, Callable

import trio

__all__ = ["Outbox", "SocketTransport", "StreamTransport", "Transport", "frame_spans", "ws_frame"]


_SHORT_HEADS = tuple(bytes((0x82, size)) for size in range(126))
"""The two-byte heads of payloads under 126 bytes (every ``ok``): indexed, not built per frame."""


def ws_head(size: int) -> bytes:
    """The head of an unmasked binary frame (FIN set) of ``size`` payload bytes: ``ws_frame(p)`` is
    ``ws_head(len(p)) + p``, for a frame joined from parts in one copy."""
    if size < 126:
        return _SHORT_HEADS[size]
    if size < 65536:
        return b"\x82\x7e" + size.to_bytes(2, "big")
    return b"\x82\x7f" + size.to_bytes(8, "big")


def ws_frame(payload: bytes) -> bytes:
    """One unmasked binary WebSocket frame (FIN set) carrying ``payload``: the server-side framing.

    Server frames are never masked (RFC 6455 §5.1), so the same bytes serve every recipient.
    """
    size = len(payload)
    if size < 126:
        return _SHORT_HEADS[size] + payload
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

    def sender(self) -> Callable[[bytes | memoryview], int]:
        """The callable :meth:`Outbox.push` writes with when nothing is unsent: :meth:`try_send`
        itself, or anything that behaves like it except that it may raise ``BlockingIOError`` where
        ``try_send`` returns 0 (a non-blocking socket's own ``send``).

        Why: the push is per recipient of every broadcast (a 200-member room's message is 200 of
        them), and a Python frame around a C call is ~0.6 k instructions of the ~4.6 k each push cost.
        """
        return self.try_send

    @abc.abstractmethod
    async def wait_writable(self) -> None:
        """Return once a write can make progress (or would fail: the next write raises then)."""

    @abc.abstractmethod
    async def send_some(self, data: bytes | memoryview) -> int:
        """Write a prefix of ``data`` now; return its length. Called by the writer after
        :meth:`wait_writable`.

        A socket writes without awaiting (no checkpoint: nobody else runs between the writer's choice
        of bytes and the write). A stream may await here; the bytes are then in flight, and the outbox
        treats them as begun.

        Raises:
            OSError: the connection is broken.
        """

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
            try:
                while max_bytes > 0:
                    data = await self.receive_some()
                    if not data:
                        break
                    max_bytes -= len(data)
            except trio.BusyResourceError:
                pass  # the connection's reader is still reading: it drains, the close wakes it


class SocketTransport(Transport):
    """A TCP socket: reads through Trio's ``SocketStream``, writes directly on the stdlib socket.

    Both share one file descriptor. Writing directly (``sock.send`` is a non-blocking syscall) is what
    lets a broadcast reach N sockets without N task switches.
    """

    LINGER = 1.0
    """Seconds :meth:`aclose` keeps reading after its FIN, waiting for the peer's end of stream."""

    __slots__ = ("_closed", "_fd", "_lingered", "_sock", "_stream")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:  # a Unix socket (a socketpair in tests) has no Nagle to turn off
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._fd = sock.fileno()
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._closed = False
        self._lingered = False

    def try_send(self, data: bytes | memoryview) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def sender(self) -> Callable[[bytes | memoryview], int]:
        return self._sock.send  # BlockingIOError when the kernel's buffer is full: the outbox reads it as 0

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def send_some(self, data: bytes | memoryview) -> int:
        return self.try_send(data)  # no await: nothing runs between the writer's choice and the write

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
        """A lingering close (:meth:`Transport.linger_close`, once), then close the descriptor.

        The trap: ``close()`` on a TCP socket with unread received bytes makes the kernel answer with
        RST and discard its own send queue. A slow reader's Close frame waits exactly there (its
        receive window is full), and a peer that sent anything meanwhile (a ping, its own Close) would
        lose it and see 1006. So every close lingers, for at most :attr:`LINGER` seconds, unless the
        connection already did (after its closing handshake).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self.linger_close(self.LINGER, _LINGER_BYTES)
        finally:
            await self._stream.aclose()  # closes the descriptor first, even when cancelled

    async def linger_close(self, timeout: float, max_bytes: int) -> None:
        if self._lingered:
            return
        self._lingered = True
        await super().linger_close(timeout, max_bytes)

    async def send_eof(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def fileno(self) -> int:
        """The socket's descriptor (the reader registers it in its epoll)."""
        return self._fd

    def recv_now(self, size: int) -> bytes | None:
        """One non-blocking ``recv``: the bytes, ``b""`` at end of stream or on an error, None when
        there was nothing after all (the reader only calls it for a socket epoll says is readable)."""
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            return None
        except OSError:
            return b""


class StreamTransport(Transport):
    """Any Trio stream (memory streams in tests). It cannot write without awaiting, so every write
    goes through the writer task; behaviour is otherwise identical."""

    __slots__ = ("_stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    def try_send(self, data: bytes | memoryview) -> int:
        return 0

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

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


_LINGER_BYTES = 1 << 20
"""At most this much is read and discarded while lingering (a peer flooding after our Close)."""

_CLOSE_ROOM = 2 + 125
"""Bytes kept free in the bounds for the final Close frame (the largest control frame)."""

_COALESCE = 256 * 1024
"""At most this much backlog is joined for one write (at least one frame): a writer that drains a big
backlog through a slow socket must not copy all of it again for every few kilobytes the kernel takes."""


def frame_spans(data: bytes | memoryview) -> list[memoryview] | None:
    """Split ``data`` into its WebSocket frames (views, no copy); None unless it is exactly a run of
    unmasked frames with FIN set and no RSV bit, as the server sends them (an HTTP response, say, is
    one unit).

    The trap: ASCII never has the mask bit, so without the FIN check an HTTP response whose length
    bytes happen to chain up to its end (about one length in eighty) was split into "frames"."""
    view = memoryview(data)
    size, offset, spans = len(view), 0, []
    while offset < size:
        if offset + 2 > size or view[offset] & 0xF0 != 0x80 or view[offset + 1] & 0x80:
            return None
        length, start = view[offset + 1] & 0x7F, offset + 2
        if length == 126:
            length, start = int.from_bytes(view[start : start + 2], "big"), start + 2
        elif length == 127:
            length, start = int.from_bytes(view[start : start + 8], "big"), start + 8
        end = start + length
        if end > size:
            return None
        spans.append(view[offset:end])
        offset = end
    return spans


class Outbox:
    """All bytes bound for one connection, in order, never one frame inside another.

    ``push`` never blocks and never awaits: rooms call it mid-broadcast. It writes directly only when
    nothing at all is unsent; otherwise it queues behind the backlog. The trap this class exists to
    avoid: a writer that takes bytes out of the backlog and then awaits the socket makes the backlog
    look empty while those bytes are still unsent, and the next direct write lands in the middle of
    them (a slow reader then parses a frame header inside another frame's payload, which a member
    who relays opaque bodies can craft). So bytes leave the backlog only once the transport has taken
    them, and the writer chooses what to write only after the socket is writable.

    The backlog holds one entry per WebSocket frame (a push may carry several; they are split when
    queued, which only happens on the slow path), plus how much of the head is already sent. That is
    what lets an overflow drop exactly the frames never begun.

    Two ways to run the writer: :meth:`run_writer` as a task for the connection's whole life (the
    task-per-connection driver), or, with ``spawn``, a writer task started only when a backlog forms
    and ended when it is written (the reader-driven connections: an idle connection has no task).
    """

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_closing",
        "_drained",
        "_head_sent",
        "_in_flight",
        "_max_bytes",
        "_max_frames",
        "_on_overflow",
        "_overflowed",
        "_send",
        "_spawn",
        "_transport",
        "_wakeup",
        "_writing",
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
        spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
    ) -> None:
        self._transport = transport
        self._send = transport.sender()
        self._backlog: collections.deque[bytes | memoryview] = collections.deque()
        self._backlog_bytes = 0
        self._head_sent = 0
        self._in_flight = 0
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._overflowed = False
        self._spawn = spawn
        """Starts a task (``nursery.start_soon``): then a writer exists only while there is a backlog."""
        self._writing = False
        self._drained: trio.Event | None = None
        self._wakeup: trio.Event | None = None if spawn is not None else trio.Event()
        self._closing = False
        self.broken = False
        self.bytes_sent = 0
        self.pushes = 0

    @property
    def backlog_bytes(self) -> int:
        """Bytes not yet taken by the transport."""
        return self._backlog_bytes

    @property
    def idle(self) -> bool:
        """Nothing is waiting to be written."""
        return not self._backlog

    def push(self, data: bytes) -> bool:
        """Send ``data`` (whole WebSocket frames): now if nothing is unsent, else behind the backlog.

        Returns False when the data was dropped: the connection is closing or broken, or this push
        would take the backlog over a bound. Then ``on_overflow`` is called (once): the frames
        queued but never begun are dropped, and what remains is the frame in progress, so the Close
        the callback is expected to send with :meth:`push_final` comes right after it.
        """
        if self._closing or self._overflowed or self.broken:
            return False
        if not data:
            return True
        self.pushes += 1
        if not self._backlog:  # _write_now, inline: the common case (every push of a live member)
            try:
                sent = self._send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._break()
                return False
            self.bytes_sent += sent
            if sent != len(data):
                self._keep_unsent(data, sent)
            return not self.broken
        spans = frame_spans(data) or [memoryview(data)]
        if (
            len(self._backlog) + len(spans) + 1 > self._max_frames
            or self._backlog_bytes + len(data) + _CLOSE_ROOM > self._max_bytes
        ):
            self._overflow()
            return False
        self._backlog.extend(spans)
        self._backlog_bytes += len(data)
        self._signal()
        return True

    def push_final(self, data: bytes) -> None:
        """Queue the last bytes (a Close frame, an HTTP refusal): nothing is accepted after them.

        The bounds keep room for them, so they are never refused for size.
        """
        if self._closing or self.broken:
            return
        self._closing = True
        self._signal()  # the writer returns once flushed
        if not self._backlog:
            self._write_now(data)
        else:
            self._backlog.append(data)
            self._backlog_bytes += len(data)

    def finish(self) -> None:
        """Accept nothing more; the writer returns once the backlog is flushed."""
        self._closing = True
        self._signal()

    def _signal(self) -> None:
        """The backlog or the state changed: wake the writer, or start one if there is none."""
        if self._wakeup is not None:
            self._wakeup.set()
        elif self._backlog and not self._writing and not self.broken:
            assert self._spawn is not None
            self._writing = True
            self._spawn(self._drain)

    def _write_now(self, data: bytes) -> None:
        """Write directly; what the kernel does not take goes to the backlog, split into frames."""
        try:
            sent = self._send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._break()
            return
        self.bytes_sent += sent
        if sent != len(data):
            self._keep_unsent(data, sent)

    def _keep_unsent(self, data: bytes, sent: int) -> None:
        """The kernel took ``sent`` bytes of ``data``: the rest goes to the backlog, split into frames."""
        spans = frame_spans(data) or [memoryview(data)]
        skipped = 0
        while skipped + len(spans[0]) <= sent:  # frames the kernel took whole
            skipped += len(spans.pop(0))
        self._backlog.extend(spans)
        self._head_sent = sent - skipped
        self._backlog_bytes += len(data) - sent
        self._signal()

    def _overflow(self) -> None:
        """Drop every queued frame never begun; keep the head if begun and what is in flight."""
        self._overflowed = True
        keep = max(self._in_flight, 1 if self._head_sent else 0)
        backlog = self._backlog
        while len(backlog) > keep:
            self._backlog_bytes -= len(backlog.pop())
        self._on_overflow()

    def _break(self) -> None:
        self.broken = True
        self._backlog.clear()
        self._backlog_bytes = 0
        self._head_sent = 0
        self._signal()

    def _take(self) -> bytes | memoryview:
        """The bytes for the next write: the head's unsent rest, joined with the frames behind it."""
        backlog = self._backlog
        head = backlog[0]
        if self._head_sent:
            head = memoryview(head)[self._head_sent :]
        if len(backlog) == 1 or len(head) >= _COALESCE:
            self._in_flight = 1
            return head
        parts, size = [head], len(head)
        for frame in itertools.islice(backlog, 1, None):
            if size >= _COALESCE:
                break
            parts.append(frame)
            size += len(frame)
        self._in_flight = len(parts)
        return b"".join(parts)

    def _sent(self, sent: int) -> None:
        """Account for ``sent`` bytes taken by the transport: whole frames leave the backlog."""
        self.bytes_sent += sent
        self._backlog_bytes -= sent
        offset, backlog = self._head_sent + sent, self._backlog
        while backlog and offset >= len(backlog[0]):
            offset -= len(backlog.popleft())
        self._head_sent = offset

    async def run_writer(self) -> None:
        """Drain the backlog whenever there is one, coalescing it into as few writes as possible.

        It waits for writability *before* choosing the bytes, and they stay in the backlog until the
        transport took them: while it waits, pushes see a backlog and queue behind it.

        Returns when the outbox is closing and fully flushed, or the transport broke.
        """
        assert self._wakeup is not None, "an outbox with spawn starts its own writers"
        while True:
            if not self._backlog:
                if self._closing or self.broken:
                    return
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            if not await self._write_some():
                return

    async def _write_some(self) -> bool:
        """One write of the backlog once the transport is writable; False once it broke."""
        transport = self._transport
        try:
            await transport.wait_writable()
            if not self._backlog:  # an overflow dropped everything meanwhile
                return True
            try:
                sent = await transport.send_some(self._take())
            finally:
                self._in_flight = 0
        except (OSError, trio.ClosedResourceError):  # broken, or closed under the waiting writer
            self._break()
            return False
        self._sent(sent)
        return True

    async def _drain(self) -> None:
        """The on-demand writer (``spawn``): write until the backlog is empty, then end.

        The trap: it must end in the same step as it sees the backlog empty (no checkpoint between),
        else a push in between would find ``_writing`` set and nobody left to write its backlog."""
        try:
            while self._backlog and not self.broken:
                if not await self._write_some():
                    break
        finally:
            self._writing = False
            if self._drained is not None:
                self._drained.set()
                self._drained = None

    async def flush(self) -> None:
        """Return once the backlog is written or the transport broke (an outbox with ``spawn``):
        waits for the writer there is, or writes in this task if there is none."""
        while self._backlog and not self.broken:
            if self._writing:
                if self._drained is None:
                    self._drained = trio.Event()
                await self._drained.wait()
            else:
                self._writing = True
                await self._drain()
