"""Durable chat throughput: acknowledged messages/s with LMDB group commit, against one commit per message.

``python -m roost.bench durable --clients N --rooms R --window W --seconds D`` starts the engine (this
module's ``--serve`` entry, see below) with an LMDB store and ``sync`` on, connects N real WebSocket
clients spread evenly over R rooms (N / R members each, every one in its own room ``bench-<r>``), and
has every client keep W ``chat_send`` requests in flight: each ``ok`` (sent by the engine only after
the LMDB commit holding the message is durable, PROTOCOL.md §6) immediately triggers the next
``chat_send``. It counts the acks that arrive during D seconds after ``--warmup``. Then it does the
same against baselines, one run after the other, each on a fresh data directory:

- ``message`` (the baseline of the ``ratio``): the store writes **one group, hence one fsync, per
  chat message**: ``LmdbStore(group_commit=False)``, and each room turn's batch split so
  that every ``chat:<n>`` record is committed on its own (the turn's other records go with its last
  message). The room actor still acknowledges only after all of them are durable.
- ``turn``: plain ``LmdbStore(group_commit=False)``: one transaction per room-actor turn. A turn takes
  every request already queued for the room (up to 128), so with W x N / R requests in flight per
  room a turn already carries many messages: this shows how much batching the room actor alone gives.
- ``memory``: the same engine on the in-memory store (no disk at all): the ceiling, and
  ``memory_ratio`` = group commit / memory, acked/s, is durability's price (issue 9: >= 0.8).
- ``direct``: group commit written straight into LMDB, without the store's log
  (``LmdbStore(log=False)``: one LMDB transaction, two syncs and every dirty page per group):
  ``direct_ratio`` = group commit / direct is what the log buys.

The engine's own ``LmdbStore`` (group commit) merges the turns of all rooms queued since its last
write into one transaction.

Method:

- Server and load generator: as ``bench fanout`` (whose helpers this module imports): the server is
  pinned to CPU 0 (its LMDB writer thread included) and this process to CPU 1; one thread over
  non-blocking sockets with masked client frames. ``chat`` events (each message goes to the N / R
  members of its room) are counted, not decoded; ``ok`` frames are decoded for their ``id``.
- ``acked_per_s`` = acks received inside the window / window length; ``p50_ms``/``p99_ms`` = send to
  ack of those acks (the time includes the request's wait in the room's inbox and in the commit
  queue). ``server_cpu_util`` = server utime + stime over the window (1.0 = one CPU busy);
  ``loadgen_cpu_util`` = this process's CPU time over the window (well under 1.0: not the bottleneck).
- After the window no new request is sent and the ones in flight are drained (``--drain`` bound):
  ``unacked`` counts requests still unanswered then (a slow baseline, not an error by itself).
- ``errors`` counts everything abnormal from the first connect on: ``error`` replies, Close frames,
  lost connections, setup failures.
- The server reports on exit how many commits (room turns, or messages for ``message``) and LMDB
  groups it wrote (``transactions``: log records, or LMDB transactions for ``direct``):
  ``commits_per_txn`` is the group size group commit achieved.
- Everything is bounded: setup by ``--setup-timeout``, each run by warm-up + seconds + drain, each
  server by SIGTERM then SIGKILL. Nothing here asserts on timings.

``python -m roost.bench.durable --serve --data DIR --key PUB.jwk [--config FILE] [--store group|turn|message]``
is the server: ``roost serve`` (``roost.serve.prepare`` builds the config: TOML < ROOST_* environment
< flags) with the store chosen by ``--store``; it prints ``ROOST_URL=...`` and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack

from roost.keys import public_path_for, write_key_pair
from roost.state import chat_key
from roost.store import Write
from roost.store.lmdb import LmdbStore

from .fanout import (
    LoadGenerator,
    ServerError,
    ServerProcess,
    _available_cpus,
    _fmt,
    _pct_ms,
    _pinned,
    _positive_int,
    _seconds,
    client_frame,
    machine_busy_seconds,
    mint_tokens,
    proc_cpu_seconds,
)
from .fanout import _DEAD as DEAD
from .fanout import _JOINED as JOINED
from .fanout import _Member as Member

__all__ = ["AckLoad", "PerMessageLmdbStore", "add_arguments", "collect", "run", "serve_main"]

SERVER_START_TIMEOUT = 30.0
STORES = ("group", "memory", "message", "turn", "direct")
"""Store modes of the server: the engine's group commit, then the baselines."""
STORE_LABELS = {
    "group": "group commit",
    "memory": "memory store",
    "message": "1 txn/message",
    "turn": "1 txn/turn",
    "direct": "no log",
}
METRICS = ("acked_per_s", "p50_ms", "p99_ms", "server_cpu_util", "loadgen_cpu_util", "errors")
"""Keys present for every store mode (the table shows these)."""
RATE_LIMIT = 1_000_000
"""Requests/s and burst per connection for the run: far above anything offered (the default 50/s
would turn the closed loop into a rate-limit test)."""
_TEXT = "durable bench message, about sixty-four bytes long, padded to it"
_OK_HEAD = b"\xa1t\xa2ok"  # "t": "ok" right after the map header
_ERROR_HEAD = b"\xa1t\xa5error"


# -- server side ----------------------------------------------------------------------------------


_CHAT_PREFIX = chat_key(1)[: chat_key(1).index(":") + 1]
"""Store keys of chat messages start with this (``chat:``)."""


class PerMessageLmdbStore(LmdbStore):
    """``LmdbStore(group_commit=False)`` that commits every chat message in its own transaction.

    A room turn's batch holding k messages becomes k commits, one ``chat:<n>`` record each; the turn's
    other records (counters, read cursors, stored events) go with the last one. The caller (the room
    actor) returns, and acknowledges, only after all k are durable. Only for the benchmark baseline: a
    crash between two of them would leave part of a turn.
    """

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(path, group_commit=False, **kwargs)

    async def commit(self, batch: Sequence[Write]) -> None:
        chats = [write for write in batch if write.room is not None and write.key.startswith(_CHAT_PREFIX)]
        if len(chats) <= 1:
            await super().commit(batch)
            return
        rest = [write for write in batch if write.room is None or not write.key.startswith(_CHAT_PREFIX)]
        for write in chats[:-1]:
            await super().commit([write])
        await super().commit([chats[-1], *rest])


def make_store(path: Path, mode: str) -> LmdbStore:
    """The LMDB store for ``mode``: ``group`` (the engine's), ``turn`` or ``message`` (baselines);
    ``memory`` opens one too (``prepare`` claims the data directory with it), then runs without it."""
    if mode in ("group", "memory"):
        return LmdbStore(path)
    if mode == "turn":
        return LmdbStore(path, group_commit=False)
    if mode == "message":
        return PerMessageLmdbStore(path)
    if mode == "direct":
        return LmdbStore(path, log=False)
    raise ValueError(f"unknown store mode {mode!r}")


def serve_main(argv: Sequence[str]) -> int:
    """``python -m roost.bench.durable --serve ...``: the engine with the chosen store, until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m roost.bench.durable --serve")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data", required=True, help="data directory (the store is DATA/db)")
    parser.add_argument("--key", action="append", default=[], help="public key file (JWK) to accept tokens from")
    parser.add_argument("--config", default=None, help="TOML config file (e.g. rate and burst)")
    parser.add_argument("--store", choices=STORES, default="group")
    parser.add_argument("--stats-file", default=None, help="write the store's counters here (JSON) on exit")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    import trio

    from roost.app import Engine
    from roost.serve import ServeError, prepare

    try:
        prepared = prepare(argparse.Namespace(config=args.config, host=args.host, port=args.port, data=args.data,
                                              key=args.key, dev=False),
                           store_factory=lambda path: make_store(path, args.store))
    except ServeError as exc:
        print(f"roost.bench.durable: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store: Any = prepared.store
    if args.store == "memory":  # the data directory (keys) as prepared, but nothing on disk for rooms
        from roost.store.memory import MemoryStore

        prepared.store.close()
        store = MemoryStore()

    async def serve() -> None:  # as roost.serve._serve, with our store
        engine = Engine(prepared.config, store=store)
        async with trio.open_nursery(strict_exception_groups=True) as nursery:

            async def serve_until_stopped(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
                await engine.serve(task_status=task_status)
                nursery.cancel_scope.cancel()  # the graceful shutdown finished

            host, port = await nursery.start(serve_until_stopped)
            gc.collect()
            gc.freeze()
            print(f"ROOST_URL=ws://{host}:{port}/", flush=True)
            print(f"BENCH_STORE={args.store}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _signum in signals:  # the first signal: graceful; a second one: at once
                    if not engine.shutdown_requested:
                        engine.request_shutdown()
                    else:
                        nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    finally:
        if args.stats_file:
            stats = store.statistics()
            Path(args.stats_file).write_text(json.dumps(
                {"commits": stats.commits, "writes": stats.writes, "transactions": getattr(store, "groups", None)}))
    return 0


# -- load generator --------------------------------------------------------------------------------


class AckLoad(LoadGenerator):
    """``bench fanout``'s load generator in a closed loop: every member keeps ``window`` chat_sends in
    flight and sends the next one as soon as an ``ok`` comes back."""

    def __init__(self, url: str, tokens: Sequence[str], *, rooms: int, members: int, window: int) -> None:
        super().__init__(url, tokens, rooms=rooms, members=members)
        self.window = window
        self.inflight: list[dict[int, int]] = [{} for _ in self.members]
        self.sending = False
        self.window_acks = 0
        self.ack_latencies_ns: list[int] = []
        self.unacked = 0
        self.unexpected_acks = 0

    def _on_chat(self, m: Member, payload: bytes | memoryview, now: int) -> None:
        self.result.window_deliveries += self.counting  # a delivery; its content does not matter here

    def _on_frame(self, m: Member, payload: bytes, now: int) -> None:
        if m.state == JOINED and len(payload) > 6:
            if payload[1:6] == _OK_HEAD:
                self._on_ack(m, msgpack.unpackb(payload, raw=True), now)
                return
            if payload[1:9] == _ERROR_HEAD:
                frame = msgpack.unpackb(payload, raw=False)
                self.inflight[m.index].pop(frame.get("id"), None)  # its slot is not refilled
                self.result.error(f"error_{frame.get('code')}", f"member {m.index}: {frame.get('message', '')}")
                return
        super()._on_frame(m, payload, now)

    def _on_ack(self, m: Member, frame: dict[bytes, Any], now: int) -> None:
        sent = self.inflight[m.index].pop(frame.get(b"id"), None)  # type: ignore[arg-type]
        if sent is None:
            self.unexpected_acks += 1
            self.result.error("unexpected_ok", f"member {m.index}: id {frame.get(b'id')}")
            return
        self.result.acks += 1
        if self.w_start <= now < self.w_end:
            self.window_acks += 1
            self.ack_latencies_ns.append(now - sent)
        if self.sending:
            self._send_request(m)

    def _send_request(self, m: Member) -> None:
        k = m.k
        m.k = k + 1
        request_id = k & 0xFFFFFFFF
        payload = msgpack.packb({"t": "chat_send", "id": request_id, "room": m.room_id, "cid": f"{m.index}-{k}",
                                 "text": _TEXT})
        self.inflight[m.index][request_id] = time.perf_counter_ns()
        self._write(m, client_frame(payload))
        self.result.sent += 1

    def _in_flight(self) -> int:
        return sum(len(pending) for m, pending in zip(self.members, self.inflight, strict=True) if m.state != DEAD)

    def run_window(self, *, seconds: float, warmup: float, drain: float,
                   server_cpu: Callable[[], float | None] | None = None) -> None:
        """Fill every member's window, keep it full for warm-up + seconds, then drain (bounded)."""
        result = self.result
        senders = [m for m in self.members if m.state == JOINED]
        if not senders:
            return
        start = time.perf_counter_ns()
        self.w_start = start + int(warmup * 1e9)
        self.w_end = self.w_start + int(seconds * 1e9)
        hard_end = self.w_end + int(drain * 1e9)
        self.sending = True
        for _ in range(self.window):
            for m in senders:
                self._send_request(m)
        cpu0: float | None = None
        lg0 = busy0 = 0.0
        times0 = os.times()
        mark0 = 0
        window_open = window_closed = False
        while True:
            now = time.perf_counter_ns()
            if not window_open and now >= self.w_start:
                window_open = True
                self.counting = 1
                mark0 = now
                cpu0 = server_cpu() if server_cpu else None
                lg0 = time.process_time()
                times0 = os.times()
                busy0 = machine_busy_seconds()
            if window_open and not window_closed and now >= self.w_end:
                window_closed = True
                self.sending = False
                self.counting = 0
                cpu1 = server_cpu() if server_cpu else None
                result.loadgen_cpu_s = time.process_time() - lg0
                times1 = os.times()
                result.machine_busy_s = machine_busy_seconds() - busy0
                result.loadgen_user_s = times1.user - times0.user
                result.loadgen_sys_s = times1.system - times0.system
                result.window_s = (time.perf_counter_ns() - mark0) / 1e9
                if cpu0 is not None and cpu1 is not None:
                    result.server_cpu_s = cpu1 - cpu0
            if window_closed and (now >= hard_end or not self._in_flight()):
                break
            if not sum(self.room_size):
                result.error("all_members_lost")
                break
            wake = self.w_start if not window_open else self.w_end if not window_closed else hard_end
            self._poll(max(0.0, min((wake - now) / 1e9, 0.05)))
        self.sending = False
        self.unacked = self._in_flight()

    def figures(self) -> dict[str, Any]:
        r = self.result
        window = r.window_s
        lat = sorted(self.ack_latencies_ns)
        return {
            "acked_per_s": round(self.window_acks / window, 1) if window else 0.0,
            "p50_ms": _pct_ms(lat, 0.50),
            "p99_ms": _pct_ms(lat, 0.99),
            "server_cpu_util": round(r.server_cpu_s / window, 3) if r.server_cpu_s is not None and window else None,
            "loadgen_cpu_util": round(r.loadgen_cpu_s / window, 3) if window else None,
            "errors": sum(r.error_kinds.values()),
            "acked_in_window": self.window_acks,
            "p90_ms": _pct_ms(lat, 0.90),
            "max_ms": _pct_ms(lat, 1.0),
            "sent": r.sent,
            "acked": r.acks,
            "unacked": self.unacked,
            "chat_deliveries_per_s": round(r.window_deliveries / window, 1) if window else 0.0,
            "other_cpu_util": r._other_util(),
            "window_s": round(window, 3),
            "members_joined": r.joined,
            "setup_s": round(r.setup_s, 2),
            "error_kinds": dict(sorted(r.error_kinds.items())),
            "error_samples": r.error_samples,
        }


# -- orchestration -----------------------------------------------------------------------------------


def _server_cpu_reader(gen: AckLoad, pid: int) -> Callable[[], float | None]:
    def read() -> float | None:
        try:
            return proc_cpu_seconds(pid)
        except OSError:
            gen.result.error("server_cpu_unreadable", f"/proc/{pid}/stat")
            return None
    return read


def run_mode(args: argparse.Namespace, mode: str, *, cpu: int | None, workdir: Path, key: Path,
             tokens: Sequence[str], config: Path) -> dict[str, Any]:
    """One server with store ``mode``, the closed-loop load against it, the server stopped."""
    data = workdir / f"data-{mode}"
    stats_file = workdir / f"stats-{mode}.json"
    argv = [sys.executable, "-m", "roost.bench.durable", "--serve", "--port", "0", "--data", str(data),
            "--key", str(public_path_for(key)), "--config", str(config), "--store", mode,
            "--stats-file", str(stats_file), "--log-level", args.log_level]
    server = ServerProcess(argv, cpu=cpu, workdir=workdir, name=f"engine-{mode}")
    figures: dict[str, Any]
    try:
        lines = server.read_announcement(["ROOST_URL", "BENCH_STORE"], SERVER_START_TIMEOUT)
        gen = AckLoad(lines["ROOST_URL"], tokens, rooms=args.rooms, members=args.clients // args.rooms,
                      window=args.window)
        try:
            gen.setup(args.setup_timeout)
            if gen.result.joined:
                gen.run_window(seconds=args.seconds, warmup=args.warmup, drain=args.drain,
                               server_cpu=_server_cpu_reader(gen, server.pid))
            else:
                gen.result.error("no_member_joined")
        finally:
            gen.close()
        figures = gen.figures()
        figures["server"] = {"pid": server.pid, "cpus": server.affinity()}
    finally:
        status = server.stop()
    figures["server"]["exit_status"] = status
    figures["server"]["stop_s"] = round(server.stop_s or 0.0, 3)
    with contextlib.suppress(OSError, ValueError):
        stats = json.loads(stats_file.read_text())
        figures["store"] = stats
        if stats.get("transactions"):
            figures["commits_per_txn"] = round(stats["commits"] / stats["transactions"], 2)
            figures["acked_per_txn"] = round(figures["acked"] / stats["transactions"], 2)
    tail = server.stderr_tail()
    if tail:
        figures["server_stderr"] = tail
    return figures


def _pins(args: argparse.Namespace) -> tuple[int | None, int | None]:
    cpus = _available_cpus()
    if args.no_pin or args.server_cpu == args.loadgen_cpu or not {args.server_cpu, args.loadgen_cpu} <= cpus:
        return None, None
    return args.server_cpu, args.loadgen_cpu


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Run the engine's group commit, then each baseline, under the same load; return every figure."""
    modes = ["group", *args.baselines]
    pins = _pins(args)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="roost-durable-") as tmp, _pinned(pins[1]):
        workdir = Path(tmp)
        key = workdir / "bench-key.jwk"
        write_key_pair(key)
        config = workdir / "bench.toml"
        config.write_text(f"rate = {float(RATE_LIMIT)}\nburst = {RATE_LIMIT}\n", encoding="utf-8")
        tokens = mint_tokens(key, args.clients, tag="durable")
        for mode in modes:
            runs[mode] = run_mode(args, mode, cpu=pins[0], workdir=workdir, key=key, tokens=tokens, config=config)
    group = runs["group"]
    base = runs.get("message")
    turn = runs.get("turn")
    memory = runs.get("memory")
    direct = runs.get("direct")
    ratio = None
    if base is not None and base["acked_per_s"]:
        ratio = round(group["acked_per_s"] / base["acked_per_s"], 2)
    result: dict[str, Any] = {key: group[key] for key in METRICS}
    result.update(
        baseline_acked_per_s=base["acked_per_s"] if base else None,
        ratio=ratio,
        baseline_p50_ms=base["p50_ms"] if base else None,
        baseline_p99_ms=base["p99_ms"] if base else None,
        baseline_server_cpu_util=base["server_cpu_util"] if base else None,
        turn_baseline_acked_per_s=turn["acked_per_s"] if turn else None,
        turn_ratio=round(group["acked_per_s"] / turn["acked_per_s"], 2) if turn and turn["acked_per_s"] else None,
        memory_acked_per_s=memory["acked_per_s"] if memory else None,
        memory_ratio=(round(group["acked_per_s"] / memory["acked_per_s"], 2)
                      if memory and memory["acked_per_s"] else None),
        memory_server_cpu_util=memory["server_cpu_util"] if memory else None,
        direct_acked_per_s=direct["acked_per_s"] if direct else None,
        direct_ratio=(round(group["acked_per_s"] / direct["acked_per_s"], 2)
                      if direct and direct["acked_per_s"] else None),
        direct_p50_ms=direct["p50_ms"] if direct else None,
        direct_server_cpu_util=direct["server_cpu_util"] if direct else None,
        errors=sum(run["errors"] for run in runs.values()),
        clients=args.clients,
        rooms=args.rooms,
        members_per_room=args.clients // args.rooms,
        window=args.window,
        seconds=args.seconds,
        warmup=args.warmup,
        sync=True,
        pinned={"server_cpu": pins[0], "loadgen_cpu": pins[1]},
        python=f"{platform.python_implementation()} {platform.python_version()}",
        runs=runs,
    )
    return result


def render_table(result: dict[str, Any]) -> str:
    """One column per store mode, one metric a row (plain ASCII)."""
    runs = result["runs"]
    modes = [mode for mode in STORES if mode in runs]
    pinned = result["pinned"]
    pin_text = (f"server on CPU {pinned['server_cpu']}, load generator on CPU {pinned['loadgen_cpu']}"
                if pinned["server_cpu"] is not None else "not pinned")
    width = 16
    lines = [
        (f"Roost durable chat: {result['clients']} clients in {result['rooms']} room(s) "
         f"({result['members_per_room']} per room), {result['window']} chat_send in flight per client, "
         f"ack after the LMDB commit (sync on); {result['seconds']:g} s measured after {result['warmup']:g} s "
         f"warm-up; {pin_text}; {result['python']}"),
        "",
        f"{'metric':<22}" + "".join(f"{STORE_LABELS[mode]:>{width}}" for mode in modes),
        "-" * (22 + width * len(modes)),
    ]
    rows = [*METRICS, "commits_per_txn", "acked_per_txn", "chat_deliveries_per_s", "p90_ms", "max_ms", "unacked"]
    for key in rows:
        lines.append(f"{key:<22}" + "".join(f"{_fmt(runs[mode].get(key)):>{width}}" for mode in modes))
    lines.append("")
    if result.get("memory_ratio") is not None:
        lines.append(f"memory_ratio (group commit / memory store, acked/s; durability's price, target >= 0.8): "
                     f"{_fmt(result['memory_ratio'])}")
    lines.append(f"ratio (group commit / 1 txn per message, acked/s): {_fmt(result['ratio'])}")
    if result.get("turn_ratio") is not None:
        lines.append(f"turn_ratio (group commit / 1 txn per room turn, acked/s): {_fmt(result['turn_ratio'])}")
    for mode in modes:
        run = runs[mode]
        noisy = (run["other_cpu_util"] or 0) > 0.1
        lines.append(
            f"{STORE_LABELS[mode]}: {run['acked']:,} acked of {run['sent']:,} sent, setup {run['setup_s']:g} s, "
            f"other processes {_fmt(run['other_cpu_util'])} CPU" + ("  <-- NOISY" if noisy else "")
        )
        if run["error_kinds"]:
            lines.append(f"  errors: {run['error_kinds']}")
            lines.extend(f"    {sample}" for sample in run["error_samples"][:5])
        lines.extend(f"  stderr: {line}" for line in run.get("server_stderr", [])[-5:])
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------


def _baselines(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ("memory", "message", "turn", "direct")]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("a comma-separated subset of: memory, message, turn, direct")
    return names


def _window(text: str) -> int:
    value = _positive_int(text)
    if value > 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m roost.bench durable``."""
    parser.add_argument("--clients", type=_positive_int, default=200, help="clients, N (default 200)")
    parser.add_argument("--rooms", type=_positive_int, default=20,
                        help="rooms, R; N must be a multiple of R (default 20)")
    parser.add_argument("--window", type=_window, default=4,
                        help="chat_send requests each client keeps in flight, W (default 4)")
    parser.add_argument("--seconds", type=_seconds(0.1, 3600), default=10.0, help="measured seconds, D (default 10)")
    parser.add_argument("--warmup", type=_seconds(0, 600), default=2.0,
                        help="seconds of load before measuring, excluded from the figures (default 2)")
    parser.add_argument("--drain", type=_seconds(0, 120), default=10.0,
                        help="at most this long after the window for acks still in flight (default 10)")
    parser.add_argument("--setup-timeout", type=_seconds(1, 600), default=60.0,
                        help="bound on connecting and joining all clients (default 60)")
    parser.add_argument("--baselines", type=_baselines, default=["memory", "message", "turn", "direct"],
                        help="baseline store modes to run after group commit: memory (the in-memory store: "
                             "memory_ratio's baseline), message (1 fsync per message: the ratio's baseline), "
                             "turn (1 fsync per room turn), direct (group commit straight into LMDB, without "
                             "the store's log: direct_ratio's baseline); default memory,message,turn,direct")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to (default 0)")
    parser.add_argument("--loadgen-cpu", type=int, default=1, help="CPU this process is pinned to (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="the server's log level (default warning)")


def run(args: argparse.Namespace) -> int:
    """Print the table, then one line holding a single JSON object with every figure."""
    if args.clients % args.rooms:
        print(f"bench durable: --clients ({args.clients}) must be a multiple of --rooms ({args.rooms})",
              file=sys.stderr)
        return 2
    try:
        result = collect(args)
    except ServerError as exc:
        print(f"bench durable: {exc}", file=sys.stderr)
        return 1
    print(render_table(result))
    print(json.dumps(result, separators=(",", ":")))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if "--serve" in sys.argv[1:]:
        sys.exit(serve_main(sys.argv[1:]))
    print("usage: python -m roost.bench durable [options]  (or python -m roost.bench.durable --serve ...)", file=sys.stderr)
    sys.exit(2)
