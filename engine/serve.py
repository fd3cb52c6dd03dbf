"""``roost serve``: configuration from file, environment and flags; the dev key; signals; the engine.

This is the only place that installs signal handlers (the library never does): SIGINT and SIGTERM
stop the engine.

The data directory belongs to one process: ``prepare`` opens the store (which ``flock``-s
``DATA/db/roost.lock``, see :mod:`roost.store.lmdb`) before it writes anything else there (the dev
key, ``session.key``, ``service.key``), so a second ``roost serve`` on the same ``--data`` is refused before it touches
a file, and a crash (even SIGKILL) leaves nothing that blocks the next start.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import re
import secrets
import signal
import socket
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import trio

from roost.protocol.tokens import Keyring, new_claims, sign

from .app import Engine
from .config import Config, ConfigError
from .devsite import DevSite
from .store import StoreError
from .store.lmdb import LmdbStore, StoreLocked, StoreOpenError
from .logs import configure as configure_logging
from .tictactoe import LOGIC_NAME as TICTACTOE, TicTacToe
from .keys import KeyFileError, public_path_for, read_private_key, read_public_key, write_key_pair

__all__ = ["Prepared", "ServeError", "prepare", "run"]

DEV_KEY_NAME = "dev-key.jwk"
DEV_TOKEN_TTL = 24 * 3600
SESSION_KEY_NAME = "session.key"
SESSION_KEY_BYTES = 32
SERVICE_KEY_NAME = "service.key"
SERVICE_KEY_CHARS = 43
_SERVICE_KEY = re.compile(rb"[A-Za-z0-9_-]{43}")


class ServeError(Exception):
    """A problem with the serve configuration (one-line message; exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything ``run`` needs, resolved before anything starts."""

    config: Config
    dev_key: Path | None
    dev_token: str | None
    dev_service_key: str | None
    """The service key ``--dev`` made (or kept from an earlier start), printed as ROOST_SERVICE_KEY;
    None when one is configured (the operator has it) or without ``--dev``."""
    store: LmdbStore
    """Open, and holding the data directory's lock; ``run`` hands it to the engine."""
    dev_site: DevSite | None = None
    """``--dev`` only: the demo page, the JS client files and ``/dev/token`` (:mod:`roost.devsite`)."""
    listen_fds: tuple[int, ...] = ()
    """A worker of ``roost serve --workers``: the listening sockets its parent bound (the shared port,
    then the worker's own), inherited as these file descriptors."""
    worker: int | None = None
    """A worker of ``roost serve --workers``: its index (every log line says it)."""
    takeover: bool = False
    """A worker its supervisor restarted in place of one it reaped (ShardOwner.takeover)."""


def prepare(args: argparse.Namespace, *, store_factory: Callable[[Path], LmdbStore] = LmdbStore) -> Prepared:
    """Build the config: defaults < TOML file < ROOST_* environment < flags; load keys; claim the
    data directory by opening its store; then (and only then) write the dev key and session key.

    ``store_factory`` makes the store for ``DATA/db`` (benchmarks pass their own kind)."""
    try:
        config = Config()
        if args.config:
            config = Config.from_toml(Path(args.config), base=config)
        config = Config.from_env(os.environ, base=config)
        if args.data == "":  # "" is the current directory to every path function: refuse, do not guess
            raise ConfigError("--data must not be empty")
        flags = {name: value for name, value in (("host", args.host), ("port", args.port), ("data_dir", args.data),
                                                 ("cluster", getattr(args, "cluster", None)),
                                                 ("advertise_url", getattr(args, "advertise_url", None)))
                 if value is not None}
        config = config.replace(**flags, key_files=config.key_files + tuple(args.key))
    except ConfigError as exc:
        raise ServeError(str(exc)) from None
    keyring = Keyring()
    try:
        for path in config.key_files:
            kid, key = read_public_key(Path(path))
            keyring = keyring.with_key(kid, key)
    except KeyFileError as exc:
        raise ServeError(str(exc)) from None
    if not len(keyring) and not args.dev:
        raise ServeError("no public keys configured: pass --key FILE (or key_files in the config), or use --dev")
    data = Path(config.data_dir)
    # A worker of ``--workers`` keeps its store in DATA/workers/N (its --data) and shares the secrets of
    # its parent's DATA: one dev key, one service key, one session key for the whole node.
    worker_of = getattr(args, "worker_of", None)
    secrets_dir = Path(worker_of) if worker_of is not None else data
    store = store_factory(data / "db")
    try:
        store.open()
    except StoreLocked as exc:
        holder = f"pid {exc.pid}" if exc.pid is not None else "another process"
        raise ServeError(f"data directory {data} is in use by another roost serve ({holder})") from None
    except StoreOpenError as exc:
        raise ServeError(str(exc)) from None
    try:
        dev_key: Path | None = None
        dev_token: str | None = None
        dev_service_key: str | None = None
        dev_site: DevSite | None = None
        if args.dev:
            dev_key = secrets_dir / DEV_KEY_NAME
            try:
                if not dev_key.exists():
                    write_key_pair(dev_key)
                kid, signing_key = read_private_key(dev_key)
                keyring = keyring.with_key(kid, read_public_key(public_path_for(dev_key))[1])
            except KeyFileError as exc:
                raise ServeError(str(exc)) from None
            claims = new_claims(sub="dev", name="Developer", kid=kid, now=time.time(), ttl=DEV_TOKEN_TTL)
            dev_token = sign(claims, signing_key)
            dev_site = DevSite(kid, signing_key)
            config = config.replace(guests=True)
            config = config.replace(logics={TICTACTOE: TicTacToe, **config.logics})
            if config.service_key is None:
                dev_service_key = _service_key(secrets_dir / SERVICE_KEY_NAME)
                config = config.replace(service_key=dev_service_key)
        secret = _session_secret(secrets_dir / SESSION_KEY_NAME)
    except BaseException:
        store.close()  # refused: release the directory at once
        raise
    fds = getattr(args, "worker_fds", None)
    return Prepared(config=config.replace(keyring=keyring, session_secret=secret), dev_key=dev_key,
                    dev_token=dev_token, dev_service_key=dev_service_key, store=store,
                    dev_site=dev_site, listen_fds=tuple(int(fd) for fd in fds.split(",")) if fds else (),
                    worker=None if worker_of is None else int(data.name),
                    takeover=bool(getattr(args, "worker_takeover", False)))


def _session_secret(path: Path) -> bytes:
    """The session-token MAC key, kept in the data directory so sessions survive a restart."""
    return _secret_file(path, "session key", SESSION_KEY_BYTES, lambda: os.urandom(SESSION_KEY_BYTES),
                        consequence="which ends every session")


def _service_key(path: Path) -> str:
    """The admin credential ``--dev`` makes when none is configured: 256 random bits as base64url
    (43 characters, safe unquoted in a shell line), kept so ``roost admin`` keeps working across
    restarts of the development server."""
    secret = _secret_file(path, "service key", SERVICE_KEY_CHARS,
                          lambda: secrets.token_urlsafe(SESSION_KEY_BYTES).encode(), check=_SERVICE_KEY.fullmatch,
                          consequence="roost serve --dev prints it")
    return secret.decode("ascii")


def _secret_file(path: Path, what: str, size: int, make: Callable[[], bytes], *, consequence: str,
                 check: Callable[[bytes], object] = bool) -> bytes:
    """A secret kept in the data directory: read it, or make and write it once.

    An existing secret of the wrong size (or shape: ``check``) is refused, never replaced: replacing
    it would silently break whatever relied on it (every session; every script holding the service
    key) and hide whatever damaged the file. An existing secret that others may read is made 0600
    again (it is a secret; that is the only sensible repair). A new one is written to a temporary
    file, flushed and renamed into place, so a crash never leaves a short secret behind.
    """
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = None
    except OSError as exc:
        raise ServeError(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        if secret is not None:
            problem = (f"is {len(secret)} bytes, not {size}" if len(secret) != size
                       else None if check(secret) else f"is not {size} base64url characters")
            if problem is not None:
                raise ServeError(f"{what} {path} {problem}: restore it, or delete it to start with a new one "
                                 f"({consequence})")
            if stat.S_IMODE(path.stat().st_mode) != 0o600:
                os.chmod(path, 0o600)
            return secret
        secret = make()
        temporary = path.with_name(path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)  # O_CREAT's mode is masked by umask, and a leftover file keeps its own
        os.replace(temporary, path)
    except OSError as exc:
        raise ServeError(f"cannot write the {what} {path}: {exc.strerror}") from None
    return secret


async def _serve_until_stopped(
    engine: Engine, scope: trio.CancelScope, *, task_status: trio.TaskStatus[tuple[str, int]]
) -> None:
    await engine.serve(task_status=task_status)
    scope.cancel()  # a graceful shutdown finished: stop waiting for signals


EXIT_SHARD_LOST = 3
"""The exit status of a process that stopped because another took its shard (its supervisor does not
restart it: ``roost.workers``)."""


async def _serve(prepared: Prepared) -> str | None:
    config = prepared.config
    listeners = tuple(_inherited(fd) for fd in prepared.listen_fds)
    if listeners and config.advertise_url is not None:
        # The node's advertised host with this worker's own port: the address its rooms' clients need.
        config = config.replace(advertise_url=with_port(config.advertise_url, listeners[-1].getsockname()[1]))
    engine = Engine(config, store=prepared.store)
    engine.http_routes = prepared.dev_site
    engine.takeover = prepared.takeover
    if listeners:
        engine.listeners = listeners
    async with trio.open_nursery(strict_exception_groups=True) as nursery:
        if prepared.listen_fds:
            nursery.start_soon(_orphaned, engine, os.getppid())
        host, port = await nursery.start(_serve_until_stopped, engine, nursery.cancel_scope)
        # Everything allocated so far (modules, config, keys, restored rooms) lives long: move it out
        # of the collector's reach, so full collections stay short (measured: one 23-50 ms gen-2
        # pause per minute under load without this, which set the p99 of small rooms). No collect()
        # first: after restoring 10 k rooms it alone took 0.4 s of the start-up.
        gc.freeze()
        lines = [f"ROOST_URL=ws://{host}:{port}/"]
        if prepared.dev_token is not None:
            lines += [f"ROOST_TOKEN={prepared.dev_token}", f"ROOST_DEV_KEY={prepared.dev_key}"]
        if prepared.dev_service_key is not None:
            lines.append(f"ROOST_SERVICE_KEY={prepared.dev_service_key}")
        _announce(lines)
        logger = logging.getLogger("roost")
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not engine.shutdown_requested:
                    logger.info("received %s: shutting down (again to stop at once)", name)
                    engine.request_shutdown()
                else:
                    logger.warning("received %s again: stopping now", name)
                    nursery.cancel_scope.cancel()
    return None if engine.cluster is None else engine.cluster.lost


def with_port(url: str, port: int) -> str:
    """``url`` with its port replaced (or added): ``ws://game.example:8765/`` -> ``ws://game.example:40123/``."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return parts._replace(netloc=f"[{host}]:{port}" if ":" in host else f"{host}:{port}").geturl()


def _inherited(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


async def _orphaned(engine: Engine, parent: int) -> None:
    """A worker whose supervisor died (even SIGKILLed: no signal reaches the workers then) stops
    gracefully instead of serving on unsupervised, holding the node's ports and environments."""
    while os.getppid() == parent:
        await trio.sleep(1)
    logging.getLogger("roost").warning("the supervisor (pid %d) is gone: shutting down", parent)
    engine.request_shutdown()


def _announce(lines: list[str]) -> None:
    """Print the lines clients need on stdout. A closed stdout (``roost serve --dev | head -1``)
    does not stop the server: the URL is in the log on stderr too, and the key file is on disk."""
    try:
        for line in lines:
            print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # else the interpreter's last flush fails again
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        logging.getLogger("roost").warning("stdout is closed: the lines for clients were not printed")


def _first(group: BaseExceptionGroup) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def run(prepared: Prepared, *, log_level: str = "info", log_format: str = "text") -> int:
    """Run the engine until SIGINT/SIGTERM. Returns the exit status. Logs go to stderr as
    ``log_format`` (:mod:`roost.logs`: ``text`` or ``json``)."""
    configure_logging(log_level, log_format, context=None if prepared.worker is None else {"worker": prepared.worker})
    try:
        lost = trio.run(_serve, prepared)
    except BaseExceptionGroup as group:
        store_errors, rest = group.split(StoreError)
        if store_errors is not None and rest is None:  # e.g. a damaged page met while restoring rooms
            print(f"roost: error: {_first(store_errors)}", file=sys.stderr)
            return 2
        bind_errors, rest = group.split(OSError)
        if bind_errors is None or rest is not None:
            raise
        first = _first(bind_errors)
        reason = first.strerror if isinstance(first, OSError) else str(first)
        print(f"roost: error: cannot serve on {prepared.config.host}:{prepared.config.port}: {reason}", file=sys.stderr)
        return 2
    finally:
        prepared.store.close()  # if the engine never ran it (a bind error); else already closed
    if lost is not None:
        print(f"roost: error: stopped: {lost}", file=sys.stderr)
        return EXIT_SHARD_LOST
    return 0
