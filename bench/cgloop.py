"""Instructions per acknowledged ``chat_send``, from callgrind, in a closed loop (repeatable on a noisy machine).

``python -m roost.bench.cgloop lmdb|memory ROOMS MEMBERS [--senders S] [--warmup W] [--acks N] [--no-valgrind]``
starts the engine (``--serve``, below: LMDB in a fresh temporary directory or the in-memory store,
rate limit lifted) under ``valgrind --tool=callgrind --instr-atstart=no``, connects ROOMS x MEMBERS
members with ``bench fanout``'s load generator, and has S members per room (default 1) each keep one
``chat_send`` in flight: an ``ok`` sends the next. After W acks (default 200) it switches callgrind's
instrumentation on, waits for N more (default 600), dumps, and prints the instructions of the whole
server process (every thread: the LMDB writer too) divided by N. ``1 10`` is one message at a time
(a lone commit per message); ``10 10`` is ten rooms committing concurrently. Wall-clock time under
valgrind means nothing; the instruction count is deterministic to a few per mille.
``--no-valgrind`` runs the same loop natively and prints acks/s (a smoke test).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from .fanout import _JOINED, LoadGenerator, ServerProcess, client_frame

__all__ = ["main"]

_TEXT = "durable bench message, about sixty-four bytes long, padded to it"


def serve(kind: str, keyfile: str) -> None:
    """The engine on 127.0.0.1 port 0 with the chosen store; prints ``ROOST_URL=``; stops on SIGTERM."""
    import trio
    from nacl.signing import SigningKey

    from roost.app import Engine
    from roost.config import Config
    from roost.protocol.tokens import Keyring
    from roost.store.lmdb import LmdbStore
    from roost.store.memory import MemoryStore

    raw = Path(keyfile).read_bytes()
    key, kid = SigningKey(raw[:32]), raw[32:].decode()
    config = Config(host="127.0.0.1", port=0, keyring=Keyring({kid: key.verify_key}), rate=1e6, burst=1_000_000)
    data = tempfile.mkdtemp(prefix="roost-cgloop-")
    store: Any = LmdbStore(data) if kind == "lmdb" else MemoryStore()

    async def run() -> None:
        engine = Engine(config, store=store)
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(engine.serve)
            gc.collect()
            gc.freeze()
            print(f"ROOST_URL=ws://{host}:{port}/", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _signum in signals:
                    nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        shutil.rmtree(data, ignore_errors=True)


class _Loop(LoadGenerator):
    acks = 0
    sent = 0

    def _on_frame(self, m: Any, payload: bytes, now: int) -> None:
        if m.state == _JOINED and payload[1:6] == b"\xa1t\xa2ok":
            self.acks += 1
            self.send(m)
            return
        super()._on_frame(m, payload, now)

    def _on_chat(self, m: Any, payload: bytes | memoryview, now: int) -> None:
        pass

    def send(self, m: Any) -> None:
        self.sent += 1
        self._write(m, client_frame(msgpack.packb({"t": "chat_send", "id": self.sent & 0xFFFFFFF, "room": m.room_id,
                                                   "cid": f"c{self.sent}", "text": _TEXT})))

    def wait_acks(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.acks < count:
            if time.monotonic() > deadline or not sum(self.room_size):
                raise RuntimeError(f"only {self.acks} of {count} acks ({self.result.error_kinds})")
            self._poll(0.05)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(prog="python -m roost.bench.cgloop")
    parser.add_argument("store", choices=["lmdb", "memory"])
    parser.add_argument("rooms", type=int)
    parser.add_argument("members", type=int)
    parser.add_argument("--senders", type=int, default=1, help="members per room keeping one chat_send in flight")
    parser.add_argument("--warmup", type=int, default=200, help="acks before counting (default 200)")
    parser.add_argument("--acks", type=int, default=600, help="acks counted (default 600)")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run, in s (default 600)")
    parser.add_argument("--no-valgrind", action="store_true", help="run natively, print acks/s")
    args = parser.parse_args(argv)
    from roost.protocol.tokens import generate_key, new_claims, sign

    tmp = Path(tempfile.mkdtemp(prefix="roost-cgloop-driver-"))
    try:
        kid, key = generate_key()
        (tmp / "key").write_bytes(bytes(key) + kid.encode())
        out = tmp / "callgrind.out"
        command = [sys.executable, "-m", "roost.bench.cgloop", "--serve", args.store, str(tmp / "key")]
        if not args.no_valgrind:
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *command]
        server = ServerProcess(command, cpu=None, workdir=tmp, name="cgloop-server")
        try:
            url = server.read_announcement(["ROOST_URL"], 300)["ROOST_URL"]
            now = time.time()
            tokens = [sign(new_claims(sub=f"u{i}", name=f"m{i}", kid=kid, now=now, ttl=3600), key)
                      for i in range(args.rooms * args.members)]
            loop = _Loop(url, tokens, rooms=args.rooms, members=args.members)
            try:
                loop.setup(min(300.0, args.timeout))
                if loop.result.joined != args.rooms * args.members:
                    raise RuntimeError(f"only {loop.result.joined} members joined ({loop.result.error_kinds})")
                for m in loop.members[: args.rooms * args.senders]:  # member i is in room i % rooms
                    loop.send(m)
                loop.wait_acks(args.warmup, args.timeout)
                if not args.no_valgrind:
                    subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
                first, started = loop.acks, time.perf_counter()
                loop.wait_acks(first + args.acks, args.timeout)
                counted, elapsed = loop.acks - first, time.perf_counter() - started
                if not args.no_valgrind:
                    subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
            finally:
                loop.close()
        finally:
            server.stop()
        label = f"{args.store} {args.rooms}x{args.members}, {args.senders} sender(s)/room"
        if args.no_valgrind:
            print(f"{label}: {counted} acks, {counted / elapsed:,.0f} acks/s (native)")
            return 0
        total = 0
        for dump in sorted(tmp.glob("callgrind.out.*")):  # the dumps of -d (not the file written at exit)
            for line in dump.read_text().splitlines():
                if line.startswith("summary:"):
                    total += int(line.split()[1])
        print(f"{label}: {counted} acks, {total / counted / 1000:.1f} k instructions per acked chat_send")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
