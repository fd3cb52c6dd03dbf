"""Kill the engine with SIGKILL while clients chat; check that nothing acknowledged was lost.

``python -m roost.bench crash --cycles 20`` runs ``roost serve`` as a subprocess on one LMDB directory and
one port, with writer clients sending chat messages as fast as acknowledgements come back. Each cycle
kills the server with SIGKILL at a random moment and starts it again; the clients (the real Trio client)
reconnect, resume their room and re-send what was in flight (same client op id). At the end every
acknowledged message must be in the room's history exactly once, in the order it was acknowledged.
The suite runs the same check with 5 cycles (``tests/test_crash.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from roost.keys import read_private_key
from roost.client import Client, ClientError, RequestError, start_client
from roost.protocol.tokens import new_claims, sign

__all__ = ["CrashResult", "DevServer", "add_arguments", "check_stored", "crash_cycles", "free_port", "run"]

ROOM_CODE = "crash-test"


@dataclass
class CrashResult:
    """What a crash run saw; ``problems`` is empty when every promise held."""

    cycles: int
    acked: int = 0
    stored: int = 0
    duplicates: int = 0
    missing: int = 0
    out_of_order: int = 0
    restarts_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevServer:
    """One ``roost serve --dev`` process on a fixed port and data directory (tests/test_inbox_crash.py
    kills one too). ``start`` returns the ``ROOST_*`` lines it printed, through the service key."""

    def __init__(self, data: Path, port: int, *args: str, env: dict[str, str] | None = None) -> None:
        self.data, self.port = data, port
        self.args = args
        """More ``roost serve`` arguments (a cluster node: ``--cluster URL --key OTHER_DEV_KEY``)."""
        self.env = env or {}
        self.process: subprocess.Popen[str] | None = None

    async def start(self) -> dict[str, str]:
        # The history must hold every message of the run: the checker reads it back, and messages
        # past ``history_limit`` (10 000 by default) are dropped, not lost (20 cycles on a fast
        # machine acknowledged 10.7 k: the oldest 721 reported missing).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROOST_RATE": "100000", "ROOST_BURST": "100000",
               "ROOST_HISTORY_LIMIT": "10000000", **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", str(self.port), "--data", str(self.data),
             "--log-level", "warning", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        lines: dict[str, str] = {}
        stdout = self.process.stdout
        assert stdout is not None
        with trio.fail_after(30):
            while "ROOST_SERVICE_KEY" not in lines:
                line = await trio.to_thread.run_sync(stdout.readline)
                if not line:
                    raise RuntimeError("the server exited during start-up")
                key, _, value = line.strip().partition("=")
                lines[key] = value
        return lines

    async def kill(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(self.process.wait)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


async def _writer(client: Client, room: str, name: str, acked: list[tuple[str, int]], stop: trio.Event) -> None:
    i = 0
    while not stop.is_set():
        cid = f"{name}-{i}"
        try:
            ack = await client.chat_send(room, f"{name} says {i}", cid=cid)
        except RequestError as error:
            if error.code.value == "rate_limited":
                await trio.sleep((error.retry_ms or 10) / 1000)
                continue
            raise
        acked.append((cid, ack.n))
        i += 1


async def _drain(client: Client, seen: list[int]) -> None:
    """Read the room's events (the writers do not need them, but a client must read its events)."""
    async for _event in client.events():
        seen[0] += 1


async def _history(client: Client, room: str) -> list[Any]:
    messages: list[Any] = []
    before = None
    while True:
        page = await client.history(room, before=before, limit=100)
        messages[:0] = page.messages
        if page.next is None:
            return messages
        before = page.next


async def crash_cycles(data: Path, *, cycles: int, writers: int = 3, seed: int | None = None,
                       min_run: float = 0.2, max_run: float = 0.8) -> CrashResult:
    """Run ``cycles`` kill-and-restart cycles; return what was checked."""
    rng = random.Random(seed)
    result = CrashResult(cycles=cycles)
    port = free_port()
    server = DevServer(data, port)
    acked: dict[str, list[tuple[str, int]]] = {f"w{i}": [] for i in range(writers)}
    try:
        lines = await server.start()
        kid, key = read_private_key(Path(lines["ROOST_DEV_KEY"]))
        url = lines["ROOST_URL"]

        def token(sub: str) -> str:
            return sign(new_claims(sub=sub, name=sub, kid=kid, now=time.time(), ttl=3600), key)

        async with trio.open_nursery() as nursery:
            clients = [
                await start_client(nursery, url, token(name), max_backoff=0.2, backoff_base=0.02,
                                     connect_timeout=5.0, heartbeat_ms=2000)
                for name in acked
            ]
            room = (await clients[0].join_or_create(ROOM_CODE)).room
            for client in clients[1:]:
                await client.join(room=room)
            stop = trio.Event()
            events = [0]
            for client in clients:
                nursery.start_soon(_drain, client, events)
            async with trio.open_nursery() as writers_nursery:
                for client, (name, log) in zip(clients, acked.items(), strict=True):
                    writers_nursery.start_soon(_writer, client, room, name, log, stop)
                for _ in range(cycles):
                    await trio.sleep(rng.uniform(min_run, max_run))
                    await server.kill()
                    started = time.monotonic()
                    await server.start()
                    result.restarts_s.append(time.monotonic() - started)
                await trio.sleep(max_run)  # let the writers get through a final stretch
                stop.set()
            checker = await start_client(nursery, url, token("checker"), reconnect=False)
            await checker.join(room=room)
            stored = await _history(checker, room)
            nursery.cancel_scope.cancel()
    except ClientError as error:
        result.problems.append(f"client error: {error!r}")
        return result
    finally:
        await server.kill()
    check_stored(acked, stored, result)
    return result


def check_stored(acked: dict[str, list[tuple[str, int]]], stored: list[Any], result: CrashResult) -> None:
    """Every acknowledged message (each writer's ``(cid, n)`` in the order acked) stored once, with
    the number it was acknowledged with, each writer's in increasing order: counted into ``result``."""
    counts: dict[str, int] = {}
    for message in stored:
        if message.cid is not None:
            counts[message.cid] = counts.get(message.cid, 0) + 1
    n_of = {message.cid: message.n for message in stored}
    result.stored = len(stored)
    for name, log in acked.items():
        result.acked += len(log)
        previous = 0
        for cid, n in log:
            if cid not in counts:
                result.missing += 1
                result.problems.append(f"acknowledged {cid} (n={n}) is missing")
                continue
            if n_of[cid] != n:
                result.problems.append(f"{cid} was acknowledged as n={n} but is stored as n={n_of[cid]}")
            if n <= previous:
                result.out_of_order += 1
                result.problems.append(f"{name}: {cid} acknowledged as n={n} after n={previous}")
            previous = n
    result.duplicates = sum(count - 1 for count in counts.values() if count > 1)
    if result.duplicates:
        result.problems.append(f"{result.duplicates} duplicated messages")
    if result.acked == 0:
        result.problems.append("no message was acknowledged")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m roost.bench crash``."""
    parser.add_argument("--cycles", type=int, default=20, help="kill/restart cycles (default 20)")
    parser.add_argument("--writers", type=int, default=3, help="clients sending chat (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for the kill moments")
    parser.add_argument("--data", default=None, help="LMDB directory (default: a fresh temporary one)")


def run(args: argparse.Namespace) -> int:
    """Run the cycles, print a summary and a final JSON line; exit 1 if anything was lost."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="roost-crash-") as tmp:
        data = Path(args.data) if args.data else Path(tmp)
        result = trio.run(lambda: crash_cycles(data, cycles=args.cycles, writers=args.writers, seed=args.seed))
    restarts = sorted(result.restarts_s)
    print(f"crash test: {result.cycles} SIGKILL cycles, {result.acked} messages acknowledged, "
          f"{result.stored} stored; missing {result.missing}, duplicated {result.duplicates}, "
          f"out of order {result.out_of_order}")
    if restarts:
        print(f"restart to serving: median {restarts[len(restarts) // 2]:.2f} s, max {restarts[-1]:.2f} s")
    for problem in result.problems[:20]:
        print("PROBLEM:", problem)
    print(json.dumps({"bench": "crash", **result.__dict__, "problems": result.problems[:20]}))
    return 1 if result.problems else 0
