"""``roost admin``: the client of the HTTP service API, its tables, its exit statuses.

Most tests run the command in-process against :mod:`tests.fake_service_api` (a test double of the
contract); the last one runs ``roost admin`` against a real ``roost serve --dev``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from roost.admin_cli import MAX_RESPONSE_BYTES, api_base
from roost.cli import main

from roost.client import ConnectionClosedError, open_client
from roost.protocol.frames import MessageEvent, PresenceDiff, RoomClosed

from .fake_service_api import error, fake_service_api, result
from .test_cli_serve import read_lines, start_server, stop

KEY = "k3y-that-must-never-be-printed"

ROOM_A = {"room": "ra", "code": "ABCD", "members": 2, "max": 4, "phase": "lobby", "public": True, "created": 1}
ROOM_B = {"room": "rb", "code": "WXYZ", "members": 0, "max": 8, "phase": "playing", "public": False, "created": 2}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROOST_URL", raising=False)
    monkeypatch.delenv("ROOST_SERVICE_KEY", raising=False)


def admin(capsys: pytest.CaptureFixture[str], url: str, *argv: str, key: str = KEY) -> tuple[int, str, str]:
    status = main(["admin", *argv, "--url", url, "--key", key])
    out, err = capsys.readouterr()
    assert KEY not in out and KEY not in err  # never the credential, whatever happened
    return status, out, err


def test_stats_is_a_two_column_table_and_json_is_the_raw_result(capsys: pytest.CaptureFixture[str]) -> None:
    stats = {"connections": 3, "rooms": 12, "auth_failures": 0}
    with fake_service_api(KEY, stats=lambda args: result(stats)) as api:
        status, out, err = admin(capsys, api.url, "stats")
        assert (status, err) == (0, "")
        assert out.splitlines() == ["COUNTER        VALUE", "connections    3", "rooms          12",
                                    "auth_failures  0"]
        status, out, _ = admin(capsys, api.url, "stats", "--json")
        assert status == 0 and json.loads(out) == stats
        assert api.seen[0].path == "/api/stats" and api.seen[0].body == {}
        assert api.seen[0].headers["authorization"] == f"Bearer {KEY}"
        assert api.seen[0].headers["content-type"] == "application/json"


def test_rooms_table_one_page_hints_at_the_next(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_service_api(KEY, rooms=lambda args: result({"rooms": [ROOM_A, {**ROOM_B, "logic": "ttt"}],
                                                          "next": "c2"})) as api:
        status, out, err = admin(capsys, api.url, "rooms", "--limit", "2", "--cursor", "c1")
        assert status == 0
        assert out.splitlines() == [
            "ROOM  CODE  PUBLIC  MEMBERS  PHASE    LOGIC",
            "ra    ABCD  yes     2/4      lobby    -",
            "rb    WXYZ  no      0/8      playing  ttt",
        ]
        assert err == "more rooms: roost admin rooms --cursor c2 (or --all)\n"
        assert api.seen[0].body == {"limit": 2, "cursor": "c1"}


def test_rooms_all_follows_the_cursor_to_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    pages = {None: {"rooms": [ROOM_A], "next": "p2"}, "p2": {"rooms": [ROOM_B], "next": "p3"}, "p3": {"rooms": []}}
    with fake_service_api(KEY, rooms=lambda args: result(pages[args.get("cursor")])) as api:
        status, out, err = admin(capsys, api.url, "--json", "rooms", "--all", "--limit", "1")
        assert (status, err) == (0, "")
        assert json.loads(out) == {"rooms": [ROOM_A, ROOM_B]}
        assert [seen.body for seen in api.seen] == [{"limit": 1}, {"limit": 1, "cursor": "p2"},
                                                    {"limit": 1, "cursor": "p3"}]


def test_rooms_all_stops_when_the_server_repeats_a_cursor(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_service_api(KEY, rooms=lambda args: result({"rooms": [ROOM_A], "next": "again"})) as api:
        status, _, err = admin(capsys, api.url, "rooms", "--all")
        assert status == 3 and err == "roost: error: bad response: the server repeated a cursor\n"
        assert len(api.seen) == 2


def test_room_prints_a_summary_and_its_members(capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = {"room": "ra", "code": "ABCD", "epoch": 1, "seq": 9, "public": True, "max": 4, "host": "ann",
                "phase": "lobby", "version": 3, "created": 1, "member_count": 3, "chat_n": 5, "logic": "ttt",
                "meta": {"blob": {"$bytes": "AAEC"}},
                "members": [{"user": "ann", "name": "Ann", "status": "online", "last_seen": 1, "sessions": 1},
                            {"user": "bob", "name": "Bob\nEvil", "status": "offline", "last_seen": 1, "typing": True}]}
    with fake_service_api(KEY, room=lambda args: result(snapshot)) as api:
        status, out, _ = admin(capsys, api.url, "room", "ra")
        assert status == 0 and api.seen[0].body == {"room": "ra"}
        lines = out.splitlines()
        assert lines[:4] == ["FIELD      VALUE", "room       ra", "code       ABCD", "public     yes"]
        assert "members    3/4" in lines and "logic      ttt" in lines and "epoch/seq  1/9" in lines
        assert 'meta       {"blob":{"$bytes":"AAEC"}}' in lines
        assert lines[-4:] == ["USER  NAME      STATUS   SESSIONS  TYPING",
                              "ann   Ann       online   1         -",
                              "bob   Bob Evil  offline  -         yes",  # a newline in a name stays one row
                              "(2 of 3 members shown)"]


def test_each_operation_sends_its_args(capsys: pytest.CaptureFixture[str]) -> None:
    ok = lambda args: result(None)  # noqa: E731
    with fake_service_api(KEY, close=ok, kick=ok, revoke=ok, publish=ok) as api:
        before = int(time.time())
        for argv in (["close", "ra", "--reason", "season over"], ["close", "rb"], ["kick", "ra", "bob"],
                     ["revoke", "--jti", "j1", "--exp", "1900000000"], ["revoke", "--user", "eve", "--exp", "7d"],
                     ["publish", "ra", "notice", "--body", '{"text": "hi", "n": [1, 2]}'], ["publish", "ra", "ping"]):
            status, out, err = admin(capsys, api.url, *argv)
            assert (status, out, err) == (0, "ok\n", "")
        bodies = [(seen.path, seen.body) for seen in api.seen]
        assert bodies[:4] == [("/api/close", {"room": "ra", "reason": "season over"}), ("/api/close", {"room": "rb"}),
                              ("/api/kick", {"room": "ra", "user": "bob"}),
                              ("/api/revoke", {"jti": "j1", "exp": 1900000000})]
        path, body = bodies[4]
        assert path == "/api/revoke" and body["user"] == "eve"
        assert before + 7 * 86400 <= body["exp"] <= int(time.time()) + 7 * 86400
        assert bodies[5:] == [("/api/publish", {"room": "ra", "kind": "notice", "body": {"text": "hi", "n": [1, 2]}}),
                              ("/api/publish", {"room": "ra", "kind": "ping"})]


@pytest.mark.parametrize(
    ("answer", "status", "line"),
    [
        (error("not_found", "no such room"), 1, "roost: error: not_found: no such room"),
        (error("bad_field", "args.limit: must be at most 100"), 1, "roost: error: bad_field: args.limit: must be at most 100"),
        (error("rate_limited", "slow down"), 1, "roost: error: rate_limited: slow down"),
        (error("internal", "boom"), 1, "roost: error: internal: boom"),
        (error("unauthorized", "wrong service key"), 4, "roost: error: unauthorized: wrong service key"),
        (error("unsupported", "the admin API is disabled"), 4, "roost: error: unsupported: the admin API is disabled"),
        ((401, b"{}", {}), 3, None),
        ((502, b"<html>bad gateway</html>", {}), 3, None),
        ((200, b'{"rooms": []}', {}), 3, None),
        ((200, b"not json", {}), 3, None),
        (result([1, 2]), 3, "roost: error: bad response: AttributeError while reading the result (try --json)"),
        ((404, json.dumps({"error": {"code": "not_found", "message": "x\x1b[31m\n" * 200}}).encode(), {}), 1, None),
    ],
)
def test_outcomes_map_to_exit_statuses(capsys: pytest.CaptureFixture[str], answer: Any, status: int, line: str | None) -> None:
    with fake_service_api(KEY, room=lambda args: answer) as api:
        got, out, err = admin(capsys, api.url, "room", "ra")
        assert (got, out) == (status, "")
        assert err.count("\n") == 1 and err.startswith("roost: error: ")  # one line, whatever the server sent
        assert "\x1b" not in err and len(err) < 400
        if line is not None:
            assert err == line + "\n"
        if status == 3 and line is None:
            assert "bad response from http://127.0.0.1:" in err


def test_a_wrong_key_is_exit_4_and_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_service_api("the-right-one", stats=lambda args: result({})) as api:
        status, _, err = admin(capsys, api.url, "stats")
        assert (status, err) == (4, "roost: error: unauthorized: wrong service key\n")


def test_redirects_are_not_followed(capsys: pytest.CaptureFixture[str]) -> None:
    """urllib would resend the Authorization header to the Location, another host included."""
    with fake_service_api(KEY) as elsewhere:
        target = elsewhere.url.replace("ws://", "http://") + "api/stats"
        with fake_service_api(KEY, stats=lambda args: (307, b"", {"location": target})) as api:
            status, _, err = admin(capsys, api.url, "stats")
            assert status == 3 and "HTTP 307" in err
        assert elsewhere.seen == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_unreachable_and_silent_servers_are_exit_3_within_the_timeout(
    capsys: pytest.CaptureFixture[str], silent_port: int
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    status, _, err = admin(capsys, f"ws://127.0.0.1:{closed_port}/", "stats")
    assert (status, err) == (3, f"roost: error: cannot reach the server at http://127.0.0.1:{closed_port}: "
                                "Connection refused\n")
    started = time.monotonic()
    status, _, err = admin(capsys, f"http://127.0.0.1:{silent_port}", "stats", "--timeout", "0.3")
    assert status == 3 and ("no answer from" in err or "timed out" in err), err
    assert time.monotonic() - started < 5


def test_an_oversized_answer_is_refused(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("roost.admin_cli.MAX_RESPONSE_BYTES", 1000)
    with fake_service_api(KEY, stats=lambda args: result({"x": "y" * 2000})) as api:
        status, _, err = admin(capsys, api.url, "stats")
        assert (status, err) == (3, "roost: error: bad response: larger than 1000 bytes\n")
    assert MAX_RESPONSE_BYTES >= 1024 * 1024


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "ftp://host/", "stats"], "--url must be a ws://, wss://, http:// or https:// URL"),
        (["--url", "localhost:8765", "stats"], "--url must be a ws://"),
        (["publish", "ra", "k", "--body", "{nope"], "--body must be JSON"),
        (["revoke", "--user", "u", "--exp", "10"], None),  # fine: a Unix time (refused by the server, not here)
        (["revoke", "--user", "u", "--exp", "ten"], "invalid duration 'ten'"),
        (["revoke", "--user", "u", "--jti", "j", "--exp", "1d"], "not allowed with argument"),
        (["revoke", "--exp", "1d"], "one of the arguments --jti --user is required"),
        (["rooms", "--limit", "x"], "invalid int value"),
        (["kick", "ra"], "the following arguments are required: USER"),
        (["stats", "--timeout", "0"], "--timeout must be between 0 and 300 seconds"),
        (["nope"], "invalid choice: 'nope'"),
    ],
)
def test_usage_errors_are_exit_2_in_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str | None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_SERVICE_KEY", KEY)
    monkeypatch.setenv("ROOST_URL", "http://127.0.0.1:9/")  # discard: nothing should get that far but one case
    status = main(["admin", *argv])
    err = capsys.readouterr().err
    if message is None:
        assert status == 3
    else:
        assert status == 2 and err.startswith("roost: error: ") and message in err and err.count("\n") == 1


def test_url_and_key_come_from_the_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["admin", "stats"]) == 2
    assert capsys.readouterr().err == "roost: error: no server URL: pass --url or set ROOST_URL (roost serve prints it)\n"
    with fake_service_api(KEY, stats=lambda args: result({"rooms": 0})) as api:
        monkeypatch.setenv("ROOST_URL", api.url)
        assert main(["admin", "stats"]) == 2
        assert "no service key: set ROOST_SERVICE_KEY" in capsys.readouterr().err
        monkeypatch.setenv("ROOST_SERVICE_KEY", KEY)
        assert main(["admin", "stats"]) == 0
        assert capsys.readouterr().out == "COUNTER  VALUE\nrooms    0\n"
        assert main(["admin", "stats", "--key", "flag-wins"]) == 4  # a flag beats the variable


def test_api_base() -> None:
    assert api_base("ws://127.0.0.1:8765/") == "http://127.0.0.1:8765"
    assert api_base("wss://roost.example/") == "https://roost.example"
    assert api_base("http://h:1") == "http://h:1"
    assert api_base("HTTPS://h/prefix/") == "https://h/prefix"  # behind a proxy under a path
    with pytest.raises(ValueError, match="query"):
        api_base("http://h/?token=x")


ROOST = str(Path(sys.executable).with_name("roost"))
"""The console script of this venv (the CLI tests run the installed command)."""


def test_help_documents_the_exit_statuses() -> None:
    help_text = subprocess.run([ROOST, "admin", "--help"], capture_output=True, text=True, timeout=30,
                               check=True).stdout
    for line in ("0  done", "1  the server refused", "2  usage", "3  the server cannot be reached", "4  authentication"):
        assert line in help_text


async def test_roost_admin_end_to_end_against_roost_serve_dev(tmp_path: Path) -> None:
    """The README's newcomer: ``roost serve --dev``, then ``roost admin`` with the printed lines.

    Needs the HTTP service API on the WebSocket port (issue 10 items 1 and 2, branch i10-http):
    against a server without it every command here ends with exit status 3."""
    server = start_server(tmp_path, "--dev")
    try:
        with trio.fail_after(90):
            lines = await read_lines(server, 4)
            key = lines["ROOST_SERVICE_KEY"]
            env = {**os.environ, "ROOST_URL": lines["ROOST_URL"], "ROOST_SERVICE_KEY": key}
            outputs: list[str] = []

            async def roost(*argv: str, **changes: str) -> tuple[int, str, str]:
                done = await trio.to_thread.run_sync(lambda: subprocess.run(
                    [ROOST, *argv], capture_output=True, text=True, timeout=30, env={**env, **changes}))
                outputs.extend((done.stdout, done.stderr))
                return done.returncode, done.stdout, done.stderr

            status, out, err = await roost("admin", "stats")
            assert (status, err) == (0, ""), err
            assert out.startswith("COUNTER") and any(row.split() == ["sessions", "0"] for row in out.splitlines())
            bob_token = (await roost("token", "--key", lines["ROOST_DEV_KEY"], "--sub", "bob"))[1].strip()
            async with open_client(lines["ROOST_URL"], lines["ROOST_TOKEN"], reconnect=False) as dev, \
                    open_client(lines["ROOST_URL"], bob_token, reconnect=False) as bob:
                room = await dev.create(public=False)
                await dev.create(public=True)
                await bob.join(room=room.room)

                status, out, _ = await roost("admin", "rooms", "--json")
                assert status == 0 and room.room in {r["room"] for r in json.loads(out)["rooms"]}
                status, out, _ = await roost("admin", "rooms", "--all", "--limit", "1")
                assert status == 0 and len(out.splitlines()) == 3  # a header and both rooms, over two pages
                status, out, _ = await roost("admin", "room", room.room)
                assert status == 0 and "host       dev" in out and any(row.split()[:2] == ["bob", "online"]
                                                                       for row in out.splitlines())
                status, out, _ = await roost("admin", "publish", room.room, "notice", "--body", '{"text": "hi"}')
                assert (status, out) == (0, "ok\n")
                notice = await bob.next_event(MessageEvent)
                assert (notice.kind, notice.body, notice.sender) == ("notice", {"text": "hi"}, None)
                assert (await roost("admin", "kick", room.room, "bob"))[0] == 0
                left = await dev.next_event(PresenceDiff)
                while not left.leave:
                    left = await dev.next_event(PresenceDiff)
                assert left.leave == ("bob",)
                assert (await roost("admin", "close", room.room, "--reason", "season over"))[0] == 0
                closed = await dev.next_event(RoomClosed)
                assert (closed.code, closed.message) == ("closed", "season over")
                status, out, err = await roost("admin", "room", room.room)
                assert (status, out) == (1, "") and err.startswith("roost: error: not_found: ") and err.count("\n") == 1
                assert (await roost("admin", "revoke", "--user", "bob", "--exp", "1h"))[0] == 0
                gone = await bob.wait_closed()
                assert isinstance(gone, ConnectionClosedError) and gone.code == 4501
                status, _, err = await roost("admin", "stats", ROOST_SERVICE_KEY="not-the-key")
                assert (status, err) == (4, "roost: error: unauthorized: wrong service key\n")
            server.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(server.wait) == 0
            status, _, err = await roost("admin", "stats")
            assert status == 3 and err.startswith("roost: error: cannot reach the server at http://127.0.0.1:")
            assert all(key not in text for text in outputs)
    finally:
        stop(server)
