"""Structured log lines (issue 10 item 5): connection closes, auth failures, room crashes, admin actions.

In-process tests read the records (their ``extra=`` fields) and render them with both formatters; the
last test runs ``roost serve --log-format json`` and parses every line it writes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from roost import Config
from roost.client import RequestError, open_client
from roost.logs import MAX_FIELD_CHARS, JsonFormatter, TextFormatter, fields
from roost.protocol import PROTOCOL_VERSION
from roost.protocol.frames import Hello
from roost.protocol.tokens import new_claims, sign
from roost.testing import SERVICE_KEY, TestKeys, test_config

from .logics import Fragile
from .test_cli_serve import read_lines, start_server, stop
from .wire import raw_peer


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    return test_config(roost_keys, logics={"fragile": Fragile}, restart_intensity=5, restart_period=60.0)


class Records(logging.Handler):
    """Every record of the ``roost`` loggers; ``await wait_for(...)`` wakes when a matching one arrives
    (``emit`` runs inside the ``log`` call, in the Trio thread: no polling)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # another thread: the waiter sees it at its next wake-up
            return
        self._changed.set()

    def matching(self, msg: str, **want: Any) -> list[logging.LogRecord]:
        return [r for r in self.records if r.msg == msg and all(getattr(r, k, None) == v for k, v in want.items())]

    async def wait_for(self, msg: str, **want: Any) -> logging.LogRecord:
        while not (found := self.matching(msg, **want)):
            self._changed = trio.Event()
            await self._changed.wait()
        return found[0]


@pytest.fixture
def records() -> Iterator[Records]:
    handler, logger = Records(), logging.getLogger("roost")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def rendered(records: Records) -> list[str]:
    """Every record as both formatters write it."""
    return [f.format(r) for r in records.records for f in (TextFormatter(), JsonFormatter())]


async def test_each_connection_close_is_one_line_with_who_and_why(roost_connect, records: Records) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann", reconnect=False)
        eve = await roost_connect("eve", reconnect=False)
        ops = await roost_connect("ops")
        ann_sid, eve_sid = ann.sid, eve.sid
        await ann.aclose()
        line = await records.wait_for("connection closed", sid=ann_sid)
        assert (line.user, line.code, line.by, line.reason, line.levelno) == ("ann", 1000, "client", "normal", logging.INFO)
        assert line.remote.startswith("127.0.0.1:") and 0 <= line.duration < 10
        await ops.admin(SERVICE_KEY, "revoke", {"user": "eve", "exp": int(time.time()) + 60})
        line = await records.wait_for("connection closed", sid=eve_sid)
        assert (line.user, line.code, line.by, line.reason) == ("eve", 4501, "server", "token_revoked")
        assert len(records.matching("connection closed", sid=ann_sid)) == 1  # one line, not one per step
        text = TextFormatter().format(line)
        assert text.endswith(f"roost.connection: connection closed remote={line.remote} user=eve sid={eve_sid} "
                             f"duration={round(line.duration, 3)} code=4501 by=server reason=token_revoked")


async def test_auth_failures_name_the_reason_and_kid_never_the_token(
    nursery: trio.Nursery, roost_engine, roost_keys: TestKeys, records: Records
) -> None:
    stranger = TestKeys()
    forged = sign(new_claims(sub="mallory", name="M", kid=roost_keys.kid, now=time.time(), ttl=60), stranger.signing_key)
    tokens = {
        "unknown_key": (stranger.token("mallory"), stranger.kid),
        "bad_signature": (forged, roost_keys.kid),
        "expired": (roost_keys.token("late", now=time.time() - 7200, ttl=60), roost_keys.kid),
        "malformed": ("not-a-token", None),
        "missing": (None, None),
    }
    with trio.fail_after(10):
        for reason, (token, kid) in tokens.items():
            peer = await raw_peer(nursery, roost_engine.url)
            await peer.send(Hello(v=PROTOCOL_VERSION, token=token))
            assert await peer.closed_code() in (4500, 4002)
            line = await records.wait_for("auth failed", reason=reason)
            assert line.kid == kid and line.remote.startswith("127.0.0.1:")
        closes = await records.wait_for("connection closed", reason="token_expired")
        assert closes.user is None and closes.by == "server"
    lines = "\n".join(rendered(records))
    for token, _ in tokens.values():
        assert token is None or token not in lines


async def test_admin_actions_are_logged_with_their_outcome_never_the_key(roost_connect, records: Records) -> None:
    with trio.fail_after(10):
        ann, ops = await roost_connect("ann"), await roost_connect("ops")
        room = (await ann.create()).room
        await ops.admin(SERVICE_KEY, "publish", {"room": room, "kind": "notice", "body": {"text": "hi"}})
        await ops.admin(SERVICE_KEY, "kick", {"room": room, "user": "ann"})
        with pytest.raises(RequestError):
            await ops.admin(SERVICE_KEY, "room", {"room": "rnope"})
        hostile = "x\n" * 10_000 + "INFO roost: forged line"
        with pytest.raises(RequestError):
            await ops.admin("guessed-key", "close", {"room": hostile, "user": 5})
    publish, kick, missing, wrong = records.matching("admin action")
    assert fields(publish).items() >= {"op": "publish", "outcome": "ok", "room": room}.items()
    assert fields(kick).items() >= {"op": "kick", "outcome": "ok", "room": room, "user": "ann"}.items()
    assert fields(missing).items() >= {"op": "room", "outcome": "not_found", "room": "rnope"}.items()
    assert not {"key", "args", "body"} & set(fields(publish))
    assert (wrong.op, wrong.outcome, wrong.levelno) == ("close", "unauthorized", logging.WARNING)
    for line in (TextFormatter().format(wrong), JsonFormatter().format(wrong)):
        assert "\n" not in line and len(line) < MAX_FIELD_CHARS * 2 + 200  # one bounded line, whatever was sent
    lines = "\n".join(rendered(records))
    assert SERVICE_KEY not in lines and "guessed-key" not in lines


async def test_a_room_crash_is_logged_with_the_room_and_the_traceback(roost_connect, records: Records) -> None:
    with trio.fail_after(10):
        ann = await roost_connect("ann")
        room = (await ann.create(logic="fragile")).room
        with pytest.raises(RequestError):
            await ann.send(room, "boom")
        line = await records.wait_for("room %s crashed", room=room)
    assert line.event == "room_crashed" and line.exc_info is not None
    shipped = json.loads(JsonFormatter().format(line))
    assert shipped["msg"] == f"room {room} crashed" and shipped["room"] == room and shipped["level"] == "error"
    assert "ZeroDivisionError: bug in game logic" in shipped["exc"]


def record(msg: str, **extra: Any) -> logging.LogRecord:
    return logging.getLogger("roost.test").makeRecord("roost.test", logging.INFO, __file__, 1, msg, (), None,
                                                      extra=extra)


def test_text_lines_quote_what_is_not_a_plain_word_and_bound_every_field() -> None:
    line = TextFormatter().format(record("m", a="plain-word_1.2:3/4@5", b="two words", c=None, d=True, e=0.12345,
                                         f="x" * 1000, g="line\nbreak"))
    assert line.endswith(' roost.test: m a=plain-word_1.2:3/4@5 b="two words" c=- d=true e=0.123 '
                         f'f="{"x" * (MAX_FIELD_CHARS - 1)}…" g="line\\nbreak"')
    assert TextFormatter().format(record("no fields")).endswith(" INFO roost.test: no fields")


def test_json_lines_have_ts_level_logger_msg_and_the_fields() -> None:
    shipped = json.loads(JsonFormatter().format(record("hello %s", room="r1", code=4003, what=object)))
    assert list(shipped)[:4] == ["ts", "level", "logger", "msg"]
    assert shipped["ts"].endswith("Z") and "T" in shipped["ts"]
    assert (shipped["level"], shipped["logger"], shipped["msg"], shipped["room"], shipped["code"]) == (
        "info", "roost.test", "hello %s", "r1", 4003)
    assert shipped["what"] == "<class 'object'>"  # anything else as its str, bounded
    assert json.loads(JsonFormatter().format(record("m", ts="forged", level="forged")))["level"] == "info"


async def test_serve_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    process = start_server(tmp_path, "--dev", "--log-format", "json")
    try:
        with trio.fail_after(30):
            lines = await read_lines(process, 4)
            async with open_client(lines["ROOST_URL"], lines["ROOST_TOKEN"], reconnect=False) as dev:
                await dev.create()
                await dev.admin(lines["ROOST_SERVICE_KEY"], "stats")
            async with trio.open_nursery() as nursery:
                peer = await raw_peer(nursery, lines["ROOST_URL"])
                await peer.send(Hello(v=PROTOCOL_VERSION, token="not-a-token"))
                assert await peer.closed_code() == 4500
                nursery.cancel_scope.cancel()
            process.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(process.wait) == 0
        assert process.stderr is not None
        stderr = process.stderr.read()
    finally:
        stop(process)
    shipped = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in shipped)

    def one(msg: str, match: Callable[[dict[str, Any]], bool] = lambda line: True) -> dict[str, Any]:
        found = [line for line in shipped if line["msg"] == msg and match(line)]
        assert len(found) == 1, (msg, shipped)
        return found[0]

    assert one("roost serving on ws://127.0.0.1:%d/".replace("%d", lines["ROOST_URL"].rsplit(":", 1)[1].strip("/")))
    closed = one("connection closed", lambda line: line.get("user") == "dev")
    assert (closed["code"], closed["by"], closed["reason"], closed["logger"]) == (1000, "client", "normal", "roost.connection")
    assert one("auth failed")["reason"] == "malformed"
    assert one("admin action") == {**one("admin action"), "op": "stats", "outcome": "ok", "level": "info"}
    for secret in (lines["ROOST_TOKEN"], lines["ROOST_SERVICE_KEY"]):
        assert secret not in stderr


def test_log_format_is_checked(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "roost.cli", "serve", "--dev", "--log-format", "xml"],
                            capture_output=True, text=True, timeout=30, env={**os.environ}, cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'xml'" in result.stderr
