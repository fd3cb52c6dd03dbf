"""``roost serve --workers N`` as real processes, with the machine's Redis under a prefix of the test's own:
one port for the node, rooms on their worker, a SIGKILLed worker restarted on its own data with every
acknowledged message, SIGTERM draining every worker, a second claimant of the data directory refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from roost.bench.crash import CrashResult, _history, _writer, check_stored
from roost.client import start_client
from roost.keys import read_private_key
from roost.protocol.tokens import new_claims, sign

from .redis_server import MACHINE_REDIS, machine_redis, unique_prefix

REDIS = f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0"


class Node:
    """``roost serve --dev --workers N`` and what it logs (JSON lines on stderr, read by a thread)."""

    def __init__(self, data: Path, workers: int, prefix: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROOST_CLUSTER_PREFIX": prefix, "ROOST_LEASE_PERIOD": "1",
               "ROOST_RATE": "100000", "ROOST_BURST": "100000"}
        self.data = data
        self.process = subprocess.Popen(
            [sys.executable, "-m", "roost.cli", "serve", "--dev", "--workers", str(workers), "--cluster", REDIS,
             "--data", str(data), "--port", "0", "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"msg": line})

    async def lines(self) -> dict[str, str]:
        assert self.process.stdout is not None
        lines: dict[str, str] = {}
        while "ROOST_SERVICE_KEY" not in lines:
            line = await trio.to_thread.run_sync(self.process.stdout.readline)
            assert line, f"the node exited: {self.events[-5:]}"
            key, _, value = line.strip().partition("=")
            lines[key] = value
        return lines

    def serving(self) -> dict[str, dict]:
        """The latest ``worker_serving`` event of each worker, by the url of its own port."""
        latest: dict[int, dict] = {}
        for event in list(self.events):
            if event.get("event") == "worker_serving":
                latest[event["worker"]] = event
        return {event["url"]: event for event in latest.values()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
async def prefix():
    prefix = unique_prefix()
    async with machine_redis(prefix):
        yield prefix


async def test_a_node_of_three_workers_places_a_room_on_one_restarts_it_when_killed_and_drains_on_sigterm(
        tmp_path: Path, prefix: str) -> None:
    node = Node(tmp_path / "data", 3, prefix)
    try:
        with trio.fail_after(120):
            lines = await node.lines()
            shared = lines["ROOST_URL"]
            kid, key = read_private_key(Path(lines["ROOST_DEV_KEY"]))

            def token(sub: str) -> str:
                return sign(new_claims(sub=sub, name=sub, kid=kid, now=time.time(), ttl=3600), key)

            workers = node.serving()
            assert len(workers) == 3 and shared not in workers
            pids = {event["pid"] for event in workers.values()}
            assert len(pids) == 3 and all(Path(f"/proc/{pid}").exists() for pid in pids)
            for index in range(3):
                assert (tmp_path / "data" / "workers" / str(index) / "db").is_dir()
            acked: dict[str, list[tuple[str, int]]] = {f"w{index}": [] for index in range(4)}
            async with trio.open_nursery() as nursery:
                clients = [await start_client(nursery, shared, token(name), max_backoff=0.2, backoff_base=0.02,
                                              connect_timeout=5.0, heartbeat_ms=2000) for name in acked]
                snaps = [await client.join_or_create("WORKERS-ROOM") for client in clients]
                room = snaps[0].room
                assert {snap.room for snap in snaps} == {room}
                # Every member was sent to the room's worker's own port, which a reconnect reaches again.
                owner_url = clients[0].url
                assert owner_url in workers and {client.url for client in clients} == {owner_url}
                assert all(client.moves >= 1 for client in clients)

                async def drain(client) -> None:
                    async for _event in client.events():
                        pass

                for client in clients:
                    nursery.start_soon(drain, client)
                stop = trio.Event()
                async with trio.open_nursery() as writing:
                    for client, (name, log) in zip(clients, acked.items(), strict=True):
                        writing.start_soon(_writer, client, room, name, log, stop)
                    await trio.sleep(0.5)
                    os.kill(workers[owner_url]["pid"], signal.SIGKILL)
                    while node.serving()[owner_url]["pid"] == workers[owner_url]["pid"]:
                        await trio.sleep(0.05)  # the supervisor restarts it on its data and its port
                    await trio.sleep(1.0)
                    stop.set()
                assert any(event.get("event") == "worker_exited" for event in node.events)
                checker = await start_client(nursery, shared, token("checker"))
                assert (await checker.join(room=room)).room == room and checker.url == owner_url
                stored = await _history(checker, room)
                nursery.cancel_scope.cancel()
            result = CrashResult(cycles=1)
            check_stored(acked, stored, result)
            assert result.problems == [] and result.acked > 0
            assert len(node.serving()) == 3
            # A second roost serve on the same data directory is refused while the node runs.
            second = await trio.run_process(
                [sys.executable, "-m", "roost.cli", "serve", "--dev", "--workers", "2", "--cluster", REDIS,
                 "--data", str(tmp_path / "data"), "--port", "0"], capture_stderr=True, check=False)
            assert second.returncode == 2 and b"is in use by another roost serve" in second.stderr
            pids = {event["pid"] for event in node.serving().values()}
            node.process.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(node.process.wait) == 0
            assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()
                        and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    finally:
        node.stop()


def test_workers_need_a_cluster_directory(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "roost.cli", "serve", "--dev", "--workers", "2",
                           "--data", str(tmp_path), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers needs a cluster directory" in done.stderr


def test_a_workers_advertised_address_is_the_nodes_host_with_the_workers_own_port() -> None:
    from roost.serve import with_port

    assert with_port("ws://game-3.example:8765/", 40123) == "ws://game-3.example:40123/"
    assert with_port("wss://game-3.example/play", 40123) == "wss://game-3.example:40123/play"
    assert with_port("ws://[::1]:8765/", 40123) == "ws://[::1]:40123/"
