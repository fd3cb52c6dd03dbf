"""Chat fan-out benchmark: server CPU per delivery and latency, engine against a raw encode-once relay.

``python -m roost.bench fanout --rooms R --members P --rate M --seconds D`` starts ``roost serve --dev`` (or
takes ``--url`` and ``--dev-key``), connects R x P real WebSocket clients, puts the P members of room r
in the room with code ``bench-<r>``, and has **every member send M ``chat_send`` per second**, so a
room receives P x M messages/s and delivers P x M x P ``chat`` events/s (the sender gets its own): the
offered load is R x P x M x P deliveries/s, as in reference/stack-limits.md §A.8 ("1 room x 200
clients x 1 msg/s" = 40 k deliveries/s; "10 x 10 clients x 10 msg/s" = 10 k deliveries/s). Then it
does the same against ``roost.bench.relay`` (the Trio + wsproto ceiling: one frame encoded once, a direct
non-blocking ``send()`` per member) and against ``roost.bench.picows_relay`` (picows on uvloop, plain
msgpack: the floor of a Python stack, reference/inbound-path.md §4), one run after the other, and
prints a table and one JSON line: every figure is a ratio against both in the same run (``cpu_ratio``
against the relay, ``cpu_ratio_picows`` against picows). picows and uvloop are the ``bench`` extra;
without them the picows column is n/a and ``picows_note`` says why.

Method:

- The server runs pinned to CPU 0 and this process (the load generator) to CPU 1 (``--server-cpu``,
  ``--loadgen-cpu``); on a machine with fewer CPUs nothing is pinned and ``pinned`` says so.
- The load generator is one thread over non-blocking sockets and ``selectors``: a hand-written HTTP
  upgrade; client frames are masked with the all-zero masking key, which RFC 6455 allows (the key
  must be unpredictable only to protect intermediaries, irrelevant on loopback) and which makes
  masking the identity, so a frame is a 6-byte header plus the payload as is; server frames are only
  split, and only ``chat`` and ``error`` frames are unpacked during the run (the frame type is read
  from the leading ``t`` key the server writes first, falling back to a full unpack otherwise).
- Sends follow one absolute schedule, round-robin over members ordered room by room in turn, evenly
  spaced (send ``j`` is due at ``t0 + j / (R x P x M)``): no bursts, no drift. Each ``chat_send``
  carries a unique ``cid`` and its send time (``time.perf_counter_ns``) in its text; a member
  receiving a ``chat`` is a delivery, and its latency is receive time (taken once per ``recv``)
  minus that send time. Latency therefore includes the load generator's own queueing across the
  room's sockets.
- The first ``--warmup`` seconds are excluded. ``offered`` counts the deliveries due for messages
  sent inside the measured window (messages x members in the room), ``received`` those that arrived
  (after a bounded drain); p50/p99 are over them. ``deliveries_per_s`` and
  ``server_cpu_us_per_delivery`` use the chat events *received* during the window itself, over the
  server's utime + stime (``/proc/<pid>/stat``, clock ticks) across the same window, so both hold
  whether or not the server keeps up. ``loadgen_cpu_util`` is this process's CPU time
  (``time.process_time``) over the window: well under 1.0 means the load generator was not the
  bottleneck.
- ``errors`` counts everything abnormal seen from the first connect to the end: ``error`` frames,
  Close frames, connections lost, setup failures and gaps in a room's chat numbers (``error_kinds``
  breaks them down; ``server_stderr`` has the engine's last log lines when there were any).
- Everything is bounded: setup by ``--setup-timeout``, the run by warm-up + seconds + ``--drain``,
  the servers by SIGTERM then SIGKILL. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import errno
import hashlib
import importlib.util
import json
import math
import os
import secrets
import platform
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import msgpack

from roost.protocol.frames import PROTOCOL_VERSION

__all__ = ["LoadGenerator", "RunResult", "ServerProcess", "add_arguments", "client_frame", "run", "run_load"]

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: the working directory of the server subprocesses."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEARTBEAT_MS = 30_000
MAX_CONNECTING = 64
"""Handshakes in flight at once (the engine refuses more than 256 pending by default)."""
RECV_SIZE = 1 << 18
SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 5.0
METRICS = (
    "offered",
    "received",
    "deliveries_per_s",
    "p50_ms",
    "p99_ms",
    "server_cpu_us_per_delivery",
    "server_cpu_util",
    "loadgen_cpu_util",
    "errors",
)
"""Keys present in both the engine's and the baseline's figures (the table shows these)."""

_WS_KEY = base64.b64encode(b"roost-bench-key!").decode("ascii")
_WS_ACCEPT = base64.b64encode(
    hashlib.sha1((_WS_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode("ascii")).digest()
).decode("ascii")
_ZERO_MASK = b"\x00\x00\x00\x00"
_FILLER = "fan-out bench message, about sixty-four bytes"
_T_PREFIX = b"\xa1t"  # msgpack fixstr "t": the key the server writes first in every frame
_CHAT_HEAD = b"\xa1t\xa4chat"  # "t": "chat" right after the map header


# -- server subprocesses ----------------------------------------------------------------------------


class ServerError(RuntimeError):
    """A server subprocess did not start (its stderr tail is in the message)."""


def _available_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return set()


class ServerProcess:
    """A server subprocess pinned to one CPU, whose first stdout lines announce what it serves."""

    def __init__(self, argv: list[str], *, cpu: int | None, workdir: Path, name: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self._stderr_path = workdir / f"{name}.stderr"
        self._stderr: IO[bytes] = open(self._stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        taskset = shutil.which("taskset")
        if cpu is not None and taskset:
            argv = [taskset, "-c", str(cpu), *argv]  # taskset execs argv: same pid, pinned from the start
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, bufsize=0, start_new_session=True, env=env)
        self.pid = self.proc.pid
        if cpu is not None and not taskset:
            os.sched_setaffinity(self.pid, {cpu})
        self.lines: dict[str, str] = {}
        self.stop_s: float | None = None
        """How long ``stop`` took (SIGTERM to exit)."""

    def read_announcement(self, keys: Sequence[str], timeout: float) -> dict[str, str]:
        """Read ``KEY=value`` lines from stdout until every key in ``keys`` was seen (bounded)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        pending = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not all(key in self.lines for key in keys):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerError(f"{self.name} announced nothing within {timeout:g} s{self._tail()}")
                if not sel.select(min(remaining, 0.5)):
                    if self.proc.poll() is not None:
                        raise ServerError(f"{self.name} exited with status {self.proc.returncode}{self._tail()}")
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=SERVER_STOP_TIMEOUT)
                    raise ServerError(f"{self.name} exited with status {self.proc.returncode}{self._tail()}")
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    key, sep, value = line.decode("utf-8", "replace").strip().partition("=")
                    if sep:
                        self.lines[key] = value
        return self.lines

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads) so far."""
        return proc_cpu_seconds(self.pid)

    def affinity(self) -> list[int]:
        try:
            return sorted(os.sched_getaffinity(self.pid))
        except OSError:
            return []

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a bound. Returns the exit status (None if it could not be reaped)."""
        started = time.monotonic()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=SERVER_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(timeout=SERVER_STOP_TIMEOUT)
            return self.proc.returncode
        finally:
            self.stop_s = time.monotonic() - started
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()

    def stderr_tail(self, lines: int = 20) -> list[str]:
        try:
            text = self._stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def _tail(self) -> str:
        tail = self.stderr_tail()
        return (": " + " | ".join(tail)) if tail else ""


def machine_busy_seconds() -> float:
    """CPU seconds spent busy (anything but idle and iowait) by all CPUs so far, from ``/proc/stat``."""
    return _machine_ticks()[0]


def machine_steal_seconds() -> float:
    """CPU seconds the hypervisor ran something else while this machine's CPUs wanted to run
    (``steal`` in ``/proc/stat``): part of ``other_cpu_util``, named apart because no process here
    causes it and it slows the server without showing in its CPU time (measured 0.5 CPU of 2 on a
    busy host: p99s tripled while CPU per delivery barely moved)."""
    return _machine_ticks()[1]


def _machine_ticks() -> tuple[float, float]:
    with open("/proc/stat", "rb") as handle:
        fields = handle.readline().split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / CLK_TCK, ticks[7] / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` from ``/proc/<pid>/stat`` (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2:].split()  # fields[0] is field 3 (state): utime is 14, stime 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its live descendants (``roost serve --workers``: the supervisor
    and its workers). A worker that exited during the window takes its CPU time with it: the figure
    holds for runs where none does (``errors`` says when the load saw one go)."""
    total = proc_cpu_seconds(pid)
    # By parent pid over /proc, not /proc/PID/task/TID/children: that lists the children of one thread,
    # and trio forks from a worker thread (open_process runs Popen in to_thread).
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                data = Path(f"/proc/{entry}/stat").read_bytes()
                parents.setdefault(int(data[data.rindex(b")") + 2:].split()[1]), []).append(int(entry))
    stack = list(parents.get(pid, ()))
    while stack:
        child = stack.pop()
        with contextlib.suppress(OSError):
            total += proc_cpu_seconds(child)
        stack.extend(parents.get(child, ()))
    return total


# -- load generator ----------------------------------------------------------------------------------


def client_frame(payload: bytes) -> bytes:
    """A masked binary client frame with the all-zero masking key: masking is the identity."""
    size = len(payload)
    if size < 126:
        return bytes((0x82, 0x80 | size)) + _ZERO_MASK + payload
    if size < 65536:
        return bytes((0x82, 0x80 | 126)) + size.to_bytes(2, "big") + _ZERO_MASK + payload
    return bytes((0x82, 0x80 | 127)) + size.to_bytes(8, "big") + _ZERO_MASK + payload


def _close_frame(code: int) -> bytes:
    payload = code.to_bytes(2, "big")
    return bytes((0x88, 0x80 | len(payload))) + _ZERO_MASK + payload


# member states
_CONNECTING, _UPGRADING, _HELLO, _JOINING, _JOINED, _DEAD = range(6)


class _Member:
    __slots__ = ("address", "fragments", "index", "k", "last_n", "rbuf", "room", "room_id", "sock", "state", "token",
                 "wbuf")

    def __init__(self, index: int, room: int, token: str) -> None:
        self.address: tuple[str, int] | None = None
        """Where a ``moved`` answer sent this member (None: the URL the run was given)."""
        self.index = index
        self.room = room
        self.token = token
        self.sock: socket.socket | None = None
        self.state = _CONNECTING
        self.rbuf = b""
        self.wbuf = b""
        self.fragments: bytes | None = None
        self.room_id = ""
        self.k = 0
        self.last_n = 0


@dataclasses.dataclass
class RunResult:
    """What one run measured (``figures()`` is its JSON form)."""

    offered: int = 0
    received: int = 0
    window_deliveries: int = 0
    window_s: float = 0.0
    latencies_ns: list[int] = dataclasses.field(default_factory=list)
    server_cpu_s: float | None = None
    loadgen_cpu_s: float = 0.0
    loadgen_user_s: float = 0.0
    loadgen_sys_s: float = 0.0
    machine_busy_s: float = 0.0
    machine_steal_s: float = 0.0
    sent: int = 0
    acks: int = 0
    send_lags_ns: list[int] = dataclasses.field(default_factory=list)
    error_kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    error_samples: list[str] = dataclasses.field(default_factory=list)
    joined: int = 0
    setup_s: float = 0.0
    moves: int = 0
    """``moved`` answers followed during setup (a cluster: members go to their room's process)."""

    def error(self, kind: str, detail: str = "") -> None:
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{kind}: {detail}" if detail else kind)

    def figures(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ns)
        window = self.window_s
        per_delivery = None
        if self.server_cpu_s is not None and self.window_deliveries:
            per_delivery = round(self.server_cpu_s * 1e6 / self.window_deliveries, 2)
        server_util = round(self.server_cpu_s / window, 3) if self.server_cpu_s is not None and window else None
        return {
            "offered": self.offered,
            "received": self.received,
            "deliveries_per_s": round(self.window_deliveries / window, 1) if window else 0.0,
            "p50_ms": _pct_ms(lat, 0.50),
            "p99_ms": _pct_ms(lat, 0.99),
            "server_cpu_us_per_delivery": per_delivery,
            "server_cpu_util": server_util,
            "loadgen_cpu_util": round(self.loadgen_cpu_s / window, 3) if window else None,
            "errors": sum(self.error_kinds.values()),
            "p90_ms": _pct_ms(lat, 0.90),
            "max_ms": _pct_ms(lat, 1.0),
            "lost": self.offered - self.received,
            "messages_sent": self.sent,
            "acks": self.acks,
            "send_lag_p99_ms": _pct_ms(sorted(self.send_lags_ns), 0.99),
            "loadgen_user_s": round(self.loadgen_user_s, 2),
            "loadgen_sys_s": round(self.loadgen_sys_s, 2),
            "other_cpu_util": self._other_util(),
            "steal_cpu_util": round(self.machine_steal_s / window, 3) if window else None,
            "window_s": round(self.window_s, 3),
            "window_deliveries": self.window_deliveries,
            "members_joined": self.joined,
            "setup_s": round(self.setup_s, 2),
            "moves": self.moves,
            "error_kinds": dict(sorted(self.error_kinds.items())),
            "error_samples": self.error_samples,
        }

    def _other_util(self) -> float | None:
        """CPU used during the window by everything but the server and this process (noise on the machine)."""
        if not self.window_s or self.server_cpu_s is None:
            return None
        return round(max(0.0, self.machine_busy_s - self.server_cpu_s - self.loadgen_cpu_s) / self.window_s, 3)


def _pct_ms(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    index = min(len(sorted_ns) - 1, max(0, math.ceil(q * len(sorted_ns)) - 1))
    return round(sorted_ns[index] / 1e6, 3)


class LoadGenerator:
    """R x P simulated members over plain non-blocking sockets and one selector, in this thread."""

    def __init__(self, url: str, tokens: Sequence[str], *, rooms: int, members: int) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise ValueError(f"need a ws:// URL, not {url!r}")
        self.address = (parts.hostname, parts.port or 80)
        self.request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {_WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii")
        self.rooms = rooms
        self.members_per_room = members
        # member i is in room i % R: consecutive sends of the round-robin schedule go to different rooms
        self.members = [_Member(i, i % rooms, tokens[i]) for i in range(rooms * members)]
        self.room_size = [0] * rooms
        self.sel = selectors.DefaultSelector()
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.result = RunResult()
        # measurement window, in perf_counter_ns (sends inside it are measured)
        self.w_start = math.inf
        self.w_end = math.inf
        self.counting = 0  # 1 while the CPU window is open: chat events received count as window deliveries
        self.heartbeat_ms = HEARTBEAT_MS
        """``hello.hb``: the engine expires a connection silent for 2.5 x this (``bench memory`` raises it)."""
        self.shutting_down = False

    # -- sockets ----------------------------------------------------------------------------------

    def _connect(self, m: _Member) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        m.sock = sock
        code = sock.connect_ex(m.address or self.address)
        if code not in (0, errno.EINPROGRESS):
            self._lose(m, "connect", os.strerror(code))
            return
        m.state = _CONNECTING
        self.sel.register(sock, selectors.EVENT_WRITE, m)

    def _lose(self, m: _Member, kind: str, detail: str = "", *, count: bool = True) -> None:
        if m.state == _DEAD:
            return
        if count and not self.shutting_down:
            self.result.error(kind, f"member {m.index} (room {m.room}): {detail}" if detail else f"member {m.index}")
        if m.state == _JOINED:
            self.room_size[m.room] -= 1
        m.state = _DEAD
        if m.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(m.sock)
            m.sock.close()

    def _write(self, m: _Member, data: bytes) -> None:
        sock = m.sock
        if sock is None or m.state == _DEAD:
            return
        if m.wbuf:
            m.wbuf += data
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lose(m, "send_failed", str(exc))
            return
        if sent < len(data):
            m.wbuf = data[sent:]
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, m)

    def _on_writable(self, m: _Member) -> None:
        sock = m.sock
        assert sock is not None
        if m.state == _CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._lose(m, "connect", os.strerror(code))
                return
            m.state = _UPGRADING
            self.sel.modify(sock, selectors.EVENT_READ, m)
            self._write(m, self.request)
            return
        try:
            sent = sock.send(m.wbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(m, "send_failed", str(exc))
            return
        m.wbuf = m.wbuf[sent:]
        if not m.wbuf:
            self.sel.modify(sock, selectors.EVENT_READ, m)

    def _on_readable(self, m: _Member) -> None:
        sock = m.sock
        assert sock is not None
        try:
            # into one reused buffer: ``recv(256 KiB)`` would malloc (mmap) that much on every call
            size = sock.recv_into(self.rbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(m, "connection_reset", str(exc))
            return
        if not size:
            self._lose(m, "connection_closed", "EOF without a Close frame")
            return
        now = time.perf_counter_ns()
        if m.rbuf or m.state != _JOINED or m.fragments is not None:
            self._on_bytes(m, m.rbuf + self.rview[:size].tobytes(), now)
            return
        # Fast path (the run): whole binary frames straight out of the shared buffer, chat events
        # unpacked from a memoryview without copying; anything else goes the general way.
        buf, view = self.rbuf, self.rview
        pos = 0
        while size - pos >= 4 and buf[pos] == 0x82:
            length = buf[pos + 1]
            if length < 126:
                start = pos + 2
            elif length == 126:
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                break
            stop = start + length
            if stop > size:
                break
            if buf.startswith(_CHAT_HEAD, start + 1) and 0x80 <= buf[start] <= 0x8F:
                self._on_chat(m, view[start:stop], now)
            else:
                self._on_frame(m, view[start:stop].tobytes(), now)
                if m.state == _DEAD:
                    return
            pos = stop
        if pos < size:
            self._on_bytes(m, view[pos:size].tobytes(), now)

    def _on_bytes(self, m: _Member, buf: bytes, now: int) -> None:
        """The general path: HTTP response head, partial, large, control and fragmented frames."""
        if m.state == _UPGRADING:
            response, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                if len(buf) > 16384:
                    self._lose(m, "upgrade_failed", "oversized response head")
                else:
                    m.rbuf = buf
                return
            status = response.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" " or _WS_ACCEPT.encode("ascii") not in response:
                self._lose(m, "upgrade_failed", status.decode("latin-1"))
                return
            m.state = _HELLO
            self._write(m, client_frame(msgpack.packb(
                {"t": "hello", "v": PROTOCOL_VERSION, "token": m.token, "hb": self.heartbeat_ms})))
            buf = rest
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            size = b1 & 0x7F
            head = 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if b1 & 0x80:
                self._lose(m, "protocol_violation", "masked server frame")
                return
            stop = pos + head + size
            if stop > end:
                break
            payload = buf[pos + head:stop]
            pos = stop
            if b0 == 0x82 and m.fragments is None:
                self._on_frame(m, payload, now)
            else:
                self._on_other_frame(m, b0, payload, now)
            if m.state == _DEAD:
                return
        m.rbuf = buf[pos:] if pos < end else b""

    def _on_other_frame(self, m: _Member, b0: int, payload: bytes, now: int) -> None:
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            reason = payload[2:].decode("utf-8", "replace")
            if not self.shutting_down:
                self.result.error(f"close_{code}", f"member {m.index} (room {m.room}): {reason}")
            self._write(m, _close_frame(code if code not in (1005, 1006) else 1000))
            self._lose(m, "closed", count=False)  # counted above as close_<code>
            return
        if opcode == 0x9:  # ping: pong with the same payload
            self._write(m, bytes((0x8A, 0x80 | len(payload))) + _ZERO_MASK + payload)
            return
        if opcode == 0xA:
            return
        if opcode in (0x1, 0x2) and m.fragments is None:
            if opcode == 0x1:
                self.result.error("text_frame", f"member {m.index}")
            m.fragments = payload
        elif opcode == 0x0 and m.fragments is not None:
            m.fragments += payload
        else:
            self._lose(m, "protocol_violation", f"unexpected opcode {opcode}")
            return
        if fin:
            data, m.fragments = m.fragments, None
            self._on_frame(m, data, now)

    def _on_frame(self, m: _Member, payload: bytes, now: int) -> None:
        frame: Any = None
        if len(payload) > 4 and 0x80 <= payload[0] <= 0x8F and payload[1:3] == _T_PREFIX and 0xA0 <= payload[3] <= 0xBF:
            kind = payload[4:4 + payload[3] - 0xA0]
        else:  # not the server's usual layout: decode it to find the type
            try:
                frame = msgpack.unpackb(payload, raw=False)
                kind = str(frame.get("t", "")).encode() if type(frame) is dict else b""
            except Exception as exc:
                self.result.error("undecodable_frame", f"member {m.index}: {type(exc).__name__}")
                return
        if kind == b"chat":
            self._on_chat(m, payload, now)
            return
        if kind == b"ok" and m.state == _JOINED:
            self.result.acks += 1
            return
        if frame is None:
            frame = msgpack.unpackb(payload, raw=False)
        if kind == b"error" and frame.get("code") == "moved" and m.state == _JOINING and self._move(m, frame.get("url")):
            return
        if kind == b"error":
            self.result.error(f"error_{frame.get('code')}", f"member {m.index}: {frame.get('message', '')}")
            if m.state in (_HELLO, _JOINING):
                self._lose(m, "setup_refused", count=False)  # counted above as error_<code>
        elif kind == b"welcome" and m.state == _HELLO:
            m.state = _JOINING
            self._write(m, client_frame(msgpack.packb(
                {"t": "join_or_create", "id": 1, "code": f"bench-{m.room}", "max": self.members_per_room})))
        elif kind == b"ok" and m.state == _JOINING:
            result = frame.get("result")
            room_id = result.get("room") if type(result) is dict else None
            if not isinstance(room_id, str):
                self._lose(m, "setup_refused", "join_or_create answered without a room id")
                return
            m.room_id = room_id
            m.state = _JOINED
            self.room_size[m.room] += 1
        # presence, host and other room events: not needed here

    def _move(self, m: _Member, url: Any) -> bool:
        """Follow ``moved`` as a client does: connect to the room's process and join again there."""
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "ws" or not parts.hostname or self.result.moves > 4 * len(self.members):
            return False
        assert m.sock is not None
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(m.sock)
        m.sock.close()
        m.sock, m.rbuf, m.wbuf, m.fragments = None, b"", b"", None
        m.address = (parts.hostname, parts.port or 80)
        self.result.moves += 1
        self._connect(m)
        return True

    def _on_chat(self, m: _Member, payload: bytes | memoryview, now: int) -> None:
        """One delivery: latency from the send time at the head of the text; chat numbers without gaps."""
        try:
            msg = msgpack.unpackb(payload, raw=True)[b"msg"]
            text: bytes = msg[b"text"]
            sent = int(text[:text.index(b" ")])
            n: int = msg[b"n"]
        except Exception as exc:  # not a chat event this bench sent: count it, keep going
            self.result.error("bad_chat_event", f"member {m.index}: {type(exc).__name__}")
            return
        result = self.result
        if self.w_start <= sent < self.w_end:
            result.received += 1
            result.latencies_ns.append(now - sent)
        result.window_deliveries += self.counting
        last = m.last_n
        if last and n != last + 1:
            result.error("chat_gap", f"member {m.index} saw n={n} after n={last}")
        m.last_n = n

    def _send_chat(self, m: _Member) -> None:
        k = m.k
        m.k = k + 1
        sent = time.perf_counter_ns()
        payload = msgpack.packb({"t": "chat_send", "id": k & 0xFFFFFFFF, "room": m.room_id,
                                 "cid": f"{m.index}-{k}", "text": f"{sent} {_FILLER}"})
        self._write(m, client_frame(payload))
        self.result.sent += 1
        if self.w_start <= sent < self.w_end:
            self.result.offered += self.room_size[m.room]

    def _poll(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout):
            m: _Member = key.data
            if events & selectors.EVENT_WRITE and m.state != _DEAD:
                self._on_writable(m)
            if events & selectors.EVENT_READ and m.state != _DEAD:
                self._on_readable(m)

    # -- phases -----------------------------------------------------------------------------------

    def setup(self, timeout: float) -> None:
        """Connect, upgrade, hello and join every member (at most MAX_CONNECTING handshakes at once)."""
        started = time.monotonic()
        deadline = started + timeout
        waiting = list(reversed(self.members))
        while time.monotonic() < deadline:
            busy = sum(1 for m in self.members if _CONNECTING <= m.state <= _JOINING and m.sock is not None)
            while waiting and busy < MAX_CONNECTING:
                self._connect(waiting.pop())
                busy += 1
            if not waiting and busy == 0:
                break
            self._poll(0.05)
        for m in self.members:
            if m.state != _JOINED and m.state != _DEAD:
                self._lose(m, "setup_timeout", f"stuck in state {m.state}")
        self.result.joined = sum(1 for m in self.members if m.state == _JOINED)
        self.result.setup_s = time.monotonic() - started

    def drive(self, *, rate: float, seconds: float, warmup: float, drain: float,
              server_cpu: Callable[[], float | None] | None = None) -> RunResult:
        """Send on schedule for warm-up + seconds, then drain; returns the figures of the measured window."""
        result = self.result
        senders = [m for m in self.members if m.state == _JOINED]
        if not senders:
            return result
        total = len(senders)
        interval = 1e9 / (total * rate)
        t0 = time.perf_counter_ns() + 20_000_000
        self.w_start = t0 + int(warmup * 1e9)
        self.w_end = self.w_start + int(seconds * 1e9)
        hard_end = self.w_end + int(drain * 1e9)
        j = 0
        due = t0
        cpu0: float | None = None
        lg0 = busy0 = steal0 = 0.0
        times0 = os.times()
        mark0 = 0
        window_open = window_closed = False
        while True:
            now = time.perf_counter_ns()
            if not window_open and now >= self.w_start:
                window_open = True
                self.counting = 1
                mark0 = time.perf_counter_ns()
                cpu0 = server_cpu() if server_cpu else None
                lg0 = time.process_time()
                times0 = os.times()
                busy0 = machine_busy_seconds()
                steal0 = machine_steal_seconds()
            while due <= now and due < self.w_end:
                m = senders[j % total]
                if m.state == _JOINED:
                    if due >= self.w_start:
                        result.send_lags_ns.append(now - due)
                    self._send_chat(m)
                j += 1
                due = t0 + int(j * interval)
            if not window_closed and now >= self.w_end:
                window_closed = True
                self.counting = 0
                cpu1 = server_cpu() if server_cpu else None
                result.loadgen_cpu_s = time.process_time() - lg0
                times1 = os.times()
                result.machine_busy_s = machine_busy_seconds() - busy0
                result.machine_steal_s = machine_steal_seconds() - steal0
                result.loadgen_user_s = times1.user - times0.user
                result.loadgen_sys_s = times1.system - times0.system
                result.window_s = (time.perf_counter_ns() - mark0) / 1e9
                if cpu0 is not None and cpu1 is not None:
                    result.server_cpu_s = cpu1 - cpu0
            if window_closed and (result.received >= result.offered or now >= hard_end):
                break
            if not sum(self.room_size):
                result.error("all_members_lost")
                break
            wake = min(due if due < self.w_end else hard_end,
                       self.w_start if not window_open else self.w_end if not window_closed else hard_end)
            self._poll(max(0.0, min((wake - now) / 1e9, 0.05)))
        return result

    def close(self) -> None:
        """Say goodbye (Close 1000) and drop every socket; nothing after this counts as an error."""
        self.shutting_down = True
        goodbye = _close_frame(1000)
        for m in self.members:
            if m.sock is not None and m.state not in (_DEAD, _CONNECTING):
                with contextlib.suppress(OSError):
                    m.sock.send(goodbye)
            self._lose(m, "shutdown")
        self.sel.close()


# -- orchestration -----------------------------------------------------------------------------------


def mint_tokens(dev_key: Path, count: int, tag: str = "bench") -> list[str]:
    """One token per simulated member, each with its own ``sub``, signed with the dev key."""
    from roost.keys import read_private_key
    from roost.protocol.tokens import new_claims, sign

    kid, key = read_private_key(dev_key)
    now = time.time()
    return [sign(new_claims(sub=f"{tag}-{i}", name=f"member {i}", kid=kid, now=now, ttl=3600), key)
            for i in range(count)]


@contextlib.contextmanager
def _pinned(cpu: int | None) -> Any:
    """Pin this thread to ``cpu`` for the duration (restoring the previous affinity)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_load(url: str, tokens: Sequence[str], args: argparse.Namespace, *, server_pid: int | None) -> dict[str, Any]:
    """One full run against one server: setup, schedule, drain, close. Returns its figures."""
    gen = LoadGenerator(url, tokens, rooms=args.rooms, members=args.members)

    def cpu_reader() -> float | None:
        if server_pid is None:
            return None
        try:
            return tree_cpu_seconds(server_pid)
        except OSError:  # the server is gone
            gen.result.error("server_cpu_unreadable", f"/proc/{server_pid}/stat")
            return None
    try:
        gen.setup(args.setup_timeout)
        if gen.result.joined:
            gen.drive(rate=args.rate, seconds=args.seconds, warmup=args.warmup, drain=args.drain,
                      server_cpu=cpu_reader)
        else:
            gen.result.error("no_member_joined")
    finally:
        gen.close()
    return gen.result.figures()


def _served_run(args: argparse.Namespace, name: str, argv: list[str], keys: Sequence[str], cpu: int | None,
                workdir: Path, tokens_for: Callable[[dict[str, str]], list[str]],
                env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start a server subprocess (pinned to ``cpu``), run the load against it, always stop it."""
    server = ServerProcess(argv, cpu=cpu, workdir=workdir, name=name, env=env)
    try:
        lines = server.read_announcement(keys, SERVER_START_TIMEOUT)
        figures = run_load(lines[keys[0]], tokens_for(lines), args, server_pid=server.pid)
        figures["server"] = {"pid": server.pid, "cpus": server.affinity()}
        if "PICOWS_LOOP" in lines:
            figures["server"]["loop"] = lines["PICOWS_LOOP"]
    finally:
        status = server.stop()
    figures["server"]["exit_status"] = status
    figures["server"]["stop_s"] = round(server.stop_s or 0.0, 3)
    tail = server.stderr_tail()
    if tail:
        figures["server_stderr"] = tail
    return figures


def _engine_run(args: argparse.Namespace, cpu: int | None, workdir: Path) -> dict[str, Any]:
    members = args.rooms * args.members
    if args.url:
        figures = run_load(args.url, mint_tokens(Path(args.dev_key), members), args, server_pid=args.server_pid)
        figures["server"] = {"url": args.url, "pid": args.server_pid}
        return figures
    argv = [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data",
            str(workdir / "engine-data"), "--log-level", args.log_level]
    if args.workers <= 1:
        return _served_run(args, "engine", argv, ["ROOST_URL", "ROOST_DEV_KEY"], cpu, workdir,
                           lambda lines: mint_tokens(Path(lines["ROOST_DEV_KEY"]), members))
    # A node of N workers on this machine's Redis, under a prefix of this run's own, deleted afterwards.
    prefix = f"roost-bench-{secrets.token_hex(4)}:"
    argv += ["--workers", str(args.workers), "--cluster", args.cluster]
    try:
        return _served_run(args, "engine", argv, ["ROOST_URL", "ROOST_DEV_KEY"], cpu, workdir,
                           lambda lines: mint_tokens(Path(lines["ROOST_DEV_KEY"]), members),
                           env={**os.environ, "ROOST_CLUSTER_PREFIX": prefix})
    finally:
        forget_prefix(args.cluster, prefix)


def forget_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` in the Redis at ``url`` (what a benchmark's cluster left)."""
    import coredis
    import trio

    async def forget() -> None:
        async with coredis.Redis.from_url(url, connect_timeout=2, stream_timeout=2) as client:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            for start in range(0, len(keys), 500):
                await client.delete(keys[start:start + 500])

    try:
        trio.run(forget)
    except Exception as exc:  # noqa: BLE001 - a leftover is not worth failing the benchmark for
        print(f"roost bench: could not delete the keys under {prefix} in {url}: {exc!r}", file=sys.stderr)


def _baseline_run(args: argparse.Namespace, cpu: int | None, workdir: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "roost.bench.relay", "--port", "0"]
    members = args.rooms * args.members  # the relay accepts any token
    return _served_run(args, "relay", argv, ["RELAY_URL"], cpu, workdir,
                       lambda _lines: [f"relay-member-{i}" for i in range(members)])


PICOWS_MISSING = "picows is not installed: pip install 'roost[bench]' (or -e '.[bench]') for the picows baseline"


def picows_available() -> bool:
    """Whether this interpreter (the one the relay subprocess runs on) has picows: the ``bench`` extra."""
    return importlib.util.find_spec("picows") is not None


def _picows_run(args: argparse.Namespace, cpu: int | None, workdir: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "roost.bench.picows_relay", "--port", "0"]
    members = args.rooms * args.members  # the picows relay accepts any token too
    figures = _served_run(args, "picows", argv, ["PICOWS_URL", "PICOWS_LOOP"], cpu, workdir,
                          lambda _lines: [f"picows-member-{i}" for i in range(members)])
    return figures


def _ratio(mine: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    """Server CPU per delivery of ``mine`` over ``base`` (None when either is missing)."""
    if base is None:
        return None
    numerator, denominator = mine["server_cpu_us_per_delivery"], base["server_cpu_us_per_delivery"]
    return round(numerator / denominator, 2) if numerator is not None and denominator else None


def _pins(args: argparse.Namespace) -> tuple[int | None, int | None]:
    cpus = _available_cpus()
    if args.no_pin or args.server_cpu == args.loadgen_cpu or not {args.server_cpu, args.loadgen_cpu} <= cpus:
        return None, None
    return args.server_cpu, args.loadgen_cpu


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Run the engine, then the baseline relay, then the picows relay, under the same load; every figure."""
    pins = _pins(args)
    picows_note = None
    with tempfile.TemporaryDirectory(prefix="roost-fanout-") as tmp, _pinned(pins[1]):
        workdir = Path(tmp)
        engine = _engine_run(args, pins[0], workdir)
        baseline = _baseline_run(args, pins[0], workdir) if not args.no_baseline else None
        picows = None
        if args.no_picows:
            picows_note = "skipped (--no-picows)"
        elif not picows_available():
            picows_note = PICOWS_MISSING
        else:
            picows = _picows_run(args, pins[0], workdir)
    result: dict[str, Any] = {key: engine[key] for key in METRICS}
    result["baseline"] = {key: baseline[key] for key in METRICS} if baseline is not None else None
    result["picows"] = {key: picows[key] for key in METRICS} if picows is not None else None
    result["cpu_ratio"] = _ratio(engine, baseline)
    result["cpu_ratio_picows"] = _ratio(engine, picows)
    result["baseline_cpu_ratio_picows"] = _ratio(baseline, picows) if baseline is not None else None
    result.update(
        rooms=args.rooms,
        members=args.members,
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        offered_deliveries_per_s=args.rooms * args.members * args.rate * args.members,
        pinned={"server_cpu": pins[0], "loadgen_cpu": pins[1]},
        python=f"{platform.python_implementation()} {platform.python_version()}",
        picows_loop=picows["server"].get("loop") if picows is not None else None,
        picows_note=picows_note,
        engine_detail={k: v for k, v in engine.items() if k not in METRICS},
        baseline_detail={k: v for k, v in baseline.items() if k not in METRICS} if baseline is not None else None,
        picows_detail={k: v for k, v in picows.items() if k not in METRICS} if picows is not None else None,
    )
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(result: dict[str, Any]) -> str:
    """Engine against both baselines, one metric a row (plain ASCII)."""
    base = result["baseline"] or {}
    floor = result["picows"] or {}
    pinned = result["pinned"]
    pin_text = (f"server on CPU {pinned['server_cpu']}, load generator on CPU {pinned['loadgen_cpu']}"
                if pinned["server_cpu"] is not None else "not pinned")
    lines = [
        (f"Roost fan-out: {result['rooms']} room(s) x {result['members']} members x {result['rate']:g} msg/s "
         f"per member = {result['offered_deliveries_per_s']:,.0f} deliveries/s offered; "
         f"{result['seconds']:g} s measured after {result['warmup']:g} s warm-up; {pin_text}; {result['python']}"),
        "baseline = roost.bench.relay (Trio + wsproto, encode once); "
        f"picows = roost.bench.picows_relay (picows on {result['picows_loop'] or 'n/a'}, plain msgpack: the floor)",
        "",
        f"{'metric':<30}{'engine':>12}{'baseline':>12}{'picows':>12}{'engine/base':>13}{'engine/picows':>15}",
        "-" * 94,
    ]

    def ratio(mine: Any, theirs: Any, key: str) -> str:
        if isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs and key != "errors":
            return f"{mine / theirs:.2f}x"
        return ""

    for key in METRICS:
        mine, theirs, lowest = result[key], base.get(key), floor.get(key)
        lines.append(f"{key:<30}{_fmt(mine):>12}{_fmt(theirs):>12}{_fmt(lowest):>12}"
                     f"{ratio(mine, theirs, key):>13}{ratio(mine, lowest, key):>15}")
    lines.append("")
    lines.append(f"cpu_ratio (engine / baseline server CPU per delivery): {_fmt(result['cpu_ratio'])}")
    lines.append(f"cpu_ratio_picows (engine / picows server CPU per delivery): {_fmt(result['cpu_ratio_picows'])}"
                 f"; baseline / picows: {_fmt(result['baseline_cpu_ratio_picows'])}")
    if result["picows_note"]:
        lines.append(f"picows: {result['picows_note']}")
    for label, detail in (("engine", result["engine_detail"]), ("baseline", result["baseline_detail"]),
                          ("picows", result["picows_detail"])):
        if not detail:
            continue
        lines.append(
            f"{label}: p90 {_fmt(detail['p90_ms'])} ms, max {_fmt(detail['max_ms'])} ms, "
            f"lost {detail['lost']:,}, acks {detail['acks']:,}/{detail['messages_sent']:,} sent, "
            f"send lag p99 {_fmt(detail['send_lag_p99_ms'])} ms, setup {detail['setup_s']:g} s"
        )
        lines.append(
            f"  load generator user {detail['loadgen_user_s']:g} s + system {detail['loadgen_sys_s']:g} s; "
            f"other processes on the machine: {_fmt(detail['other_cpu_util'])} CPU"
            f" (hypervisor steal {_fmt(detail.get('steal_cpu_util'))})"
            + ("  <-- NOISY: figures disturbed" if (detail["other_cpu_util"] or 0) > 0.1 else "")
        )
        if detail["error_kinds"]:
            lines.append(f"  {label} errors: {detail['error_kinds']}")
            lines.extend(f"    {sample}" for sample in detail["error_samples"][:5])
        lines.extend(f"  {label} stderr: {line}" for line in detail.get("server_stderr", [])[-5:])
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError("must be between 1 and 100000")
    return value


def _seconds(low: float, high: float) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}")
        return value

    return parse


RATE_MAX = 1000.0
"""The highest ``--rate`` (messages/s per member)."""


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= RATE_MAX:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 1000 messages/s")
    return value


def _factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1.05 <= value <= 10:
        raise argparse.ArgumentTypeError("must be between 1.05 and 10")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m roost.bench fanout``."""
    parser.add_argument("--rooms", type=_positive_int, default=1, help="rooms, R (default 1)")
    parser.add_argument("--members", type=_positive_int, default=200, help="members per room, P (default 200)")
    parser.add_argument("--rate", type=_rate, default=1.0,
                        help="chat messages per second sent by EACH member, M (default 1); "
                             "offered deliveries/s = R x P x M x P. The engine's default request rate "
                             "limit is 50/s per connection")
    parser.add_argument("--seconds", type=_seconds(0.1, 3600), default=10.0, help="measured seconds, D (default 10)")
    parser.add_argument("--warmup", type=_seconds(0, 600), default=2.0,
                        help="seconds of load before measuring, excluded from the figures (default 2)")
    parser.add_argument("--drain", type=_seconds(0, 60), default=2.0,
                        help="at most this long after the window for in-flight deliveries (default 2)")
    parser.add_argument("--setup-timeout", type=_seconds(1, 600), default=60.0,
                        help="bound on connecting and joining all members (default 60)")
    parser.add_argument("--url", default=None, help="drive this running engine instead of starting one")
    parser.add_argument("--dev-key", default=None, help="private JWK to mint tokens with (required with --url)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="with --url: pid of the engine, to measure its CPU (otherwise reported as n/a)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to (default 0)")
    parser.add_argument("--loadgen-cpu", type=int, default=1, help="CPU this process is pinned to (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--workers", type=_positive_int, default=1,
                        help="run the engine as roost serve --workers N (a cluster node; needs Redis, --cluster)")
    parser.add_argument("--cluster", default="redis://127.0.0.1:6379/0",
                        help="the Redis of --workers (default redis://127.0.0.1:6379/0; keys under a prefix of the run's own)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline relay run")
    parser.add_argument("--no-picows", action="store_true",
                        help="skip the picows relay run (it needs the bench extra: picows, uvloop)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="the started engine's log level (default warning)")
    sweep = parser.add_argument_group("saturation sweep (roost.bench.saturation)")
    sweep.add_argument("--sweep", action="store_true",
                       help="raise --rate step by step (engine only) until p99 passes --sweep-p99-ms; print the "
                            "last rate that held and its msgs/s per core")
    sweep.add_argument("--sweep-factor", type=_factor, default=1.25, help="rate multiplier per step (default 1.25)")
    sweep.add_argument("--sweep-p99-ms", type=_seconds(0, 60_000), default=50.0,
                       help="delivery p99 bound a step must hold, in ms (default 50)")
    sweep.add_argument("--sweep-steps", type=_positive_int, default=20, help="at most this many steps (default 20)")
    sweep.add_argument("--sweep-seconds", type=_seconds(1, 7200), default=600.0,
                       help="time budget of the whole sweep, in s (default 600)")


def run(args: argparse.Namespace) -> int:
    """Print the table, then one line holding a single JSON object with every figure."""
    if args.sweep:
        from .saturation import run_sweep  # a module of its own: it drives this one

        return run_sweep(args)
    if args.url and not args.dev_key:
        print("bench fanout: --url needs --dev-key (the private JWK the engine trusts)", file=sys.stderr)
        return 2
    try:
        result = collect(args)
    except ServerError as exc:
        print(f"bench fanout: {exc}", file=sys.stderr)
        return 1
    print(render_table(result))
    print(json.dumps(result, separators=(",", ":")))
    sys.stdout.flush()
    return 0
