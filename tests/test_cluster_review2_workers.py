"""Review 2: the supervisor restarted *every* exit with --worker-takeover, including a worker that
stopped because it was superseded (ShardOwner._keep -> on_lost -> shutdown). The lease at its address
then belongs to whoever superseded it -- a copy of this node's data directory started elsewhere with
the same --advertise-url -- and takeover deposed it at once; that process was superseded in turn, its
own supervisor restarted it with --worker-takeover, and the two alternated as the shard's owner.

Fixed: a process that lost its shard exits with EXIT_SHARD_LOST (3), and its supervisor does not
restart it; ``--worker-takeover`` is refused outside a supervisor's workers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import trio

from roost.serve import EXIT_SHARD_LOST
from roost.workers import Worker

SCRIPT = """
import sys
with open(sys.argv[1], "a") as f:
    f.write(" ".join(sys.argv[3:]) + "\\n")
print("ROOST_URL=ws://127.0.0.1:1/", flush=True)
sys.exit(int(sys.argv[2]))
"""


async def _runs_of(tmp_path: Path, status: int, wait_for: int) -> list[str]:
    runs = tmp_path / f"runs-{status}"
    shared, own = socket.socket(), socket.socket()
    shared.bind(("127.0.0.1", 0))
    own.bind(("127.0.0.1", 0))
    try:
        worker = Worker(0, [sys.executable, "-c", SCRIPT, str(runs), str(status), "serve"], shared, own)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.keep)
                while not runs.exists() or len(runs.read_text().splitlines()) < wait_for:
                    await trio.sleep(0.05)
                await trio.sleep(0.5)  # a restart, if any, would come within its first backoff (0.2 s)
                worker.terminate()
                nursery.cancel_scope.cancel()
        return runs.read_text().splitlines()
    finally:
        shared.close()
        own.close()


async def test_a_worker_that_lost_its_shard_is_not_restarted(tmp_path: Path) -> None:
    # its first start exits at once: the supervisor treats that as a failed start of the node,
    # so the first run here is one that serves and then loses its shard
    runs = await _runs_of(tmp_path, EXIT_SHARD_LOST, 1)
    assert runs == ["serve"]


async def test_a_worker_that_died_is_restarted_with_takeover(tmp_path: Path) -> None:
    runs = await _runs_of(tmp_path, 137, 2)
    assert runs[0] == "serve" and runs[1] == "serve --worker-takeover"


def test_worker_takeover_is_refused_outside_a_supervisors_workers(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "roost.cli", "serve", "--dev", "--worker-takeover", "--data",
                           str(tmp_path), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--worker-takeover is for the workers" in done.stderr
