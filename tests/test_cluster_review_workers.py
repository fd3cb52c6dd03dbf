"""Review: the --workers supervisor never drains a worker's stdout after ROOST_URL.

Worker._until_serving's docstring says "then drain it in the background (a full pipe would block
the worker)", but nothing reads the pipe afterwards: once a worker (room logic, a library, a debug
print) writes more than the pipe's capacity (64 KiB on Linux) to stdout, its write blocks, and with
it the worker's whole Trio loop: its rooms freeze, its lease lapses, and the supervisor does not
notice (the process neither exits nor is restarted).
"""

from __future__ import annotations

import sys

import trio

from roost.app import _listen
from roost.workers import Worker

SCRIPT = r"""
import sys
print("ROOST_URL=ws://127.0.0.1:1/", flush=True)
sys.stdout.write("x" * 300_000)   # e.g. room logic printing
sys.stdout.flush()
print("done", file=sys.stderr)
"""


async def test_a_worker_that_writes_to_stdout_after_serving_is_not_blocked() -> None:
    shared, own = _listen("127.0.0.1", 0), _listen("127.0.0.1", 0)
    worker = Worker(0, [sys.executable, "-c", SCRIPT], shared, own)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await nursery.start(worker.keep)
            worker.stopping = True  # its exit is not to be restarted
            with trio.move_on_after(5):
                while worker.process.returncode is None:
                    await trio.sleep(0.05)
            blocked = worker.process.returncode is None
            if blocked:
                worker.process.kill()
        assert not blocked, "the worker is blocked writing to a stdout pipe nobody reads"
    finally:
        shared.close()
        own.close()


CRASHES_AFTER_SERVING = r"""
import sys, time
print("ROOST_URL=ws://127.0.0.1:1/", flush=True)
time.sleep(0.1)
sys.exit(1)
"""


async def test_a_worker_stopped_during_its_restart_backoff_is_not_started_again() -> None:
    """Worker.keep checks ``stopping`` only right after the process exits (workers.py:96), not after
    the backoff sleep (workers.py:105): SIGTERM to the node while a crashed worker waits to be
    restarted (while the other workers drain) starts a fresh worker nobody will terminate, and
    _end_when_done then waits for it forever: the node hangs on SIGTERM."""
    shared, own = _listen("127.0.0.1", 0), _listen("127.0.0.1", 0)
    worker = Worker(0, [sys.executable, "-c", CRASHES_AFTER_SERVING], shared, own)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await nursery.start(worker.keep)
                first = worker.process
                await first.wait()
                await trio.sleep(0.05)  # it exited: keep is in its backoff sleep now
                worker.terminate()  # SIGTERM reached the supervisor: stop every worker
                await trio.sleep(1.0)
            restarted = worker.process is not first
            nursery.cancel_scope.cancel()
        assert not restarted, "a worker was started again after terminate()"
    finally:
        shared.close()
        own.close()
