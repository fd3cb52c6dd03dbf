"""Instructions (callgrind) and syscalls per inbound ``chat_send``: a closed loop against one engine.

``python -m roost.bench.inbound --rooms 200 --members 1 --store lmdb --messages 2000`` starts the engine
(``--serve``: an ``Engine`` on 127.0.0.1 port 0 with the chosen store, its own test key, the tokens
written to a file) under ``valgrind --tool=callgrind --instr-atstart=no``, joins R x P members with
``bench fanout``'s :class:`~roost.bench.fanout.LoadGenerator` in this process, runs ``--warmup``
closed-loop rounds, then turns instrumentation on (``callgrind_control -i on``), runs rounds until
``--messages`` chat_sends were acknowledged, turns it off and dumps. A round: every member sends one
``chat_send``, then the round ends when every ``ok`` and every delivery has come back (closed loop: the
server is never offered more than one message per member). Prints ``Ir`` total and per message.

``--tool perf`` runs the server plain and counts syscalls with ``perf stat`` on the syscall tracepoints,
attached to the server for exactly the measured rounds (exact counts per message). ``--tool strace`` runs the server under ``strace -c -f`` instead (the same rounds; syscall counts per
message over the whole run, setup included, so run enough messages for setup to vanish), ``--tool
none`` runs it plain (a smoke test of the driver). Instruction counts are exact and repeatable on a
shared machine; nothing here times anything.
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

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
PERF_SYSCALLS = ("recvfrom", "sendto", "epoll_ctl", "epoll_wait", "futex", "pwrite64", "fdatasync")


def serve(argv: list[str]) -> int:
    """The server side: an engine with ``--store`` until SIGTERM; prints ``ROOST_URL=...``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--store", choices=("lmdb", "memory"), default="lmdb")
    parser.add_argument("--data", required=True)
    parser.add_argument("--tokens", type=int, required=True)
    args = parser.parse_args(argv)
    import gc
    import signal

    import trio

    from roost.app import Engine
    from roost.store.lmdb import LmdbStore
    from roost.store.memory import MemoryStore
    from roost.testing import TestKeys, test_config

    keys = TestKeys()
    Path(args.data, "tokens.json").write_text(json.dumps([keys.token(f"u{i}") for i in range(args.tokens)]))
    config = test_config(keys, rate=1000.0, burst=1000, heartbeat_default_ms=300_000,
                         max_pending_handshakes=1000)
    if args.store == "lmdb":
        store = LmdbStore(Path(args.data) / "db")
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

    trio.run(main)
    return 0


def _rounds(gen, count: int, timeout: float) -> int:  # noqa: ANN001 - a LoadGenerator
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--serve" in argv:
        return serve(argv)
    parser = argparse.ArgumentParser(prog="python -m roost.bench.inbound")
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--members", type=int, default=1)
    parser.add_argument("--store", choices=("lmdb", "memory"), default="lmdb")
    parser.add_argument("--messages", type=int, default=2000, help="chat_sends measured (whole rounds)")
    parser.add_argument("--warmup", type=int, default=5, help="rounds before measuring")
    parser.add_argument("--keep", default=None, help="copy the callgrind dump here (for callgrind_annotate)")
    parser.add_argument("--tool", choices=("callgrind", "perf", "strace", "none"), default="callgrind")
    args = parser.parse_args(argv)
    from .fanout import LoadGenerator, ServerProcess

    total = args.rooms * args.members
    with tempfile.TemporaryDirectory(prefix="roost-inbound-") as tmp:
        out = Path(tmp) / "callgrind.out"
        server_argv = [sys.executable, "-m", "roost.bench.inbound", "--serve", "--store", args.store,
                       "--data", tmp, "--tokens", str(total)]
        if args.tool == "callgrind":
            server_argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                           *server_argv]
        elif args.tool == "strace":
            server_argv = ["strace", "-c", "-f", "-o", str(Path(tmp) / "strace.txt"), *server_argv]
        server = ServerProcess(server_argv, cpu=0 if os.cpu_count() and os.cpu_count() > 1 else None,
                               workdir=Path(tmp), name="engine")
        try:
            url = server.read_announcement(["ROOST_URL"], 300.0)["ROOST_URL"]
            tokens = json.loads(Path(tmp, "tokens.json").read_text())
            gen = LoadGenerator(url, tokens, rooms=args.rooms, members=args.members)
            gen.w_start, gen.w_end, gen.counting = 0, 1 << 62, 1
            gen.setup(300.0)
            if gen.result.joined != total:
                raise RuntimeError(f"only {gen.result.joined} of {total} members joined")
            _rounds(gen, args.warmup, 120.0)
            rounds = max(1, args.messages // total)
            perf = None
            if args.tool == "callgrind":
                subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
            elif args.tool == "perf":
                events = ",".join(f"syscalls:sys_enter_{name}" for name in PERF_SYSCALLS)
                perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(server.pid),
                                         "-o", str(Path(tmp) / "perf.txt")])
                time.sleep(1.0)  # perf attaches
            measured = _rounds(gen, rounds, 300.0)
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait(30)
            if args.tool == "callgrind":
                subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True)
                subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
            gen.close()
        finally:
            server.stop()
        result: dict[str, object] = {"rooms": args.rooms, "members": args.members, "store": args.store,
                                     "messages": measured, "tool": args.tool}
        if args.tool == "callgrind":
            time.sleep(0.5)
            files = sorted(Path(tmp).glob("callgrind.out.*"))  # the dump (not the file written at exit)
            ir = 0
            for path in files:
                if args.keep:
                    shutil.copy(path, args.keep)
                match = re.search(r"^totals: (\d+)", path.read_text(errors="replace"), re.M)
                if match:
                    ir += int(match.group(1))
            result["ir"] = ir
            result["ir_per_message"] = round(ir / measured)
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
            result["per_message"] = {k: round(v / (measured + args.warmup * total), 2)
                                     for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:12]}
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
