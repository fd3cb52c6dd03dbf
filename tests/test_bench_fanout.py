"""Keep ``python -m roost.bench fanout`` from rotting: a tiny run against a real engine and both baseline relays.

The servers are real subprocesses on 127.0.0.1 and the clients are real sockets, so this exercises the
whole path (upgrade, hello, join_or_create, chat fan-out). The picows relay needs the ``bench`` extra
(picows, uvloop), which ``.ci/run`` installs: ``pip install -e '.[test,bench]'``. Only the shape of
the output and the absence of errors are checked, never a timing, so a slow or busy machine cannot
fail this test.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

import msgpack
import pytest

from roost.bench import fanout as fanout_bench
from roost.bench.__main__ import BENCHES, build_parser

KEYS = fanout_bench.METRICS


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fanout_bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_fanout_bench_runs_engine_and_both_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    assert fanout_bench.picows_available(), "the picows baseline needs the bench extra: pip install -e '.[test,bench]'"
    args = _args("--rooms", "1", "--members", "3", "--rate", "5", "--seconds", "1", "--warmup", "0.5",
                 "--drain", "2", "--setup-timeout", "10")
    assert fanout_bench.run(args) == 0

    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) > 1 and not lines[0].startswith("{"), "a human-readable table comes before the JSON line"
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "engine", "baseline", "picows", "engine/base", "engine/picows"]
    assert any(line.startswith("cpu_ratio_picows") for line in lines)
    result = json.loads(lines[-1])

    details = (result["engine_detail"], result["baseline_detail"], result["picows_detail"])
    for figures in (result, result["baseline"], result["picows"]):
        assert set(KEYS) <= set(figures)
        assert figures["received"] > 0
        assert figures["offered"] > 0
        assert figures["errors"] == 0, [detail["error_samples"] for detail in details]
    assert {"cpu_ratio", "cpu_ratio_picows", "baseline_cpu_ratio_picows", "rooms", "members", "rate", "seconds",
            "python"} <= set(result)
    for mine, theirs, key in ((result, result["baseline"], "cpu_ratio"), (result, result["picows"], "cpu_ratio_picows"),
                              (result["baseline"], result["picows"], "baseline_cpu_ratio_picows")):
        if theirs["server_cpu_us_per_delivery"]:  # CPU is read in clock ticks: a tiny run may see 0 of them
            expected = mine["server_cpu_us_per_delivery"] / theirs["server_cpu_us_per_delivery"]
            assert result[key] == pytest.approx(expected, abs=0.01)
    assert result["picows_loop"] == "uvloop" and result["picows_note"] is None
    assert (result["rooms"], result["members"], result["rate"], result["seconds"]) == (1, 3, 5.0, 1.0)
    assert isinstance(result["python"], str) and result["python"]
    for detail in details:
        assert detail["members_joined"] == 3
        assert detail["server"]["exit_status"] is not None, "the server was reaped"
        # The hypervisor's steal is reported apart, and is part of the other CPU (both are machine-wide).
        assert 0 <= detail["steal_cpu_util"] <= 2 and detail["other_cpu_util"] is not None
    assert any("hypervisor steal" in line for line in lines)


def test_fanout_bench_says_why_the_picows_column_is_empty(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the bench extra the run still completes: picows is n/a with the reason, never a silent gap."""
    monkeypatch.setattr(fanout_bench, "picows_available", lambda: False)
    args = _args("--rooms", "1", "--members", "2", "--rate", "5", "--seconds", "0.3", "--warmup", "0.2",
                 "--drain", "1", "--setup-timeout", "10", "--no-baseline")
    assert fanout_bench.run(args) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    result = json.loads(lines[-1])
    assert result["picows"] is None and result["picows_detail"] is None and result["cpu_ratio_picows"] is None
    assert result["picows_note"] == fanout_bench.PICOWS_MISSING
    assert f"picows: {fanout_bench.PICOWS_MISSING}" in lines
    assert result["errors"] == 0 and result["received"] > 0


def test_dispatcher_knows_fanout_and_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHES["fanout"] is fanout_bench
    args = build_parser().parse_args(["fanout", "--rooms", "10", "--members", "10", "--rate", "10"])
    assert (args.rooms, args.members, args.rate, args.seconds, args.warmup) == (10, 10, 10.0, 10.0, 2.0)
    assert args.run is fanout_bench.run
    for bad in (["--rooms", "0"], ["--rate", "0"], ["--seconds", "-1"], ["--members", "many"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["fanout", *bad])
    assert build_parser().parse_args(["fanout", "--no-picows"]).no_picows
    assert fanout_bench.run(_args("--url", "ws://127.0.0.1:1/")) == 2, "--url needs --dev-key"
    capsys.readouterr()


def _recv_frame(sock: socket.socket, buffer: bytearray) -> dict:
    """One unmasked binary server frame (the relays send nothing else here), decoded."""
    while True:
        if len(buffer) >= 2:
            size, head = buffer[1] & 0x7F, 2
            if size == 126 and len(buffer) >= 4:
                size, head = int.from_bytes(buffer[2:4], "big"), 4
            if size < 127 and len(buffer) >= head + size:
                assert buffer[0] == 0x82, buffer[:2]
                payload = bytes(buffer[head:head + size])
                del buffer[:head + size]
                frame: dict = msgpack.unpackb(payload, raw=False)
                return frame
        chunk = sock.recv(65536)
        assert chunk, "the relay closed the connection"
        buffer += chunk


@pytest.mark.parametrize(("module", "key"), [("roost.bench.relay", "RELAY_URL"),
                                             ("roost.bench.picows_relay", "PICOWS_URL")])
def test_both_relays_answer_what_they_do_not_do(module: str, key: str, tmp_path: Path) -> None:
    """The two yardsticks speak the same protocol, refusals included: the load generator counts those."""
    server = fanout_bench.ServerProcess([sys.executable, "-m", module, "--port", "0"], cpu=None, workdir=tmp_path,
                                        name="relay")
    try:
        url = server.read_announcement([key], fanout_bench.SERVER_START_TIMEOUT)[key]
        host, port = url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            gen = fanout_bench.LoadGenerator(url, ["t"], rooms=1, members=1)
            sock.sendall(gen.request)
            buffer = bytearray()
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head, _sep, rest = bytes(buffer).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            buffer = bytearray(rest)

            def ask(frame: object) -> dict:
                data = frame if isinstance(frame, bytes) else msgpack.packb(frame)
                sock.sendall(fanout_bench.client_frame(data))
                return _recv_frame(sock, buffer)

            welcome = ask({"t": "hello", "v": 1, "token": "any", "hb": 30_000})
            assert welcome["t"] == "welcome" and welcome["hb"] == 30_000
            refused = ask({"t": "chat_send", "id": 7, "room": "r", "cid": "c", "text": "hi"})
            assert (refused["t"], refused["id"], refused["code"]) == ("error", 7, "not_member")
            assert ask({"t": "lobby", "id": 8}) | {"message": ""} == {"t": "error", "id": 8, "code": "unsupported",
                                                                       "message": ""}
            assert ask(b"\xc1")["code"] == "malformed", "bytes that are not msgpack"
            assert ask({"t": "ping"})["t"] == "pong"
            joined = ask({"t": "join_or_create", "id": 9, "code": "bench-0"})
            assert joined == {"t": "ok", "id": 9, "result": {"room": "bench-0"}}
            sock.sendall(fanout_bench.client_frame(msgpack.packb(
                {"t": "chat_send", "id": 10, "room": "bench-0", "cid": "c1", "text": "hello"})))
            chat, ok = _recv_frame(sock, buffer), _recv_frame(sock, buffer)
            assert (chat["t"], chat["room"], chat["msg"]["n"], chat["msg"]["text"]) == ("chat", "bench-0", 1, "hello")
            assert (ok["t"], ok["id"], ok["result"]["n"]) == ("ok", 10, 1)
    finally:
        assert server.stop() is not None, "the relay was reaped"


def test_the_saturation_sweep_raises_the_rate_until_p99_passes_its_bound(capsys: pytest.CaptureFixture[str]) -> None:
    """``--sweep`` tiny: steps at rate x factor each, stopped by the step count; then a p99 bound no
    step can hold (0 ms): the rate halves while no step held; the last step that held and its msgs/s
    per core are printed."""
    common = ("--rooms", "1", "--members", "2", "--rate", "4", "--seconds", "0.4", "--warmup", "0.2", "--drain", "2",
              "--setup-timeout", "10", "--sweep", "--sweep-factor", "2")
    assert fanout_bench.run(_args(*common, "--sweep-steps", "2", "--sweep-p99-ms", "60000")) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert not lines[0].startswith("{") and any(line.startswith("last rate that held: 8 msg/s") for line in lines)
    result = json.loads(lines[-1])
    assert [step["rate"] for step in result["steps"]] == [4.0, 8.0]
    assert all(step["errors"] == 0 and step["received"] == step["offered"] > 0 for step in result["steps"])
    assert (result["held_rate"], result["held_msgs_per_s"], result["stopped_by"]) == (8.0, 16.0, "steps")
    held = result["steps"][-1]
    if held["server_cpu_util"]:  # CPU is read in clock ticks: a tiny run may see 0 of them
        assert result["held_msgs_per_core_s"] == pytest.approx(16.0 / held["server_cpu_util"], rel=0.01)

    assert fanout_bench.run(_args(*common, "--sweep-steps", "2", "--sweep-p99-ms", "0")) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    result = json.loads(lines[-1])
    assert [step["rate"] for step in result["steps"]] == [4.0, 2.0]
    assert all(step["failed"].startswith("p99 ") for step in result["steps"])
    assert result["held_rate"] is None and result["stopped_by"] == "steps"
    assert "no step held (stopped by steps)" in lines


def test_the_sweep_refuses_a_url_and_bad_factors() -> None:
    assert fanout_bench.run(_args("--sweep", "--url", "ws://127.0.0.1:1/", "--dev-key", "k")) == 2
    for bad in (["--sweep-factor", "1"], ["--sweep-factor", "x"], ["--sweep-steps", "0"], ["--sweep-p99-ms", "-1"]):
        with pytest.raises(SystemExit):
            _args(*bad)


def test_fanout_bench_drives_a_node_of_two_workers_its_members_following_moved(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--workers 2``: every member comes in through the node's shared port and is sent to its room's
    worker (``moves``); the server CPU is the supervisor's and its workers' together."""
    args = _args("--rooms", "4", "--members", "3", "--rate", "5", "--seconds", "1", "--warmup", "0.5",
                 "--drain", "2", "--setup-timeout", "20", "--workers", "2", "--no-baseline", "--no-picows")
    assert fanout_bench.run(args) == 0
    result = json.loads(capsys.readouterr().out.rstrip("\n").split("\n")[-1])
    detail = result["engine_detail"]
    assert result["errors"] == 0 and detail["members_joined"] == 12 and detail["moves"] >= 12
    assert result["received"] == result["offered"] > 0 and result["server_cpu_us_per_delivery"] > 0
