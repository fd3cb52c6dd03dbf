"""``roost serve``: the README's first Quick start command, as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from roost.cli import main
from roost.client import open_client


def start_server(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "roost.cli", "serve", "--port", "0", "--data", str(tmp_path / "data"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def read_lines(process: subprocess.Popen[str], count: int) -> dict[str, str]:
    assert process.stdout is not None
    lines: dict[str, str] = {}
    while len(lines) < count:
        line = await trio.to_thread.run_sync(process.stdout.readline)
        assert line, f"server exited early: {process.stderr.read() if process.stderr else ''}"
        key, _, value = line.strip().partition("=")
        lines[key] = value
    return lines


async def test_serve_dev_prints_url_token_and_key_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = start_server(tmp_path, "--dev")
    try:
        with trio.fail_after(30):
            lines = await read_lines(process, 4)
            assert list(lines) == ["ROOST_URL", "ROOST_TOKEN", "ROOST_DEV_KEY", "ROOST_SERVICE_KEY"]
            assert lines["ROOST_URL"].startswith("ws://127.0.0.1:")
            assert Path(lines["ROOST_DEV_KEY"]) == tmp_path / "data" / "dev-key.jwk"
            assert lines["ROOST_SERVICE_KEY"] == (tmp_path / "data" / "service.key").read_text()
            async with open_client(lines["ROOST_URL"], lines["ROOST_TOKEN"], reconnect=False) as dev:
                snap = await dev.create(public=True)
                assert snap.host == "dev"
            # More tokens come from the printed key, as the README says.
            minted = subprocess.run(
                [sys.executable, "-m", "roost.cli", "token", "--key", lines["ROOST_DEV_KEY"], "--sub", "alice"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.strip()
            async with open_client(lines["ROOST_URL"], minted, reconnect=False) as alice:
                assert alice.user == "alice"
            process.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(process.wait) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_serve_refuses_to_start_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roost: error: no public keys configured") and err.count("\n") == 1


def test_serve_reports_bad_config_files_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "roost.toml"
    bad.write_text("port = 'eighty'\n")
    assert main(["serve", "--dev", "--config", str(bad), "--data", str(tmp_path)]) == 2
    assert "setting 'port' must be an integer" in capsys.readouterr().err
    bad.write_text("colour = 'blue'\n")
    assert main(["serve", "--dev", "--config", str(bad), "--data", str(tmp_path)]) == 2
    assert "unknown setting 'colour'" in capsys.readouterr().err
    assert main(["serve", "--dev", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


async def test_serve_reports_a_port_in_use(tmp_path: Path) -> None:
    first = start_server(tmp_path, "--dev")
    try:
        with trio.fail_after(30):
            port = (await read_lines(first, 3))["ROOST_URL"].rsplit(":", 1)[1].strip("/")
            second = subprocess.run(
                [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", port, "--data", str(tmp_path / "d2")],
                capture_output=True, text=True, timeout=30, check=False,
            )
            assert second.returncode == 2
            assert second.stderr.strip().startswith("roost: error: cannot serve on 127.0.0.1:")
            assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
        for stream in (first.stdout, first.stderr):
            if stream is not None:
                stream.close()


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


async def test_one_server_per_data_directory_and_a_killed_one_does_not_block_a_restart(tmp_path: Path) -> None:
    """Two servers on one --data would both acknowledge chat n=2 (and a restart would lose one):
    the second is refused, naming the directory and the holder, while the first keeps serving; the
    kernel releases the lock of a SIGKILLed server, so the next start succeeds."""
    data = tmp_path / "data"
    first = start_server(tmp_path, "--dev")
    try:
        with trio.fail_after(30):
            lines = await read_lines(first, 3)
            second = await trio.to_thread.run_sync(lambda: subprocess.run(
                [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data", str(data)],
                capture_output=True, text=True, timeout=30, check=False,
            ))
            assert second.returncode == 2
            assert second.stderr == (
                f"roost: error: data directory {data} is in use by another roost serve (pid {first.pid})\n"
            )
            assert second.stdout == ""
            async with open_client(lines["ROOST_URL"], lines["ROOST_TOKEN"], reconnect=False) as dev:
                room = await dev.create()
                await dev.chat_send(room.room, "kept")
            first.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(first.wait)
            assert (data / "db" / "roost.lock").read_text() == f"{first.pid}\n"  # stale, and harmless
            restarted = start_server(tmp_path, "--dev")
            try:
                lines = await read_lines(restarted, 3)
                async with open_client(lines["ROOST_URL"], lines["ROOST_TOKEN"], reconnect=False) as dev:
                    snap = await dev.join(room=room.room)
                    assert [m.text for m in (await dev.history(room.room)).messages] == ["kept"]
                    assert snap.room == room.room
            finally:
                stop(restarted)
    finally:
        stop(first)
