"""Review: after the node (the --workers supervisor) restarts, every worker has a new random port.

engine/workers.py:146 binds each worker's own port with port 0 (ephemeral), and the Python client, once
moved there, reconnects only to that url (engine/client.py:880, _set_address replaces the url the
client was opened with). So a deploy/restart of the node (SIGTERM, start again on the same --data and
--port) strands every connected client: it retries a port nobody listens on, forever, and never goes
back to the node's shared port, which would have moved it to the room's new worker port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

from roost.client import start_client
from roost.keys import read_private_key
from roost.protocol.tokens import new_claims, sign

from .redis_server import machine_redis, unique_prefix
from .test_workers import REDIS, Node


class NodeOnPort(Node):
    def __init__(self, data: Path, workers: int, prefix: str, port: int) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROOST_CLUSTER_PREFIX": prefix, "ROOST_LEASE_PERIOD": "1"}
        self.data = data
        self.process = subprocess.Popen(
            [sys.executable, "-m", "roost.cli", "serve", "--dev", "--workers", str(workers), "--cluster", REDIS,
             "--data", str(data), "--port", str(port), "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.events = []
        import threading
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_clients_find_their_room_again_after_the_node_restarts(tmp_path: Path) -> None:
    prefix = unique_prefix()
    port = _free_port()
    async with machine_redis(prefix):
        node = NodeOnPort(tmp_path / "data", 2, prefix, port)
        again = None
        try:
            with trio.fail_after(90):
                lines = await node.lines()
                kid, key = read_private_key(Path(lines["ROOST_DEV_KEY"]))
                token = sign(new_claims(sub="ann", name="ann", kid=kid, now=time.time(), ttl=3600), key)
                async with trio.open_nursery() as nursery:
                    ann = await start_client(nursery, lines["ROOST_URL"], token, max_backoff=0.2,
                                             backoff_base=0.02, connect_timeout=2.0)
                    room = (await ann.join_or_create("DEPLOY")).room
                    before = ann.url
                    node.process.send_signal(signal.SIGTERM)  # a deploy: stop the node, start it again
                    assert await trio.to_thread.run_sync(node.process.wait) == 0
                    again = NodeOnPort(tmp_path / "data", 2, prefix, port)
                    await again.lines()
                    back = False
                    with trio.move_on_after(15):
                        while True:
                            try:
                                await ann.chat_send(room, "after the deploy")
                                back = True
                                break
                            except Exception:
                                await trio.sleep(0.2)
                    nursery.cancel_scope.cancel()
                assert back, f"the client is stuck reconnecting to {ann.url} (was {before}); the node serves {lines['ROOST_URL']}"
        finally:
            node.stop()
            if again is not None:
                again.process.send_signal(signal.SIGTERM)
                try:
                    again.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
                again.stop()
