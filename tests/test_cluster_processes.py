"""A cluster of three ``roost serve --cluster`` processes on one machine and the machine's Redis (under a
key prefix of the test's own): the owner of a room SIGKILLed mid-chat and paused with SIGSTOP past its
lease, with the room's writers connected through the other two nodes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import trio

from roost.bench.crash import CrashResult, DevServer, _history, _writer, check_stored, free_port
from roost.client import RequestError, start_client
from roost.keys import public_path_for, read_private_key
from roost.protocol.tokens import new_claims, sign

from .redis_server import MACHINE_REDIS, machine_redis, unique_prefix

REDIS = f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0"
LEASE = 1.0


@pytest.fixture
async def cluster(tmp_path: Path):
    """Three nodes a, b, c on fixed ports (a restarted node comes back on its own), every node taking
    the tokens of a's development key."""
    prefix = unique_prefix()
    env = {"ROOST_CLUSTER_PREFIX": prefix, "ROOST_LEASE_PERIOD": str(LEASE)}
    async with machine_redis(prefix):
        a = DevServer(tmp_path / "a", free_port(), "--cluster", REDIS, env=env)
        servers = [a]
        try:
            lines = await a.start()
            key = Path(lines["ROOST_DEV_KEY"])
            for name in ("b", "c"):
                node = DevServer(tmp_path / name, free_port(), "--cluster", REDIS, "--key", str(public_path_for(key)),
                                 env=env)
                servers.append(node)
                await node.start()
            kid, signing_key = read_private_key(key)

            def token(sub: str) -> str:
                return sign(new_claims(sub=sub, name=sub, kid=kid, now=time.time(), ttl=3600), signing_key)

            yield servers, token
        finally:
            for server in servers:
                if server.process is not None and server.process.poll() is None:
                    os.kill(server.process.pid, signal.SIGCONT)
                await server.kill()


def url(server: DevServer) -> str:
    return f"ws://127.0.0.1:{server.port}/"


async def test_the_owner_sigkilled_mid_chat_comes_back_with_every_acknowledged_message_once_in_order(cluster) -> None:
    """Writers that connected to b and c were moved to a, the room's node; a is SIGKILLed three times
    mid-chat and restarted on its data; the writers reconnect, resume and go on; every message that
    was acknowledged is stored once, with its number, in each writer's order."""
    (a, b, c), token = cluster
    acked: dict[str, list[tuple[str, int]]] = {"w-b": [], "w-c": []}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            host = await start_client(nursery, url(a), token("host"), max_backoff=0.2, backoff_base=0.02)
            room = (await host.join_or_create("CRASH-ROOM")).room
            writers = []
            for name, entry in (("w-b", b), ("w-c", c)):
                client = await start_client(nursery, url(entry), token(name), max_backoff=0.2, backoff_base=0.02,
                                            connect_timeout=5.0, heartbeat_ms=2000)
                assert (await client.join(room=room)).room == room and client.url == url(a)
                writers.append(client)
            stop = trio.Event()

            async def drain(client) -> None:
                async for _event in client.events():
                    pass

            for client in (host, *writers):
                nursery.start_soon(drain, client)
            async with trio.open_nursery() as writing:
                for client, (name, log) in zip(writers, acked.items(), strict=True):
                    writing.start_soon(_writer, client, room, name, log, stop)
                for _ in range(3):
                    await trio.sleep(0.4)
                    await a.kill()
                    await a.start()
                await trio.sleep(0.5)
                stop.set()
            checker = await start_client(nursery, url(c), token("checker"), reconnect=True)
            await checker.join(room=room)
            stored = await _history(checker, room)
            nursery.cancel_scope.cancel()
    result = CrashResult(cycles=3)
    check_stored(acked, stored, result)
    assert result.problems == [] and result.acked > 0 and result.missing == result.duplicates == 0


async def test_a_paused_owner_is_unavailable_past_its_lease_cannot_be_replaced_and_recovers_when_resumed(
        cluster, tmp_path: Path) -> None:
    """SIGSTOP past the lease: the other nodes answer ``unavailable`` (its lease lapsed: nobody is sent
    to it); a second process on its data directory is refused (the paused one keeps the directory's
    lock, so two writers of one environment can never exist); SIGCONT: it puts its lease back and
    serves its room again, which members reach as before."""
    (a, b, _c), token = cluster
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ann = await start_client(nursery, url(a), token("ann"))
            room = (await ann.join_or_create("PAUSED")).room
            bob = await start_client(nursery, url(b), token("bob"))
            assert a.process is not None
            os.kill(a.process.pid, signal.SIGSTOP)
            try:
                await trio.sleep(LEASE * 1.5)
                with pytest.raises(RequestError) as refused:
                    await bob.join(code="PAUSED")
                assert refused.value.code.value == "unavailable" and bob.url == url(b)
                second = await trio.run_process(
                    [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data", str(a.data),
                     "--cluster", REDIS], capture_stdout=True, capture_stderr=True, check=False,
                    env={**os.environ, **a.env})
                assert second.returncode == 2 and b"is in use by another roost serve" in second.stderr
            finally:
                os.kill(a.process.pid, signal.SIGCONT)
            while True:
                try:
                    assert (await bob.join(code="PAUSED")).room == room
                    break
                except RequestError as error:
                    assert error.code.value == "unavailable"
                    await trio.sleep(0.1)
            assert bob.url == url(a)
            await bob.chat_send(room, "after the pause")
            nursery.cancel_scope.cancel()
