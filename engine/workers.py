"""``roost serve --workers N``: N engine processes behind one port, supervised by this one.

One Roost process uses one core. Here the supervisor binds the node's port once and hands it, with a
port of each worker's own, to N ``roost serve`` worker processes (inherited file descriptors): every
worker accepts on the shared port, and the cluster directory (``--cluster``) sends a room's members to
its worker's own port (``moved``), so a room's traffic never crosses processes. Each worker keeps its
store in ``DATA/workers/<i>`` (LMDB has one writer per environment: shared, every worker's fsyncs
would queue behind one lock) and shares the node's secrets in ``DATA`` (the dev key, the service key,
the session key).

The supervisor holds the node's own sockets, so a worker restarted after a crash gets the same port:
its members reconnect to the address they know and resume, and its lease is taken over at once (the
same address, the flock of its environment proving the old process dead). It holds ``DATA/db``'s
lock too, so a second ``roost serve`` on the same ``--data`` is refused as before.

The traps:

- **Ctrl-C reaches the whole process group**: a worker would get SIGINT from the terminal and SIGTERM
  from the supervisor, and read the second as "stop now". Workers run in sessions of their own; only
  the supervisor forwards signals.
- **A SIGKILLed supervisor sends nothing**: each worker watches its parent (roost.serve) and stops
  gracefully when it is gone, rather than serve on unsupervised.
- **A worker that dies at once would be restarted in a tight loop**: restarts back off (0.1 s doubling
  to 5 s) while a worker does not stay up for 10 s; one that fails its first start fails the node.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

from .app import _listen
from .logs import configure as configure_logging
from .serve import EXIT_SHARD_LOST, Prepared, _announce

__all__ = ["run_workers"]

log = logging.getLogger("roost.workers")

_HEALTHY_AFTER = 10.0
_MAX_BACKOFF = 5.0


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"ws://[{host}]:{port}/" if ":" in host else f"ws://{host}:{port}/"


class Worker:
    """One worker slot: its index, its own socket, and the process serving it now."""

    def __init__(self, index: int, argv: list[str], shared: socket.socket, own: socket.socket) -> None:
        self.index = index
        self.argv = argv
        self.shared = shared
        self.own = own
        self.url = _url(own)
        self.process: trio.Process | None = None
        self.stopping = False
        self.restarts = 0
        self._backoff: trio.CancelScope | None = None

    async def keep(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the worker, and again whenever it exits unasked; ``task_status.started`` once it first
        serves (a first start that fails raises: the node does not come up half)."""
        backoff = 0.1
        first = True
        while True:
            started = time.monotonic()
            # A restart (not the first start) says the process it replaces is gone: it takes the
            # lease at its address over at once, and serves before Redis answers (ShardOwner.start).
            argv = self.argv if first else [*self.argv, "--worker-takeover"]
            process = await trio.lowlevel.open_process(
                argv, stdout=subprocess.PIPE, pass_fds=(self.shared.fileno(), self.own.fileno()),
                start_new_session=True)
            self.process = process
            try:
                async with trio.open_nursery(strict_exception_groups=True) as reading:
                    ready = await self._until_serving(process)
                    if ready:
                        log.info("worker %d (pid %d) serving at %s", self.index, process.pid, self.url,
                                 extra={"event": "worker_serving", "worker": self.index, "pid": process.pid,
                                        "url": self.url})
                        if first:
                            task_status.started()
                            first = False
                        reading.start_soon(self._discard, process)
                    code = await process.wait()
                    reading.cancel_scope.cancel()
            finally:
                if process.returncode is None:  # cancelled (a second signal): stop it now
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
            if self.stopping:
                return
            if first:
                raise RuntimeError(f"worker {self.index} exited with status {code} before it served")
            if code == EXIT_SHARD_LOST:  # another process owns its environment now: never take it back
                log.error("worker %d (pid %d) stopped: another process took its shard; not restarted",
                          self.index, process.pid, extra={"event": "worker_lost_shard", "worker": self.index})
                return
            self.restarts += 1
            backoff = 0.1 if time.monotonic() - started > _HEALTHY_AFTER else min(backoff * 2, _MAX_BACKOFF)
            log.warning("worker %d (pid %d) exited with status %s: restarting it on its data in %.1f s",
                        self.index, process.pid, code, backoff,
                        extra={"event": "worker_exited", "worker": self.index, "pid": process.pid, "status": code})
            with trio.CancelScope() as self._backoff:
                await trio.sleep(backoff)
            self._backoff = None
            if self.stopping:  # stopped during the backoff: no new worker nobody would stop
                return

    @staticmethod
    async def _discard(process: trio.Process) -> None:
        """Read the worker's stdout to its end (the trap: once the pipe holds 64 KiB, a ``print`` in
        room logic blocks the worker's whole event loop, which then neither serves nor exits)."""
        assert process.stdout is not None
        while await process.stdout.receive_some(65536):
            pass

    async def _until_serving(self, process: trio.Process) -> bool:
        """Read the worker's stdout until it prints ``ROOST_URL=`` (it serves); False if it exited first."""
        assert process.stdout is not None
        stream = process.stdout
        buffer = b""
        while b"ROOST_URL=" not in buffer:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return False
            buffer = buffer[-64:] + chunk  # enough to find the marker across two reads, never more
        return True

    def terminate(self) -> None:
        self.stopping = True
        if self._backoff is not None:
            self._backoff.cancel()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)


def _worker_argv(args: argparse.Namespace, data: Path, index: int, fds: tuple[int, int]) -> list[str]:
    """The worker's ``roost serve``: the node's own flags, its store in ``DATA/workers/<index>``."""
    argv = [sys.executable, "-m", "roost.cli", "serve", "--data", str(data / "workers" / str(index)),
            "--worker-of", str(data), "--worker-fds", f"{fds[0]},{fds[1]}",
            "--log-level", args.log_level, "--log-format", args.log_format]
    if args.dev:
        argv.append("--dev")
    for flag, value in (("--config", args.config), ("--host", args.host), ("--cluster", args.cluster),
                        ("--advertise-url", args.advertise_url)):
        if value is not None:
            argv += [flag, str(value)]
    for key in args.key:
        argv += ["--key", key]
    return argv


async def _supervise(prepared: Prepared, args: argparse.Namespace) -> int:
    config = prepared.config
    data = Path(config.data_dir)
    shared = _listen(config.host, config.port)
    # Each worker's own port is the node's port + 1 + its index (any free one with --port 0): stable
    # across restarts of the node, so clients sent to a worker find it again after one.
    own = [_listen(config.host, config.port + 1 + index if config.port else 0) for index in range(args.workers)]
    workers = [Worker(index, _worker_argv(args, data, index, (shared.fileno(), sock.fileno())), shared, sock)
               for index, sock in enumerate(own)]
    try:
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            with trio.fail_after(120):
                async with trio.open_nursery(strict_exception_groups=True) as starting:
                    for worker in workers:  # all at once; each moves to ``nursery`` once it serves
                        starting.start_soon(nursery.start, worker.keep)
            lines = [f"ROOST_URL={_url(shared)}"]
            if prepared.dev_token is not None:
                lines += [f"ROOST_TOKEN={prepared.dev_token}", f"ROOST_DEV_KEY={prepared.dev_key}"]
            if prepared.dev_service_key is not None:
                lines.append(f"ROOST_SERVICE_KEY={prepared.dev_service_key}")
            _announce(lines)
            log.info("%d workers serving on %s", len(workers), _url(shared))
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                stopping = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stopping:
                        log.info("received %s: stopping the workers (again to stop at once)", name)
                        stopping = True
                        for worker in workers:
                            worker.terminate()
                        nursery.start_soon(_end_when_done, workers, nursery.cancel_scope)
                    else:
                        log.warning("received %s again: killing the workers", name)
                        nursery.cancel_scope.cancel()
    finally:
        shared.close()
        for sock in own:
            sock.close()
    return 0


async def _end_when_done(workers: list[Worker], scope: trio.CancelScope) -> None:
    while any(worker.process is not None and worker.process.returncode is None for worker in workers):
        await trio.sleep(0.05)
    scope.cancel()


def run_workers(prepared: Prepared, args: argparse.Namespace) -> int:
    """Run ``args.workers`` workers until SIGINT/SIGTERM; the exit status."""
    configure_logging(args.log_level, args.log_format)
    try:
        return trio.run(_supervise, prepared, args)
    except OSError as exc:
        print(f"roost: error: cannot serve on {prepared.config.host}:{prepared.config.port} and the "
              f"{args.workers} ports after it: {exc.strerror}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        failed, rest = group.split(RuntimeError)
        if failed is None or rest is not None:
            raise
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"roost: error: {first}", file=sys.stderr)
        return 2
    finally:
        prepared.store.close()
