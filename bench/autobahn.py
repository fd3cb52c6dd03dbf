"""RFC 6455 conformance: Autobahn|Testsuite's fuzzingclient against an echo server on the engine's own WebSocket code.

``python -m roost.bench autobahn [--cases 1.* 2.* ...] [--wstest PATH] [--install]`` starts an echo server
on 127.0.0.1 (port 0) built from the engine's pieces: :class:`roost.outbox.SocketTransport` (direct
non-blocking writes), :class:`roost.outbox.Outbox` (backlog + writer task) and
:class:`roost.websocket.WebSocket` (upgrade, fragment assembly, UTF-8 of text, size limit, pings,
the closing handshake, failing on violations), and :meth:`~roost.outbox.Transport.linger_close`.
It is not a separate toy: only the last step differs from the engine, which refuses text (1003) where
this echoes every message back as it came (text as text, binary as binary).

It then writes a fuzzingclient spec into a temporary directory, runs ``wstest -m fuzzingclient``,
reads the JSON report and prints one line per section (how many cases ended with which behaviour,
for the data exchanged and for the close), then every case that is not OK or INFORMATIONAL in both,
and a final JSON line. Exit status 1 if there is any (NON-STRICT counts as failing: it means a
violation was detected late), 2 if the suite could not run.

Autobahn|Testsuite runs on Python 2.7 only. ``--install`` (or a missing ``--wstest``) builds it into
``.autobahn/`` at the top of the checkout: a virtualenv made by ``virtualenv<20.22`` (the last line
that creates 2.7 environments) with the pinned packages of ``bench/autobahn-requirements.txt``, from
the first Python 2.7 found (``ROOST_PYTHON2``, pyenv's versions, then ``python2.7`` on PATH).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from roost.outbox import Outbox, SocketTransport
from roost.websocket import WebSocket, WsState

__all__ = ["DEFAULT_CASES", "EchoServer", "add_arguments", "autobahn_report", "ensure_wstest", "run", "summarise"]

DEFAULT_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
"""Framing, pings, reserved bits, opcodes, fragmentation, UTF-8, closing, auto-fragmentation.
(8 does not exist, 9 is performance, 12-13 are compression, which the engine does not negotiate.)"""
PASSING = {"OK", "INFORMATIONAL"}
MAX_MESSAGE = 16 * 1024 * 1024
"""The echo server's message limit: above anything cases 1-7 and 10 send."""
LINGER_SECONDS = 1.0
ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path(__file__).resolve().parent / "autobahn-requirements.txt"
DEFAULT_VENV = ROOT / ".autobahn"


class EchoServer:
    """Echoes every WebSocket message back; one task per connection, as in the engine's gateway."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            try:
                while True:
                    await trio.lowlevel.wait_readable(self.listener)
                    try:
                        sock, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    self.connections += 1
                    nursery.start_soon(self.echo, SocketTransport(sock))
            finally:
                self.listener.close()

    async def echo(self, transport: SocketTransport) -> None:
        """One connection: the engine's read/flush/close sequence with an echo as the application."""
        websocket: WebSocket | None = None

        def overflow() -> None:
            assert websocket is not None
            websocket.fail(1008, "slow consumer")

        outbox = Outbox(transport, max_frames=1 << 20, max_bytes=4 * MAX_MESSAGE, on_overflow=overflow)
        websocket = WebSocket(outbox, max_message_bytes=MAX_MESSAGE)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outbox.run_writer)
                while websocket.state is not WsState.CLOSED and not outbox.broken:
                    data = await transport.receive_some()
                    if not data:
                        break
                    for message in websocket.receive(data):
                        websocket.send_message(message)
                outbox.finish()
                nursery.cancel_scope.deadline = trio.current_time() + 10
            if websocket.state is WsState.CLOSED and outbox.idle and not outbox.broken:
                await transport.linger_close(LINGER_SECONDS, 1 << 20)
        finally:
            with trio.move_on_after(1, shield=True):
                await transport.aclose()


# -- Autobahn|Testsuite -------------------------------------------------------------------------------


def _python2() -> str | None:
    """The first working Python 2.7: ``ROOST_PYTHON2``, pyenv's versions, ``python2.7`` on PATH.

    Each is asked for its version: a pyenv shim on PATH exists but fails unless 2.7 is selected.
    """
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [os.environ.get("ROOST_PYTHON2", "")]
    candidates += [str(p / "bin" / "python") for p in sorted(pyenv.glob("2.7*"), reverse=True)]
    candidates.append(shutil.which("python2.7") or "")
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        probe = subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (2, 7)"],
                               capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def ensure_wstest(venv: Path = DEFAULT_VENV, *, quiet: bool = True) -> Path:
    """The ``wstest`` of a Python 2.7 virtualenv at ``venv``, built there first if it is missing.

    Raises:
        RuntimeError: no Python 2.7 here, or the install failed (the message says which step).
    """
    wstest = venv / "bin" / "wstest"
    if wstest.is_file():
        return wstest
    python2 = _python2()
    if python2 is None:
        raise RuntimeError("Autobahn|Testsuite needs Python 2.7: none found (set ROOST_PYTHON2)")
    pip_q = ["--quiet", "--disable-pip-version-check"] if quiet else []
    tools = venv.with_name(venv.name + "-tools")
    steps = [
        [python2, "-m", "pip", "install", *pip_q, "--target", str(tools), "virtualenv<20.22"],
        [python2, "-m", "virtualenv", "--quiet", str(venv)],
        [str(venv / "bin" / "pip"), "install", *pip_q, "-r", str(REQUIREMENTS)],
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    for index, step in enumerate(steps):
        # virtualenv runs from its --target directory; the other steps must not see it (it holds
        # backports such as ``typing`` that pip would then count as installed in the new venv).
        step_env = {**env, "PYTHONPATH": str(tools)} if index == 1 else env
        done = subprocess.run(step, env=step_env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"installing Autobahn|Testsuite failed at {' '.join(step[:4])}: "
                               f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    shutil.rmtree(tools, ignore_errors=True)
    return wstest


async def autobahn_report(wstest: Path, cases: Sequence[str], workdir: Path) -> dict[str, dict[str, Any]]:
    """Run the fuzzingclient on ``cases`` against a fresh echo server; the report's per-case entries."""
    server = EchoServer()
    spec = {
        "outdir": str(workdir / "reports"),
        "servers": [{"agent": "roost", "url": f"ws://127.0.0.1:{server.port}"}],
        "cases": list(cases),
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    (workdir / "fuzzingclient.json").write_text(json.dumps(spec, indent=2))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        done = await trio.run_process(
            [str(wstest), "-m", "fuzzingclient", "-s", str(workdir / "fuzzingclient.json")],
            cwd=workdir, capture_stdout=True, capture_stderr=True, check=False,
        )
        nursery.cancel_scope.cancel()
    index = workdir / "reports" / "index.json"
    if done.returncode != 0 or not index.is_file():
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"wstest failed (exit {done.returncode}): {tail}")
    report: dict[str, dict[str, Any]] = json.loads(index.read_text())["roost"]
    return report


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def summarise(report: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(one line per section, one line per case that is not OK/INFORMATIONAL in both behaviours)."""
    sections: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    failing = []
    for case in sorted(report, key=_case_key):
        entry = report[case]
        behaviour, close = entry["behavior"], entry["behaviorClose"]
        sections[case.split(".")[0]][f"{behaviour}/{close}"] += 1
        if behaviour not in PASSING or close not in PASSING:
            failing.append(f"  {case:<10} behaviour {behaviour:<13} close {close:<13} "
                           f"(remote close code {entry.get('remoteCloseCode')})")
    lines = [f"{'section':<8} {'cases':>5}  behaviour/close"]
    for section in sorted(sections, key=int):
        counts = sections[section]
        detail = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
        lines.append(f"{section:<8} {sum(counts.values()):>5}  {detail}")
    return lines, failing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m roost.bench autobahn``."""
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="case patterns (default: 1-7 and 10)")
    parser.add_argument("--wstest", default=None,
                        help="wstest to run (default: .autobahn/bin/wstest, built if missing)")
    parser.add_argument("--install", action="store_true",
                        help="only build .autobahn/ (the Python 2.7 virtualenv), then exit")
    parser.add_argument("--keep", default=None, help="write the spec and the HTML/JSON reports here, and keep them")


def run(args: argparse.Namespace) -> int:
    """Run the suite; print the summary; exit 1 on any case short of OK/INFORMATIONAL (2: cannot run)."""
    try:
        wstest = Path(args.wstest) if args.wstest else ensure_wstest()
    except RuntimeError as error:
        print(f"autobahn: {error}", file=sys.stderr)
        return 2
    if args.install:
        print(f"autobahn: {wstest}")
        return 0
    with tempfile.TemporaryDirectory(prefix="roost-autobahn-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            report = trio.run(autobahn_report, wstest, args.cases, workdir)
        except RuntimeError as error:
            print(f"autobahn: {error}", file=sys.stderr)
            return 2
    lines, failing = summarise(report)
    print("\n".join(lines))
    print(f"{len(report)} cases, {len(report) - len(failing)} OK or INFORMATIONAL in both behaviour and close")
    if failing:
        print("failing:\n" + "\n".join(failing))
    outcomes = collections.Counter(f"{e['behavior']}/{e['behaviorClose']}" for e in report.values())
    print(json.dumps({"bench": "autobahn", "cases": len(report), "failing": len(failing), "outcomes": outcomes}))
    return 1 if failing else 0
