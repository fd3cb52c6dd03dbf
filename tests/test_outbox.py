"""The outbox over a fake transport: frames stay whole and in push order, whatever the socket does.

The fake accepts a random part (0..n bytes) of every write, becomes writable and unwritable at random
moments, and (in "stream" mode) keeps the writer's buffer in flight for a while, like a Trio
stream's ``send_all``. Several tasks push while the writer drains; one may push the final frame at any
point. Each example runs in its own ``trio.run`` on a ``MockClock`` with ``autojump_threshold=0``, so
the interleaving is the one hypothesis drew (pytest-trio makes Trio's scheduler deterministic under
hypothesis) and a shrunk failure replays exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.outbox import _COALESCE, Outbox, Transport, frame_spans, ws_frame

CLOSE = b"\x88\x0d\x0f\xa0slow consumer"  # Close 4000 "slow consumer", as wsproto frames it


class FakeTransport(Transport):
    """Takes a random prefix of each write; writable only when the script says so."""

    def __init__(self, rng: random.Random, stream: bool) -> None:
        self.rng = rng
        self.stream = stream
        self.out = bytearray()
        self.writable = True
        self.in_flight = b""
        self.waited = False
        self._ready = trio.Event()

    def set_writable(self, writable: bool) -> None:
        self.writable = writable
        if writable:
            self._ready.set()
            self._ready = trio.Event()

    def _take(self, data: bytes | memoryview) -> int:
        if not self.writable:
            return 0
        taken = self.rng.randint(0, len(data))
        self.out += data[:taken]
        return taken

    def try_send(self, data: bytes | memoryview) -> int:
        return 0 if self.stream else self._take(data)

    async def wait_writable(self) -> None:
        while not self.writable:
            await self._ready.wait()
        await trio.lowlevel.checkpoint()
        self.waited = True

    async def send_some(self, data: bytes | memoryview) -> int:
        if not self.waited:  # a writer that does not wait first (the interface before the fix) waits here
            await self.wait_writable()
        self.waited = False
        if self.stream:  # the bytes stay in flight for a while, as in a stream's send_all
            self.in_flight = bytes(data)
            await trio.sleep(self.rng.choice((0, 0, 0.001, 0.002)))
            while not self.writable:
                await self._ready.wait()
            self.in_flight = b""
        return self._take(data)

    async def receive_some(self) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def aclose(self) -> None:
        pass


@dataclass
class Script:
    """Everything one example does, drawn by hypothesis."""

    pushers: list[list[tuple[int, list[int]]]]  # per task: (delay in ms, sizes of the frames of one push)
    writability: list[tuple[int, bool]]  # (delay in ms, writable)
    final_at: int | None  # ms after start at which a task pushes the final frame
    stream: bool
    max_frames: int
    max_bytes: int
    seed: int


frame_sizes = st.sampled_from([0, 1, 5, 60, 124, 125, 126, 300, 3000])
pushes = st.lists(st.tuples(st.integers(0, 3), st.lists(frame_sizes, min_size=1, max_size=3)), max_size=12)
scripts = st.builds(
    Script,
    pushers=st.lists(pushes, min_size=1, max_size=3),
    writability=st.lists(st.tuples(st.integers(0, 4), st.booleans()), max_size=12),
    final_at=st.none() | st.integers(0, 30),
    stream=st.booleans(),
    max_frames=st.integers(3, 40),
    max_bytes=st.integers(9500, 40_000),
    seed=st.integers(0, 2**32),
)


@dataclass
class Run:
    transport: FakeTransport
    frames: list[bytes] = field(default_factory=list)  # accepted frames, in push order
    final: bytes | None = None
    overflow_at: int | None = None  # bytes out when the overflow happened
    in_flight_at_overflow: int = 0


async def run_script(script: Script, bounded: bool) -> Run:
    transport = FakeTransport(random.Random(script.seed), script.stream)
    run = Run(transport)
    max_frames, max_bytes = (script.max_frames, script.max_bytes) if bounded else (10**9, 10**12)

    def on_overflow() -> None:
        run.overflow_at = len(transport.out)
        run.in_flight_at_overflow = len(transport.in_flight)
        final(CLOSE)

    outbox = Outbox(transport, max_frames=max_frames, max_bytes=max_bytes, on_overflow=on_overflow)

    def final(data: bytes) -> None:
        if run.final is None:
            run.final = data
        outbox.push_final(data)

    async def pusher(index: int, steps: list[tuple[int, list[int]]]) -> None:
        for number, (delay, sizes) in enumerate(steps):
            await trio.sleep(delay / 1000)
            frames = [ws_frame(f"{index}.{number}.{part}:".encode() + b"x" * size) for part, size in enumerate(sizes)]
            if outbox.push(b"".join(frames)):
                run.frames.extend(frames)
            assert outbox.backlog_bytes <= max_bytes

    async def writability() -> None:
        for delay, writable in script.writability:
            await trio.sleep(delay / 1000)
            transport.set_writable(writable)
        transport.set_writable(True)

    async def finisher() -> None:
        await trio.sleep(script.final_at / 1000)
        final(ws_frame(b"the end"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run_writer)
        async with trio.open_nursery() as actors:
            actors.start_soon(writability)
            for index, steps in enumerate(script.pushers):
                actors.start_soon(pusher, index, steps)
            if script.final_at is not None:
                actors.start_soon(finisher)
        transport.set_writable(True)
        outbox.finish()
    assert not outbox.broken
    return run


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(script=scripts)
def test_bytes_out_are_the_pushed_frames_in_order(script: Script) -> None:
    """Unbounded: the wire carries exactly every accepted push, whole, in push order, then the final."""
    run = trio.run(run_script, script, False, clock=trio.testing.MockClock(autojump_threshold=0))
    expected = b"".join(run.frames) + (run.final or b"")
    assert bytes(run.transport.out) == expected


@PROPERTY
@given(script=scripts)
def test_an_overflow_completes_the_begun_frame_then_sends_the_close(script: Script) -> None:
    """Bounded: the push that overflows is refused, frames never begun are dropped, the frame begun (or
    already handed to the transport) is completed, and the Close comes last; the bounds always hold."""
    run = trio.run(run_script, script, True, clock=trio.testing.MockClock(autojump_threshold=0))
    out = bytes(run.transport.out)
    if run.overflow_at is None:
        assert out == b"".join(run.frames) + (run.final or b"")
        return
    # Frames that had begun (or were in the transport's hands) when the overflow happened are sent whole;
    # the rest are dropped; then the Close.
    committed = run.overflow_at + run.in_flight_at_overflow
    kept, offset = [], 0
    for frame in run.frames:
        if offset >= committed:
            break
        kept.append(frame)
        offset += len(frame)
    assert out == b"".join(kept) + (run.final or b"")


def test_frame_spans_splits_whole_unmasked_frames_only() -> None:
    frames = [ws_frame(b""), ws_frame(b"a" * 125), ws_frame(b"b" * 300), ws_frame(b"c" * 70_000)]
    spans = frame_spans(b"".join(frames))
    assert spans is not None and [bytes(span) for span in spans] == frames
    assert frame_spans(b"HTTP/1.1 101 Switching Protocols\r\n\r\n") is None  # not frames: one unit
    assert frame_spans(frames[2][:-1]) is None  # truncated
    assert frame_spans(b"\x82\x85\x00\x00\x00\x00hello") is None  # masked: not a server frame


class WholeWrites(FakeTransport):
    """Takes every write whole when writable, and records its size."""

    def __init__(self) -> None:
        super().__init__(random.Random(0), stream=False)
        self.writes: list[int] = []

    def _take(self, data: bytes | memoryview) -> int:
        if not self.writable:
            return 0
        self.writes.append(len(data))
        self.out += data
        return len(data)


async def test_the_writer_coalesces_what_queued_while_the_socket_was_full() -> None:
    """Frames queued while the socket pushed back leave together: one write of up to about 256 KiB."""
    transport = WholeWrites()
    outbox = Outbox(transport, max_frames=10_000, max_bytes=10**9, on_overflow=lambda: None)
    transport.set_writable(False)
    frames = [ws_frame(b"%d" % i) for i in range(10)] + [ws_frame(bytes(60_000)) for _ in range(8)]
    for frame in frames:
        assert outbox.push(frame)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run_writer)
        await trio.testing.wait_all_tasks_blocked()
        transport.set_writable(True)
        outbox.finish()
    assert bytes(transport.out) == b"".join(frames)
    first = transport.writes[0]
    assert first >= _COALESCE > first - len(frames[-1])  # joined up to the cap, then stopped
    assert transport.writes == [first, len(b"".join(frames)) - first]


def test_an_http_response_is_never_taken_for_frames() -> None:
    """ASCII never has the mask bit, so the bytes of an HTTP response chain as "frames" whenever their
    length bytes happen to land on its end (about one length in eighty): a queued 101 split like
    that would lose its tail to an overflow. Server frames have FIN set; HTTP starts with ``H``."""
    for pad in range(400):
        response = b"HTTP/1.1 101 Switching Protocols\r\nx-pad: " + b"a" * pad + b"\r\n\r\n"
        assert frame_spans(response) is None, pad


def test_a_frame_head_is_the_head_ws_frame_puts_before_its_payload() -> None:
    """``ws_head`` lets a frame be joined from parts (the chat event): the bytes ``ws_frame`` makes."""
    from roost.outbox import ws_head

    for size in (0, 1, 125, 126, 127, 65535, 65536, 70_000):
        payload = bytes(size)
        assert ws_head(size) + payload == ws_frame(payload)
