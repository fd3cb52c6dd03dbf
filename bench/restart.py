"""Restart time: from process start to every stored room serving again, against an empty data directory.

``python -m roost.bench restart --rooms N --messages M`` prepares an LMDB data directory holding N rooms,
each with ``--members`` members (default 2) and M chat messages, then starts ``roost serve`` on it
(``python -m roost.cli serve --port 0 --data DIR --key PUB``) and measures the time from just before
spawning the process until it is serving: it printed ``ROOST_URL`` (the engine prints it once the
stored rooms are restored and the listener accepts), **and** a client connected, was welcomed, joined
the last room restored (``join`` by id: answered by that room's actor, so the room is live) and got
an ``admin stats`` answer counting N rooms. That is ``restore_s``; ``url_s`` is the time to
``ROOST_URL`` alone. The same is measured for an empty data directory (``baseline_restore_s``: the
process start, imports and an empty store), alternately, ``--repeat`` times each; the figures are the
medians, every sample is in the JSON.

Preparation (``prepare_s``, not part of the measurement), ``--prepare``:

- ``clone`` (default): the real engine, in this process, on an in-memory store, builds ONE room through
  real protocol clients over in-memory streams (create, joins, M ``chat_send``), and is stopped; its
  records (whatever the engine stores: meta, host, game, counters, members, chat, read cursors,
  stored events) are then copied N times with the room id and the code replaced by fresh ones (both
  fixed-length, so every msgpack and WebSocket length prefix stays valid) and committed to an
  ``LmdbStore`` in batches. Exactly the records the engine writes, without N x (2 + M) requests.
- ``engine``: the real engine builds all N rooms on the ``LmdbStore`` itself (about 3-4 ms a room on
  one CPU: slow for 10 k rooms, a cross-check of ``clone``).

The measured run checks what came back: ``admin stats`` must count N rooms, and the joined room's
snapshot must hold M messages and the members (the probe included). ``--profile`` also restores the
data directory in this process under cProfile and lists the top costs.

The page cache is warm (the directory was just written); the server is pinned to CPU 0 and this
process to CPU 1, as in ``bench fanout``. Every wait is bounded (``--timeout``), every server stopped
(SIGTERM, then SIGKILL). Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import io
import json
import platform
import pstats
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import trio
import trio.testing  # noqa: F401 - Engine.connect_memory uses trio.testing.memory_stream_pair

from roost.app import Engine
from roost.codes import new_code, new_room_id
from roost.config import Config
from roost.keys import public_path_for, read_private_key, read_public_key, write_key_pair
from roost.store import Write
from roost.store.lmdb import LmdbStore
from roost.store.memory import MemoryStore
from roost.client import open_client
from roost.protocol.frames import PROTOCOL_VERSION
from roost.protocol.tokens import Keyring, generate_key, new_claims, sign

from .fanout import (
    _WS_ACCEPT,
    _WS_KEY,
    ServerError,
    ServerProcess,
    _available_cpus,
    _close_frame,
    _fmt,
    _pinned,
    _seconds,
    client_frame,
)

__all__ = ["add_arguments", "build_rooms", "clone_rooms", "collect", "measure_start", "prepare", "run"]

SERVICE_KEY = "restart-bench-service-key"
PROBE_USER = "restart-probe"
TARGET_S = 2.0
"""The engine's target for 10 k rooms (reported, never asserted)."""
COMMIT_ROOMS = 500
"""Rooms per store commit while writing the clones."""
ENGINE_WORKERS = 64
"""Rooms built concurrently with ``--prepare engine``."""


# -- preparation ----------------------------------------------------------------------------------


def _member(j: int) -> str:
    return f"member-{j}"


async def build_rooms(store: Any, rooms: int, messages: int, members: int, *, timeout: float) -> list[str]:
    """Build ``rooms`` rooms through the real engine on ``store`` with real protocol clients over
    in-memory streams: member 0 creates each room, the others join it, message k is sent by member
    k % members. Stops the engine (clients still connected, as a restart would) and returns the ids."""
    kid, signing_key = generate_key()
    config = Config(host="127.0.0.1", port=0, keyring=Keyring({kid: signing_key.verify_key}),
                    rate=1e9, burst=10**9, max_rooms_per_connection=rooms + 1,
                    default_max_members=max(64, members + 8))
    now = time.time()
    ids: list[str] = []
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            engine = Engine(config, store=store)
            await nursery.start(engine.serve)

            async def memory() -> trio.abc.Stream:
                return engine.connect_memory()

            async with contextlib.AsyncExitStack() as stack:
                clients = []
                for j in range(members):
                    token = sign(new_claims(sub=_member(j), name=f"Member {j}", kid=kid, now=now, ttl=3600),
                                 signing_key)
                    client = await stack.enter_async_context(open_client(
                        engine.url, token, stream=memory, reconnect=False, event_buffer=100_000, disconnect_timeout=0.25))
                    clients.append(client)

                async def drain(client: Any) -> None:
                    with contextlib.suppress(Exception):
                        async for _event in client.events():
                            pass

                async def build(count: int) -> None:
                    for _ in range(count):
                        snapshot = await clients[0].create()
                        for client in clients[1:]:
                            await client.join(room=snapshot.room)
                        for k in range(messages):
                            await clients[k % members].chat_send(snapshot.room, f"message {k + 1} of a restart bench room")
                        ids.append(snapshot.room)

                async with trio.open_nursery() as drains:
                    for client in clients:
                        drains.start_soon(drain, client)
                    async with trio.open_nursery() as builders:
                        workers = min(ENGINE_WORKERS, rooms)
                        for w in range(workers):
                            builders.start_soon(build, rooms // workers + (w < rooms % workers))
                    drains.cancel_scope.cancel()
                nursery.cancel_scope.cancel()  # the engine stops with its clients connected
    return ids


def clone_rooms(template: dict[str, bytes], rooms: int) -> list[tuple[str, list[Write]]]:
    """``rooms`` copies of one room's records, each with a fresh room id and code."""
    meta = msgpack.unpackb(template["meta"], raw=False)
    old_id, old_code = meta["room"].encode(), meta["code"].encode()
    out: list[tuple[str, list[Write]]] = []
    seen_ids: set[str] = set()
    seen_codes: set[str] = {meta["code"]}
    for _ in range(rooms):
        room_id = new_room_id()
        while room_id in seen_ids:  # pragma: no cover - 64 random bits
            room_id = new_room_id()
        code = new_code()
        while code in seen_codes:
            code = new_code()
        seen_ids.add(room_id)
        seen_codes.add(code)
        new_id, new_c = room_id.encode(), code.encode()
        if len(new_id) != len(old_id) or len(new_c) != len(old_code):
            raise ValueError("room ids and codes must keep their length for the records to stay valid")
        writes = [Write(room_id, key, value.replace(old_id, new_id).replace(old_code, new_c))
                  for key, value in sorted(template.items())]
        out.append((room_id, writes))
    return out


async def _write_clones(path: Path, clones: list[tuple[str, list[Write]]]) -> LmdbStore:
    store = LmdbStore(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for start in range(0, len(clones), COMMIT_ROOMS):
            await store.commit([write for _room, writes in clones[start:start + COMMIT_ROOMS] for write in writes])
        nursery.cancel_scope.cancel()
    return store


def prepare(path: Path, rooms: int, messages: int, members: int, *, via: str, timeout: float) -> dict[str, Any]:
    """Write ``rooms`` rooms into a fresh LMDB store at ``path``; returns the ids and a few figures."""
    started = time.perf_counter()
    if via == "engine":
        store = LmdbStore(path)
        ids = trio.run(functools.partial(build_rooms, store, rooms, messages, members, timeout=timeout))
        records_per_room = None
    else:
        memory = MemoryStore()

        async def template() -> dict[str, dict[str, bytes]]:
            await build_rooms(memory, 1, messages, members, timeout=timeout)
            return await memory.load_all_rooms()

        records = trio.run(template)
        if len(records) != 1:
            raise RuntimeError(f"the template engine stored {len(records)} rooms, not 1")
        (template_records,) = records.values()
        clones = clone_rooms(template_records, rooms)
        store = trio.run(_write_clones, path, clones)
        ids = [room_id for room_id, _writes in clones]
        records_per_room = len(template_records)
    stats = store.statistics()
    return {
        "ids": sorted(ids),
        "prepare_s": round(time.perf_counter() - started, 3),
        "records": stats.writes if via != "engine" else None,
        "records_per_room": records_per_room,
        "transactions": store.groups,
    }


def _db_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir() else 0


# -- measurement ------------------------------------------------------------------------------------


class ProbeError(RuntimeError):
    """The server answered something unexpected (not retried)."""


class _Probe:
    """A blocking WebSocket client, just enough for hello, one join and admin stats."""

    def __init__(self, url: str, deadline: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.deadline = deadline
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=self._left())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(
            (f"GET / HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {_WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode("ascii"))
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" " or _WS_ACCEPT.encode("ascii") not in head:
            raise ProbeError(f"upgrade refused: {status.decode('latin-1')}")

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("probe deadline passed")
        return left

    def _fill(self) -> None:
        self.sock.settimeout(self._left())
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def send(self, frame: dict[str, Any]) -> None:
        self.sock.sendall(client_frame(msgpack.packb(frame)))

    def receive(self) -> dict[str, Any]:
        """The next binary frame, decoded (pings answered, a Close raised)."""
        while True:
            while len(self.buf) < 2:
                self._fill()
            b0, b1 = self.buf[0], self.buf[1]
            size, head = b1 & 0x7F, 2
            if size == 126:
                while len(self.buf) < 4:
                    self._fill()
                size, head = int.from_bytes(self.buf[2:4], "big"), 4
            elif size == 127:
                while len(self.buf) < 10:
                    self._fill()
                size, head = int.from_bytes(self.buf[2:10], "big"), 10
            while len(self.buf) < head + size:
                self._fill()
            payload, self.buf = self.buf[head:head + size], self.buf[head + size:]
            opcode = b0 & 0x0F
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                raise ProbeError(f"closed by the server: {code} {payload[2:].decode('utf-8', 'replace')}")
            if opcode == 0x9:
                self.sock.sendall(bytes((0x8A, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload)
                continue
            if opcode == 0x2:
                frame: dict[str, Any] = msgpack.unpackb(payload, raw=False)
                return frame

    def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a request and return its ``ok`` or ``error`` (events in between are skipped)."""
        self.send(frame)
        while True:
            reply = self.receive()
            if reply.get("t") in ("ok", "error") and reply.get("id") == frame["id"]:
                return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(_close_frame(1000))
        self.sock.close()


def _probe_once(url: str, token: str, room: str | None, deadline: float) -> dict[str, Any]:
    """hello, join ``room`` (if any), admin stats; raises ConnectionError/ProbeError/TimeoutError."""
    probe = _Probe(url, deadline)
    try:
        probe.send({"t": "hello", "v": PROTOCOL_VERSION, "token": token, "hb": 60_000})
        welcome = probe.receive()
        if welcome.get("t") != "welcome":
            raise ProbeError(f"expected welcome, got {welcome.get('t')}")
        out: dict[str, Any] = {}
        if room is not None:
            reply = probe.request({"t": "join", "id": 1, "room": room})
            if reply["t"] != "ok":
                raise ConnectionError(f"join {room}: {reply.get('code')} {reply.get('message', '')}")  # retried
            out["snapshot"] = reply["result"]
        reply = probe.request({"t": "admin", "id": 2, "key": SERVICE_KEY, "op": "stats"})
        if reply["t"] != "ok":
            raise ProbeError(f"admin stats: {reply.get('code')} {reply.get('message', '')}")
        out["stats"] = reply["result"]
        return out
    finally:
        probe.close()


def measure_start(data: Path, *, key: Path, config: Path, token: str, room: str | None, cpu: int | None,
                  workdir: Path, timeout: float, name: str) -> dict[str, Any]:
    """Spawn ``roost serve`` on ``data``; time until ROOST_URL, then until the probe succeeds."""
    argv = [sys.executable, "-m", "roost.cli", "serve", "--port", "0", "--data", str(data),
            "--key", str(public_path_for(key)), "--config", str(config), "--log-level", "warning"]
    started = time.perf_counter()
    server = ServerProcess(argv, cpu=cpu, workdir=workdir, name=name)
    figures: dict[str, Any] = {"attempts": 0}
    try:
        lines = server.read_announcement(["ROOST_URL"], timeout)
        figures["url_s"] = time.perf_counter() - started
        deadline = time.monotonic() + timeout
        while True:
            figures["attempts"] += 1
            try:
                answer = _probe_once(lines["ROOST_URL"], token, room, deadline)
                break
            except (ConnectionError, OSError) as exc:  # not serving yet (or not that room yet): again
                if time.monotonic() >= deadline or server.proc.poll() is not None:
                    raise ServerError(f"{name}: not serving within {timeout:g} s: {exc}") from None
                figures["last_retry"] = str(exc)
                time.sleep(0.001)
        figures["restore_s"] = time.perf_counter() - started
        figures["answer"] = answer
    finally:
        figures["exit_status"] = server.stop()
        figures["stop_s"] = round(server.stop_s or 0.0, 3)
        tail = server.stderr_tail(5)
        if tail:
            figures["server_stderr"] = tail
    return figures


class _GcPauses:
    """Time spent in the cyclic garbage collector while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info.get("generation") == 2

    def __enter__(self) -> _GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def profile_restore(db: Path, *, key: Path, top: int = 15) -> dict[str, Any]:
    """Restore ``db`` in this process (start the engine, stop it once it serves): once plain, timing
    the garbage collector's pauses, then once under cProfile (start-up only, not the stop)."""
    kid, verify_key = read_public_key(public_path_for(key))
    config = Config(host="127.0.0.1", port=0, keyring=Keyring({kid: verify_key}))

    async def restore(profiler: cProfile.Profile | None, pauses: _GcPauses) -> float:
        with pauses:
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            async with trio.open_nursery() as nursery:
                await nursery.start(Engine(config, store=LmdbStore(db)).serve)
                if profiler is not None:
                    profiler.disable()
                elapsed = time.perf_counter() - started
                nursery.cancel_scope.cancel()
        return elapsed

    gc.collect()
    plain_pauses = _GcPauses()
    plain = trio.run(restore, None, plain_pauses)
    gc.collect()
    profiler = cProfile.Profile()
    profiled = trio.run(restore, profiler, _GcPauses())
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(filename).name}:{line}({func})" if line else func
        rows.append({"function": where, "calls": calls, "tottime": round(tottime, 3), "cumtime": round(cumtime, 3)})
    by_tottime = sorted(rows, key=lambda r: r["tottime"], reverse=True)[:top]
    by_cumtime = sorted(rows, key=lambda r: r["cumtime"], reverse=True)[:top]
    return {"inprocess_s": round(plain, 3), "gc_pause_s": round(plain_pauses.seconds, 3),
            "gc_full_collections": plain_pauses.full, "profiled_s": round(profiled, 3),
            "top_tottime": by_tottime, "top_cumtime": by_cumtime}


# -- orchestration -----------------------------------------------------------------------------------


def _pins(args: argparse.Namespace) -> tuple[int | None, int | None]:
    cpus = _available_cpus()
    if args.no_pin or args.server_cpu == args.loadgen_cpu or not {args.server_cpu, args.loadgen_cpu} <= cpus:
        return None, None
    return args.server_cpu, args.loadgen_cpu


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the data directory, then time empty and full starts alternately; return every figure."""
    pins = _pins(args)
    with tempfile.TemporaryDirectory(prefix="roost-restart-") as tmp, _pinned(pins[1]):
        workdir = Path(tmp)
        key = workdir / "bench-key.jwk"
        write_key_pair(key)
        config = workdir / "bench.toml"
        config.write_text(f'service_key = "{SERVICE_KEY}"\n', encoding="utf-8")
        kid, signing_key = read_private_key(key)
        token = sign(new_claims(sub=PROBE_USER, name="Probe", kid=kid, now=time.time(), ttl=3600), signing_key)

        full = workdir / "full"
        prepared = prepare(full / "db", args.rooms, args.messages, args.members, via=args.prepare,
                           timeout=args.timeout * 10)
        last_room = prepared["ids"][-1]  # rooms are restored in key order: the largest id comes back last
        db_bytes = _db_bytes(full / "db")

        baseline_runs: list[dict[str, Any]] = []
        full_runs: list[dict[str, Any]] = []
        for i in range(args.repeat):
            empty = workdir / f"empty-{i}"  # a fresh empty directory each time
            baseline_runs.append(measure_start(empty, key=key, config=config, token=token, room=None, cpu=pins[0],
                                               workdir=workdir, timeout=args.timeout, name=f"empty-{i}"))
            full_runs.append(measure_start(full, key=key, config=config, token=token, room=last_room, cpu=pins[0],
                                           workdir=workdir, timeout=args.timeout, name=f"full-{i}"))
        profile = profile_restore(full / "db", key=key) if args.profile else None

    problems: list[str] = []
    for run in full_runs:
        stats, snapshot = run["answer"]["stats"], run["answer"].get("snapshot") or {}
        if stats.get("rooms") != args.rooms:
            problems.append(f"admin stats counted {stats.get('rooms')} rooms, not {args.rooms}")
        if snapshot.get("chat_n") != args.messages:
            problems.append(f"the last room has chat_n {snapshot.get('chat_n')}, not {args.messages}")
        if snapshot.get("member_count", 0) < args.members + 1:
            problems.append(f"the last room has {snapshot.get('member_count')} members, not {args.members} + probe")
    for run in baseline_runs:
        if run["answer"]["stats"].get("rooms") != 0:
            problems.append(f"the empty start counted {run['answer']['stats'].get('rooms')} rooms")

    def samples(runs: list[dict[str, Any]], key: str) -> list[float]:
        return [round(run[key], 3) for run in runs]

    restore = samples(full_runs, "restore_s")
    baseline = samples(baseline_runs, "restore_s")
    result: dict[str, Any] = {
        "rooms": args.rooms,
        "messages": args.messages,
        "members": args.members,
        "restore_s": _median(restore),
        "baseline_restore_s": _median(baseline),
        "restore_minus_baseline_s": round(_median(restore) - _median(baseline), 3),
        "url_s": _median(samples(full_runs, "url_s")),
        "baseline_url_s": _median(samples(baseline_runs, "url_s")),
        "target_s": TARGET_S if args.rooms == 10_000 else None,
        "db_bytes": db_bytes,
        "prepare_s": prepared["prepare_s"],
        "prepare": args.prepare,
        "records": prepared["records"],
        "records_per_room": prepared["records_per_room"],
        "errors": len(problems),
        "problems": problems,
        "repeat": args.repeat,
        "restore_samples_s": restore,
        "baseline_samples_s": baseline,
        "probe_attempts": [run["attempts"] for run in full_runs],
        "stop_s": [run["stop_s"] for run in full_runs],
        "exit_status": [run["exit_status"] for run in full_runs + baseline_runs],
        "server_stderr": next((run["server_stderr"] for run in full_runs + baseline_runs if run.get("server_stderr")),
                              None),
        "page_cache": "warm",
        "pinned": {"server_cpu": pins[0], "loadgen_cpu": pins[1]},
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "profile": profile,
    }
    return result


def render_table(result: dict[str, Any]) -> str:
    pinned = result["pinned"]
    pin_text = (f"server on CPU {pinned['server_cpu']}, bench on CPU {pinned['loadgen_cpu']}"
                if pinned["server_cpu"] is not None else "not pinned")
    lines = [
        (f"Roost restart: {result['rooms']:,} rooms x {result['members']} members x {result['messages']} messages "
         f"({_fmt(result['db_bytes'])} bytes of LMDB, prepared by {result['prepare']} in {result['prepare_s']:g} s); "
         f"median of {result['repeat']}; page cache warm; {pin_text}; {result['python']}"),
        "",
        f"{'':<34}{'rooms':>12}{'empty dir':>12}{'difference':>12}",
        "-" * 70,
        (f"{'ROOST_URL printed (s)':<34}{_fmt(result['url_s']):>12}{_fmt(result['baseline_url_s']):>12}"
         f"{_fmt(round(result['url_s'] - result['baseline_url_s'], 3)):>12}"),
        (f"{'serving: join + stats answered (s)':<34}{_fmt(result['restore_s']):>12}"
         f"{_fmt(result['baseline_restore_s']):>12}{_fmt(result['restore_minus_baseline_s']):>12}"),
        "",
        f"samples: rooms {result['restore_samples_s']}, empty {result['baseline_samples_s']}",
    ]
    if result["target_s"] is not None:
        verdict = "within" if result["restore_s"] <= result["target_s"] else "OVER"
        lines.append(f"target: {result['rooms']:,} rooms back in <= {result['target_s']:g} s: {verdict}")
    if result["problems"]:
        lines.append(f"PROBLEMS: {result['problems']}")
    if result["server_stderr"]:
        lines.extend(f"  stderr: {line}" for line in result["server_stderr"])
    profile = result["profile"]
    if profile:
        lines.append("")
        lines.append(
            f"in-process restore: engine serving after {profile['inprocess_s']:g} s, {profile['gc_pause_s']:g} s of it "
            f"paused in the garbage collector ({profile['gc_full_collections']} full collections); under cProfile "
            f"{profile['profiled_s']:g} s (collector pauses land in whatever function allocates):")
        lines.append(f"  {'tottime':>8} {'cumtime':>8} {'calls':>9}  function (top by own time)")
        for row in profile["top_tottime"]:
            lines.append(f"  {row['tottime']:>8.3f} {row['cumtime']:>8.3f} {row['calls']:>9,}  {row['function']}")
        lines.append(f"  {'tottime':>8} {'cumtime':>8} {'calls':>9}  function (top by cumulative time)")
        for row in profile["top_cumtime"]:
            lines.append(f"  {row['tottime']:>8.3f} {row['cumtime']:>8.3f} {row['calls']:>9,}  {row['function']}")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------


def _int_between(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m roost.bench restart``."""
    parser.add_argument("--rooms", type=_int_between(1, 1_000_000), default=10_000, help="rooms in the data directory, N (default 10000)")
    parser.add_argument("--messages", type=_int_between(0, 1000), default=2, help="chat messages per room, M (default 2)")
    parser.add_argument("--members", type=_int_between(1, 50), default=2, help="members per room (default 2)")
    parser.add_argument("--prepare", choices=["clone", "engine"], default="clone",
                        help="clone: one room built by the engine, its records copied N times (default); "
                             "engine: all N rooms built by the engine (slow)")
    parser.add_argument("--repeat", type=_int_between(1, 20), default=3,
                        help="timed starts of each kind, alternating; medians reported (default 3)")
    parser.add_argument("--timeout", type=_seconds(1, 600), default=60.0,
                        help="bound on each start, and a tenth of the bound on preparation (default 60)")
    parser.add_argument("--profile", action="store_true",
                        help="also restore in this process under cProfile and list the top costs")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to (default 0)")
    parser.add_argument("--loadgen-cpu", type=int, default=1, help="CPU this process is pinned to (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")


def run(args: argparse.Namespace) -> int:
    """Print the table, then one line holding a single JSON object with every figure."""
    try:
        result = collect(args)
    except (ServerError, ProbeError, TimeoutError) as exc:
        print(f"bench restart: {exc}", file=sys.stderr)
        return 1
    print(render_table(result))
    print(json.dumps(result, separators=(",", ":")))
    sys.stdout.flush()
    return 0 if not result["problems"] else 1

