"""Redis for the tests: the machine's (127.0.0.1:6379) under a key prefix of each test's own, or a
``redis-server`` of a test's own (on a Unix socket in its temp dir: no port to race for) when the
test stops and restarts it."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import coredis
import pytest

MACHINE_REDIS = ("127.0.0.1", 6379)


def unique_prefix() -> str:
    """A key prefix no other test (or run) uses."""
    return f"roost-test-{secrets.token_hex(6)}:"


def machine_client() -> coredis.Redis[bytes]:
    """A client of the machine's Redis (enter it with ``async with``)."""
    return coredis.Redis(host=MACHINE_REDIS[0], port=MACHINE_REDIS[1], connect_timeout=2, stream_timeout=2)


@contextlib.asynccontextmanager
async def machine_redis(prefix: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A client of the machine's Redis; every key under ``prefix`` is deleted afterwards."""
    async with machine_client() as client:
        try:
            yield client
        finally:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(keys)


class OwnRedis:
    """A ``redis-server`` of the test's own on a Unix socket, nothing kept on disk; ``stop`` and
    ``start`` again make a Redis restart (which, like the machine's, forgets every key)."""

    def __init__(self, directory: Path) -> None:
        self.socket = str(directory / "redis.sock")
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        assert self._process is None
        self._process = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.socket, "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not Path(self.socket).exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
            Path(self.socket).unlink(missing_ok=True)

    def client(self) -> coredis.Redis[bytes]:
        return coredis.Redis(unix_socket_path=self.socket, connect_timeout=1, stream_timeout=1)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (Debian's redis-server package)")
    # Not tmp_path: a Unix socket's path must fit in 108 bytes, and pytest's grow with the test's name.
    directory = Path(tempfile.mkdtemp(prefix="roost-redis-"))
    server = OwnRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
