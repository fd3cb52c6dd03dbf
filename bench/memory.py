"""Memory benchmark: the engine's RSS per idle authenticated connection and per idle empty room.

``python -m roost.bench memory [--connections 5000] [--rooms 10000]`` starts ``roost serve --dev --port 0
--data TMP`` (or takes ``--url``, ``--dev-key`` and ``--server-pid``), reads its resident set from
``/proc/<pid>/status`` before and after each phase, and prints a table and one JSON line with
``kb_per_connection`` and ``kb_per_room``.

Method (one load-generator thread over non-blocking sockets and ``selectors``, the client of ``bench
fanout``; one engine process):

1. **Warm-up.** ``--creators`` connections (default 250) connect and say ``hello``; each creates a room
   and leaves it, so every code path the phases use has run once (lazy imports, caches, the first
   LMDB pages) before the baseline is read.
2. **Rooms.** The creators make ``--rooms`` rooms, each by ``create`` then ``leave``: an **empty room**
   (no member, no message, the state ``create`` gives it) that the reaper would dispose of after the
   TTL. The engine is started with ``ROOST_SOLO_ROOM_TTL=3600`` so that none is reaped during the run
   (the default of 10 s applies to a room that never had two members, and the phase can take longer
   than that); nothing else in the configuration differs from ``serve --dev``. ``kb_per_room`` =
   (RSS after - RSS before) / rooms. Such a room hibernates (``RoomRuntime`` in roost/room.py): no
   task, no inbox, its state in the store; what it costs is its sleeping record, the router's and the
   sleeper heap's entries, and the LMDB pages its records touched (in ``RssFile``).
3. **Connections.** ``--connections`` further clients connect and finish ``hello`` (``welcome``
   received): **authenticated and in no room**. They then stay silent (``hello.hb`` = 300 s, so the
   engine's heartbeat timeout of 2.5 x hb is far away). ``kb_per_connection`` = (RSS after - RSS
   before) / connections. The client's half of each connection is in this process, not counted.

After each phase the engine is left idle for ``--settle`` seconds before its RSS is read; the rooms
and connections the engine reports (``GET /api/stats`` with the dev service key) are checked against
what was made, so a reaped room or a dropped connection is an error, not a smaller figure. ``VmRSS`` is
the figure (``RssAnon`` + ``RssFile`` + ``RssShmem``); the anonymous part alone is reported too, since
LMDB's memory map counts in ``RssFile`` once its pages are touched.

**File descriptors.** Both processes need one descriptor per connection (plus the creators and a
margin): this process raises its soft ``RLIMIT_NOFILE`` as far as the hard limit allows before it
starts the engine, which inherits it. A hard limit below what the run needs is refused up front, with
the limit in the message. Everything is bounded: setup by ``--setup-timeout``, the server by SIGTERM
then SIGKILL. Nothing here asserts on sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack

from .fanout import (
    _JOINED,
    SERVER_START_TIMEOUT,
    LoadGenerator,
    ServerError,
    ServerProcess,
    _Member,
    _positive_int,
    _seconds,
    client_frame,
    mint_tokens,
)

__all__ = ["IdleClients", "add_arguments", "raise_nofile", "read_rss", "run"]

IDLE_HEARTBEAT_MS = 300_000
"""``hello.hb`` of every client: the longest the engine accepts, so silence is not a timeout."""
FD_MARGIN = 64
"""Descriptors beyond one per client: the listener, LMDB, logs, pipes."""
ROOM_TTL_S = 3600
"""``ROOST_SOLO_ROOM_TTL`` for the started engine: an empty room outlives the run."""
_KB = 1024


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it); returns (soft, hard).

    The trap: the default soft limit is often 1,024, below 5,000 connections, and a child started
    before the raise keeps the old one; so this runs before the engine is started."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def read_rss(pid: int) -> dict[str, int]:
    """``VmRSS``, ``RssAnon``, ``RssFile`` and ``RssShmem`` of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "RssShmem"}
    figures: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            key, _sep, value = line.partition(":")
            if key in wanted:
                figures[key] = int(value.split()[0])  # "  123456 kB"
    return figures


class IdleClients(LoadGenerator):
    """Clients that stop after ``welcome`` (no join); they can then make rooms by ``create`` + ``leave``.

    A client counts as ready (``_JOINED`` in the load generator's states, in its one bookkeeping room)
    once ``welcome`` arrived, so :meth:`LoadGenerator.setup` connects and authenticates them as is."""

    def __init__(self, url: str, tokens: list[str]) -> None:
        super().__init__(url, tokens, rooms=1, members=len(tokens))
        self.heartbeat_ms = IDLE_HEARTBEAT_MS
        self.quota: dict[int, int] = {}
        """Rooms each client still has to make (by member index)."""
        self.pending: dict[int, str] = {}
        """``create`` or ``leave``: the request each client waits an ``ok`` for."""
        self.made = 0
        self.room_ids: set[str] = set()

    def _on_frame(self, m: _Member, payload: bytes, now: int) -> None:
        try:
            frame = msgpack.unpackb(payload, raw=False)
        except Exception as exc:
            self.result.error("undecodable_frame", f"member {m.index}: {type(exc).__name__}")
            return
        kind = frame.get("t") if type(frame) is dict else None
        if kind == "welcome" and m.state != _JOINED:
            m.state = _JOINED
            self.room_size[m.room] += 1
        elif kind == "error":
            self.result.error(f"error_{frame.get('code')}", f"member {m.index}: {frame.get('message', '')}")
            self.pending.pop(m.index, None)
            if m.state != _JOINED:
                self._lose(m, "setup_refused", count=False)  # counted above as error_<code>
        elif kind == "ok" and m.index in self.pending:
            self._on_ok(m, frame.get("result"))
        # presence, host and other room events: not needed here

    def _on_ok(self, m: _Member, result: Any) -> None:
        if self.pending.pop(m.index) == "create":
            room = result.get("room") if type(result) is dict else None
            if not isinstance(room, str):
                self.result.error("bad_create_result", f"member {m.index}: {result!r}"[:200])
                return
            self.room_ids.add(room)
            self._request(m, "leave", {"t": "leave", "id": m.k, "room": room})
            return
        self.made += 1
        self.quota[m.index] -= 1
        if self.quota[m.index]:
            self._create(m)

    def _request(self, m: _Member, kind: str, frame: dict[str, Any]) -> None:
        m.k += 1
        self.pending[m.index] = kind
        self._write(m, client_frame(msgpack.packb(frame)))

    def _create(self, m: _Member) -> None:
        self._request(m, "create", {"t": "create", "id": m.k})

    def make_rooms(self, count: int, timeout: float) -> float:
        """``count`` empty rooms, spread over the ready clients, each client one request at a time.

        One request in flight per client keeps every client far under the engine's rate limit (50/s,
        burst 100) as long as each makes at most ~40 rooms. Returns the seconds it took."""
        started = time.monotonic()
        ready = [m for m in self.members if m.state == _JOINED]
        if not ready:
            self.result.error("no_client_ready")
            return 0.0
        goal = self.made + count
        for i, m in enumerate(ready):
            share = count // len(ready) + (1 if i < count % len(ready) else 0)
            if share:
                self.quota[m.index] = share
                self._create(m)
        deadline = started + timeout
        while self.made < goal and self.pending and time.monotonic() < deadline:
            self._poll(0.05)
        if self.made < goal:
            self.result.error("rooms_unfinished", f"{self.made - (goal - count)} of {count} rooms made")
        return time.monotonic() - started

    def idle(self, seconds: float) -> None:
        """Serve the sockets (nothing is sent) for ``seconds``: the engine finishes what it was doing."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._poll(min(remaining, 0.05))


def _stats(url: str, service_key: str | None) -> dict[str, Any] | None:
    """The engine's ``GET /api/stats`` (None without a service key)."""
    if not service_key:
        return None
    http_url = "http" + url[len("ws"):].rstrip("/") + "/api/stats"
    request = urllib.request.Request(http_url, headers={"Authorization": f"Bearer {service_key}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - a ws:// URL we were given
        result: dict[str, Any] = json.loads(response.read())["result"]
    return result


def _kb(delta_kib: int, count: int) -> float | None:
    return round(delta_kib * _KB / 1000 / count, 2) if count else None


def measure(url: str, dev_key: Path, pid: int, service_key: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """The three phases against one engine; returns every figure (KB are 1,000 bytes, RSS is read in KiB)."""
    tokens = mint_tokens(dev_key, args.creators + args.connections, tag="memory")
    creators = IdleClients(url, tokens[:args.creators])
    idle = IdleClients(url, tokens[args.creators:])
    checks: dict[str, Any] = {}
    try:
        creators.setup(args.setup_timeout)
        creators.make_rooms(len([m for m in creators.members if m.state == _JOINED]), args.setup_timeout)  # warm-up
        warm_rooms = creators.made
        creators.idle(args.settle)
        rss0 = read_rss(pid)
        stats0 = _stats(url, service_key)

        rooms_s = creators.make_rooms(args.rooms, args.setup_timeout)
        creators.idle(args.settle)
        rss1 = read_rss(pid)
        stats1 = _stats(url, service_key)

        idle.setup(args.setup_timeout)
        connect_s = idle.result.setup_s
        idle.idle(args.settle)
        creators.idle(0)
        rss2 = read_rss(pid)
        stats2 = _stats(url, service_key)
        if stats0 is not None and stats1 is not None and stats2 is not None:
            checks = {"rooms_before": stats0["rooms"], "rooms_after": stats1["rooms"],
                      "connections_before": stats1["connections"], "connections_after": stats2["connections"]}
    finally:
        idle.close()
        creators.close()
    problems: list[str] = []
    made_rooms = creators.made - warm_rooms
    if checks and checks["rooms_after"] - checks["rooms_before"] != made_rooms:
        held = checks["rooms_after"] - checks["rooms_before"]
        problems.append(f"the engine holds {held} more rooms, not {made_rooms}")
    if checks and checks["connections_after"] - checks["connections_before"] != idle.result.joined:
        problems.append(f"the engine holds {checks['connections_after'] - checks['connections_before']} more "
                        f"connections, not {idle.result.joined}")
    error_kinds: dict[str, int] = {}
    samples: list[str] = []
    for gen in (creators, idle):
        for kind, n in gen.result.error_kinds.items():
            error_kinds[kind] = error_kinds.get(kind, 0) + n
        samples.extend(gen.result.error_samples)
    samples.extend(problems)
    conn_delta = rss2["VmRSS"] - rss1["VmRSS"]
    room_delta = rss1["VmRSS"] - rss0["VmRSS"]
    return {
        "kb_per_connection": _kb(conn_delta, idle.result.joined),
        "kb_per_room": _kb(room_delta, made_rooms),
        "anon_kb_per_connection": _kb(rss2["RssAnon"] - rss1["RssAnon"], idle.result.joined),
        "anon_kb_per_room": _kb(rss1["RssAnon"] - rss0["RssAnon"], made_rooms),
        "connections": idle.result.joined,
        "rooms": made_rooms,
        "connections_asked": args.connections,
        "rooms_asked": args.rooms,
        "creators": creators.result.joined,
        "errors": sum(error_kinds.values()) + len(problems),
        "rss_kib": {"baseline": rss0, "after_rooms": rss1, "after_connections": rss2},
        "engine_counts": checks or None,
        "rooms_s": round(rooms_s, 2),
        "connect_s": round(connect_s, 2),
        "settle_s": args.settle,
        "error_kinds": dict(sorted(error_kinds.items())),
        "error_samples": samples[:10],
    }


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Raise the descriptor limit, start the engine (unless ``--url``), measure, stop it."""
    needed = args.connections + args.creators + FD_MARGIN
    soft, hard = raise_nofile(needed)
    if soft < needed:
        raise ServerError(f"{needed} file descriptors needed for {args.connections} connections and "
                          f"{args.creators} creators, but RLIMIT_NOFILE's hard limit is {hard}: raise it "
                          f"(ulimit -Hn, as root) or ask for fewer --connections")
    if args.url:
        figures = measure(args.url, Path(args.dev_key), args.server_pid, args.service_key, args)
        figures["server"] = {"url": args.url, "pid": args.server_pid}
    else:
        with tempfile.TemporaryDirectory(prefix="roost-memory-") as tmp:
            workdir = Path(tmp)
            argv = [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data",
                    str(workdir / "engine-data"), "--log-level", args.log_level]
            env = {**os.environ, "ROOST_SOLO_ROOM_TTL": str(ROOM_TTL_S)}
            server = ServerProcess(argv, cpu=None, workdir=workdir, name="engine", env=env)
            try:
                lines = server.read_announcement(["ROOST_URL", "ROOST_DEV_KEY", "ROOST_SERVICE_KEY"],
                                                SERVER_START_TIMEOUT)
                figures = measure(lines["ROOST_URL"], Path(lines["ROOST_DEV_KEY"]), server.pid,
                                  lines["ROOST_SERVICE_KEY"], args)
                figures["server"] = {"pid": server.pid}
            finally:
                status = server.stop()
            figures["server"]["exit_status"] = status
            tail = server.stderr_tail()
            if tail:
                figures["server_stderr"] = tail
    figures.update(nofile={"soft": soft, "hard": hard}, python=f"{platform.python_implementation()} "
                   f"{platform.python_version()}")
    return figures


def render_table(result: dict[str, Any]) -> str:
    """What a connection and a room cost, one row each (plain ASCII)."""
    rss = result["rss_kib"]
    lines = [
        (f"Roost memory: {result['connections']:,} idle authenticated connections (hello done, in no room) and "
         f"{result['rooms']:,} idle empty rooms (create + leave); RSS from /proc/<pid>/status after "
         f"{result['settle_s']:g} s idle (KB = 1,000 bytes); RLIMIT_NOFILE {result['nofile']['soft']:,}; "
         f"{result['python']}"),
        "",
        f"{'what':<26}{'count':>10}{'VmRSS delta KiB':>18}{'KB each':>10}{'anon KB each':>14}",
        "-" * 78,
        (f"{'idle connection':<26}{result['connections']:>10,}"
         f"{rss['after_connections']['VmRSS'] - rss['after_rooms']['VmRSS']:>18,}"
         f"{_fmt(result['kb_per_connection']):>10}{_fmt(result['anon_kb_per_connection']):>14}"),
        (f"{'idle empty room':<26}{result['rooms']:>10,}"
         f"{rss['after_rooms']['VmRSS'] - rss['baseline']['VmRSS']:>18,}"
         f"{_fmt(result['kb_per_room']):>10}{_fmt(result['anon_kb_per_room']):>14}"),
        "",
        (f"VmRSS KiB: baseline {rss['baseline']['VmRSS']:,}, after rooms {rss['after_rooms']['VmRSS']:,}, "
         f"after connections {rss['after_connections']['VmRSS']:,}; rooms made in {result['rooms_s']:g} s, "
         f"connections in {result['connect_s']:g} s; errors {result['errors']}"),
    ]
    if result["error_kinds"] or result["error_samples"]:
        lines.append(f"errors: {result['error_kinds']}")
        lines.extend(f"  {sample}" for sample in result["error_samples"][:5])
    lines.extend(f"engine stderr: {line}" for line in result.get("server_stderr", [])[-5:])
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m roost.bench memory``."""
    parser.add_argument("--connections", type=_positive_int, default=5000,
                        help="idle authenticated connections to measure (default 5000)")
    parser.add_argument("--rooms", type=_positive_int, default=10_000,
                        help="idle empty rooms to measure (default 10000)")
    parser.add_argument("--creators", type=_positive_int, default=250,
                        help="connections that make the rooms, one request in flight each (default 250; "
                             "keep rooms / creators under ~40, the engine's rate limit)")
    parser.add_argument("--settle", type=_seconds(0, 60), default=1.0,
                        help="idle seconds before each RSS reading (default 1)")
    parser.add_argument("--setup-timeout", type=_seconds(1, 600), default=120.0,
                        help="bound on each phase: connecting, making the rooms (default 120)")
    parser.add_argument("--url", default=None, help="measure this running engine instead of starting one")
    parser.add_argument("--dev-key", default=None, help="with --url: private JWK to mint tokens with")
    parser.add_argument("--server-pid", type=int, default=None, help="with --url: the engine's pid (its RSS is read)")
    parser.add_argument("--service-key", default=None,
                        help="with --url: the service key, to check the engine's room and connection counts")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="the started engine's log level (default warning)")


def run(args: argparse.Namespace) -> int:
    """Print the table, then one line holding a single JSON object with every figure."""
    if args.url and not (args.dev_key and args.server_pid):
        print("bench memory: --url needs --dev-key and --server-pid (the engine whose RSS is read)", file=sys.stderr)
        return 2
    try:
        result = collect(args)
    except ServerError as exc:
        print(f"bench memory: {exc}", file=sys.stderr)
        return 1
    print(render_table(result))
    print(json.dumps(result, separators=(",", ":")))
    sys.stdout.flush()
    return 0
