"""Instructions (callgrind) and syscalls per inbound ``chat_send``, and by layer: a closed loop against one engine.

``python -m roost.bench inbound --rooms 200 --members 1 --store lmdb --messages 2000`` starts the
engine (``--serve``: an ``Engine`` on 127.0.0.1 port 0 with the chosen store, its own test key, the
rate limit lifted, the tokens written to a file) under ``valgrind --tool=callgrind
--instr-atstart=no``, joins R x P members with ``bench fanout``'s
:class:`~roost.bench.fanout.LoadGenerator` in this process, warms up, then turns instrumentation on
(``callgrind_control -i on``), measures ``--messages`` chat_sends, turns it off and dumps. Prints
``Ir`` total and per message (every thread of the server: the LMDB writer too). ``--shapes
200x1,10x10`` runs several R x P in turn (one JSON line each).

Two loops:

- **rounds** (the default): every member sends one ``chat_send``; the round ends when every ``ok``
  and every delivery has come back (the server is never offered more than one message per member);
  ``--warmup`` rounds first, then whole rounds up to ``--messages``;
- **in flight** (``--senders S``): S members per room each keep one ``chat_send`` in flight, an
  ``ok`` sends the next (deliveries are not waited for): ``--rooms 1 --members 10 --senders 1`` is one
  message at a time in the whole server (a lone commit per message), ``10 10`` ten rooms committing
  concurrently: the commit path's figure (group commit). ``--warmup`` acks first, then ``--messages``.

``--grace`` gives every room a pending timer for the measurement: one more member per room joins and
drops its connection (no Close) before the warm-up, and stays in its reconnect grace (the server's
``reconnect_grace`` is an hour, longer than any run). Without it the measured rooms have no timer at
all (every member is online, nobody types, no receipt window opens): the scheduler's park then needs
no deadline, which is not how a room with members lives in real use.

``--layers`` adds the per-layer table (markdown) of the measured messages: frame parse, msgpack
decode, schema walk, rate limit, hand-off, room turn, encode, durable records, LMDB plan and
transaction, flush, GC and the residual, exact instruction counts, none counted twice (how:
:mod:`roost.bench.layers`), then the top 15 functions by exclusive instructions. It needs gcc (the
server compiles its layer wrappers at start-up).

``--tool perf`` runs the server plain and counts syscalls with ``perf stat`` on the syscall
tracepoints, attached to the server for exactly the measured messages (exact counts per message).
``--tool strace`` runs the server under ``strace -c -f`` instead (syscall counts per message over the
whole run, setup included, so run enough messages for setup to vanish); ``--tool none`` runs it
plain and prints messages/s (a smoke test of the driver; with ``--layers`` also the calls counted
per layer). Instruction counts are exact and repeatable on a shared machine; nothing else here is.
Every wait is bounded (``--timeout``); the run stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from . import layers as layer_table

__all__ = ["add_arguments", "main", "run", "serve"]

PERF_SYSCALLS = ("recvfrom", "sendto", "epoll_ctl", "epoll_wait", "futex", "pwrite64", "fdatasync")
_TEXT = "durable bench message, about sixty-four bytes long, padded to it"


def serve(argv: list[str]) -> int:
    """The server side: an engine with ``--store`` until SIGTERM; prints ``ROOST_URL=...``.

    With ``--layers`` the layer wrappers are installed first (:func:`roost.bench.layers.install`)
    and the calls counted per layer are written to ``layer-calls.json`` on the way out."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--store", choices=("lmdb", "memory"), default="lmdb")
    parser.add_argument("--data", required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--layers", action="store_true")
    args = parser.parse_args(argv)
    import gc

    import trio

    counts = layer_table.install(Path(args.data)) if args.layers else None

    from roost.app import Engine
    from roost.store.lmdb import LmdbStore
    from roost.store.memory import MemoryStore
    from roost.testing import TestKeys, test_config

    keys = TestKeys()
    Path(args.data, "tokens.json").write_text(json.dumps([keys.token(f"u{i}") for i in range(args.tokens)]))
    config = test_config(keys, rate=1e6, burst=1_000_000, heartbeat_default_ms=300_000,
                         max_pending_handshakes=1000, reconnect_grace=3600.0)
    if args.store == "lmdb":
        store: Any = LmdbStore(Path(args.data) / "db")
        store.open()
    else:
        store = MemoryStore()

    async def main() -> None:
        engine = Engine(config, store=store)
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(engine.serve)
            gc.collect()
            gc.freeze()
            print(f"ROOST_URL=ws://{host}:{port}/", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        if counts is not None:
            Path(args.data, "layer-calls.json").write_text(json.dumps(counts()))
    return 0


def _generator(url: str, tokens: list[str], rooms: int, members: int) -> Any:
    """The load generator of either loop (a subclass: the in-flight loop answers each ``ok``)."""
    from .fanout import _JOINED, LoadGenerator, client_frame

    class InFlight(LoadGenerator):
        in_flight = False
        acks = 0
        sent = 0

        def _on_frame(self, m: Any, payload: bytes, now: int) -> None:
            if self.in_flight and m.state == _JOINED and payload[1:6] == b"\xa1t\xa2ok":
                self.acks += 1
                self.send(m)
                return
            super()._on_frame(m, payload, now)

        def _on_chat(self, m: Any, payload: bytes | memoryview, now: int) -> None:
            if not self.in_flight:
                super()._on_chat(m, payload, now)

        def send(self, m: Any) -> None:
            self.sent += 1
            self._write(m, client_frame(msgpack.packb({"t": "chat_send", "id": self.sent & 0xFFFFFFF,
                                                       "room": m.room_id, "cid": f"c{self.sent}", "text": _TEXT})))

    return InFlight(url, tokens, rooms=rooms, members=members)


def _rounds(gen: Any, count: int, timeout: float) -> int:
    """``count`` closed-loop rounds; returns the chat_sends acknowledged."""
    from .fanout import _JOINED
    senders = [m for m in gen.members if m.state == _JOINED]
    acked = 0
    for _ in range(count):
        acks0, deliveries0 = gen.result.acks, gen.result.window_deliveries
        for m in senders:
            gen._send_chat(m)
        want_deliveries = sum(gen.room_size[m.room] for m in senders)
        deadline = time.monotonic() + timeout
        while (gen.result.acks - acks0 < len(senders) or gen.result.window_deliveries - deliveries0 < want_deliveries):
            if time.monotonic() > deadline:
                raise RuntimeError(f"round timed out: {gen.result.acks - acks0} acks of {len(senders)}, "
                                   f"errors {gen.result.error_samples}")
            gen._poll(0.05)
        acked += len(senders)
    return acked


def _drop(gen: Any, members: list[Any]) -> None:
    """Close these members' sockets without a Close (each room's member enters its reconnect grace),
    then give the server a moment to see it (the presence diffs it sends are read and ignored)."""
    for m in members:
        gen._lose(m, "dropped", count=False)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        gen._poll(0.05)


def _wait_acks(gen: Any, count: int, timeout: float) -> None:
    """In flight: poll until ``count`` acks in all (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while gen.acks < count:
        if time.monotonic() > deadline or not sum(gen.room_size):
            raise RuntimeError(f"only {gen.acks} of {count} acks ({gen.result.error_kinds})")
        gen._poll(0.05)


def _shape(text: str) -> tuple[int, int]:
    rooms, sep, members = text.partition("x")
    try:
        shape = int(rooms), int(members)
    except ValueError:
        shape = (0, 0)
    if not sep or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"want ROOMSxMEMBERS, like 200x1, not {text!r}")
    return shape


def _shapes(text: str) -> list[tuple[int, int]]:
    return [_shape(part) for part in text.split(",")]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a positive integer, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rooms", type=_positive, default=200)
    parser.add_argument("--members", type=_positive, default=1)
    parser.add_argument("--shapes", type=_shapes, default=None,
                        help="several ROOMSxMEMBERS, comma-separated (instead of --rooms/--members)")
    parser.add_argument("--store", choices=("lmdb", "memory"), default="lmdb")
    parser.add_argument("--messages", type=_positive, default=2000,
                        help="chat_sends measured (whole rounds; acks with --senders)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="rounds before measuring (default 5); acks with --senders (default 200)")
    parser.add_argument("--senders", type=_positive, default=None,
                        help="in-flight loop: members per room each keeping one chat_send in flight")
    parser.add_argument("--grace", action="store_true",
                        help="one more member per room drops its connection first: every room has a timer")
    parser.add_argument("--layers", action="store_true", help="the per-layer table (callgrind; needs gcc)")
    parser.add_argument("--top", type=int, default=None,
                        help="print the N functions with the most exclusive Ir (default 15 with --layers, else 0)")
    parser.add_argument("--keep", default=None, help="copy the callgrind dump here (for callgrind_annotate)")
    parser.add_argument("--tool", choices=("callgrind", "perf", "strace", "none"), default="callgrind")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on each wait, in s (default 900)")


def run(args: argparse.Namespace) -> int:
    shapes = args.shapes or [(args.rooms, args.members)]
    if args.layers and args.tool not in ("callgrind", "none"):
        raise SystemExit("--layers needs --tool callgrind (or none, a smoke test)")
    for rooms, members in shapes:
        keep = args.keep if args.keep is None or len(shapes) == 1 else f"{args.keep}.{rooms}x{members}"
        result = measure(args, rooms, members, keep)
        if "table" in result:
            print(result.pop("table"))
            print()
        print(json.dumps(result), flush=True)
    return 0


def measure(args: argparse.Namespace, rooms: int, members: int, keep: str | None) -> dict[str, Any]:
    """One R x P run: start the server, join, warm up, measure, stop; the figures as a dict."""
    from .fanout import ServerProcess

    total = rooms * members
    joining = rooms * (members + 1) if args.grace else total  # member i is in room i % rooms
    in_flight = args.senders is not None
    warmup = args.warmup if args.warmup is not None else (200 if in_flight else 5)
    with tempfile.TemporaryDirectory(prefix="roost-inbound-") as tmp:
        out = Path(tmp) / "callgrind.out"
        server_argv = [sys.executable, "-m", "roost.bench.inbound", "--serve", "--store", args.store,
                       "--data", tmp, "--tokens", str(joining), *(["--layers"] if args.layers else [])]
        if args.tool == "callgrind":
            extra = layer_table.valgrind_options() if args.layers else []
            server_argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                           *extra, *server_argv]
        elif args.tool == "strace":
            server_argv = ["strace", "-c", "-f", "-o", str(Path(tmp) / "strace.txt"), *server_argv]
        cpus = os.cpu_count() or 1
        server = ServerProcess(server_argv, cpu=0 if cpus > 1 else None, workdir=Path(tmp), name="engine")
        try:
            url = server.read_announcement(["ROOST_URL"], min(300.0, args.timeout))["ROOST_URL"]
            tokens = json.loads(Path(tmp, "tokens.json").read_text())
            gen = _generator(url, tokens, rooms, members + 1 if args.grace else members)
            try:
                gen.w_start, gen.w_end, gen.counting = 0, 1 << 62, 1
                gen.setup(min(300.0, args.timeout))
                if gen.result.joined != joining:
                    raise RuntimeError(f"only {gen.result.joined} of {joining} members joined ({gen.result.error_kinds})")
                if args.grace:
                    _drop(gen, gen.members[total:])
                if in_flight:
                    gen.in_flight = True
                    for m in gen.members[: rooms * min(args.senders, members)]:  # member i is in room i % rooms
                        gen.send(m)
                    _wait_acks(gen, warmup, args.timeout)
                else:
                    _rounds(gen, warmup, args.timeout)
                perf = None
                if args.tool == "callgrind":
                    subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
                elif args.tool == "perf":
                    events = ",".join(f"syscalls:sys_enter_{name}" for name in PERF_SYSCALLS)
                    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(server.pid),
                                             "-o", str(Path(tmp) / "perf.txt")])
                    time.sleep(1.0)  # perf attaches
                started = time.perf_counter()
                if in_flight:
                    first = gen.acks
                    _wait_acks(gen, first + args.messages, args.timeout)
                    measured = gen.acks - first
                else:
                    measured = _rounds(gen, max(1, args.messages // total), args.timeout)
                elapsed = time.perf_counter() - started
                if perf is not None:
                    perf.send_signal(signal.SIGINT)
                    perf.wait(30)
                if args.tool == "callgrind":
                    subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True)
                    subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
            finally:
                gen.close()
        finally:
            server.stop()
        result: dict[str, Any] = {"rooms": rooms, "members": members, "store": args.store,
                                  **({"grace": rooms} if args.grace else {}),
                                  "loop": f"in flight, {args.senders} per room" if in_flight else "rounds",
                                  "messages": measured, "tool": args.tool}
        if args.tool == "callgrind":
            result.update(_callgrind_figures(args, Path(tmp), measured, keep, f"{rooms}x{members}"))
        elif args.tool == "perf":
            counts = {}
            for line in Path(tmp, "perf.txt").read_text().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_") and fields[0].isdigit():
                    counts[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
            result["per_message"] = {k: round(v / measured, 3) for k, v in counts.items()}
        elif args.tool == "strace":
            text = Path(tmp, "strace.txt").read_text()
            calls = {}
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
                    calls[parts[-1]] = int(parts[3])
            result["per_message"] = {k: round(v / (measured + warmup * (1 if in_flight else total)), 2)
                                     for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:12]}
        else:
            result["messages_per_s"] = round(measured / elapsed) if elapsed > 0 else None
            if args.layers:
                result["layer_calls"] = json.loads(Path(tmp, "layer-calls.json").read_text())
        return result


def _callgrind_figures(args: argparse.Namespace, tmp: Path, measured: int, keep: str | None,
                       shape: str) -> dict[str, Any]:
    time.sleep(0.5)
    files = sorted(tmp.glob("callgrind.out.*"))  # the dump of -d (not the file written at exit)
    if not files:
        raise RuntimeError("callgrind wrote no dump")
    ir = 0
    texts = []
    for path in files:
        if keep:
            shutil.copy(path, keep)
        text = path.read_text(errors="replace")
        texts.append(text)
        # "totals:" (at the end) or "summary:" (in the header, 0 in some dumps): the larger is the dump's.
        ir += max((int(value) for value in re.findall(r"^(?:totals|summary): (\d+)", text, re.M)), default=0)
    figures: dict[str, Any] = {"ir": ir, "ir_per_message": round(ir / measured)}
    count = args.top if args.top is not None else (15 if args.layers else 0)
    if args.layers or count:
        dump = layer_table.parse_dump("\n".join(texts))
        dump.total = ir
        top = layer_table.top_exclusive(dump, measured, count)
        loop = f"in flight, {args.senders}/room" if args.senders else "rounds"
        title = f"{shape}, {args.store}, {loop}: {measured} messages"
        lines = [f"### {title}"]
        if args.layers:
            rows = layer_table.layer_table(dump, measured)
            lines = [layer_table.render(rows, title=title)]
            figures["layers"] = {title: round(per) for title, per, _, _ in rows}
        if top:
            lines += ["", f"Top {len(top)} functions by exclusive Ir/msg:", "",
                      "| function | object | Ir/msg |", "|---|---|--:|"]
            lines += [f"| `{fn}` | {ob} | {per / 1000:,.1f} k |" for fn, ob, per in top]
        figures["top"] = [[fn, ob, round(per)] for fn, ob, per in top]
        figures["table"] = "\n".join(lines)
    return figures


def main(argv: list[str] | None = None) -> int:
    """``python -m roost.bench.inbound``: the server side (``--serve``), else ``bench inbound``."""
    argv = sys.argv[1:] if argv is None else argv
    if "--serve" in argv:
        return serve(argv)
    from .__main__ import main as bench_main
    return bench_main(["inbound", *argv])


if __name__ == "__main__":
    sys.exit(main())
