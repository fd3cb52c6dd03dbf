"""Keep ``python -m roost.bench memory`` from rotting: a tiny run against a real engine subprocess.

The engine is a real ``roost serve --dev`` on 127.0.0.1 and the clients are real sockets (upgrade,
hello, create, leave). Only the shape of the output, the absence of errors and what holds on any
machine (the engine holds exactly the rooms and connections made; RSS figures are positive numbers)
are checked, never a size: RSS moves with the allocator, so a figure is for people, not for asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource

import pytest

from roost.bench import memory as memory_bench
from roost.bench.__main__ import BENCHES, build_parser


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    memory_bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_memory_bench_prints_kb_per_connection_and_per_room(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("--connections", "60", "--rooms", "80", "--creators", "8", "--settle", "0.2",
                 "--setup-timeout", "20")
    assert memory_bench.run(args) == 0

    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) > 1 and not lines[0].startswith("{"), "a human-readable table comes before the JSON line"
    assert any(line.startswith("idle connection ") for line in lines)
    assert any(line.startswith("idle empty room ") for line in lines)
    result = json.loads(lines[-1])

    assert result["errors"] == 0, result["error_samples"]
    assert (result["connections"], result["rooms"], result["creators"]) == (60, 80, 8)
    counts = result["engine_counts"]
    assert counts["rooms_after"] - counts["rooms_before"] == 80, "no room was reaped during the run"
    assert counts["connections_after"] - counts["connections_before"] == 60, "every idle connection stayed"
    for key in ("kb_per_connection", "kb_per_room", "anon_kb_per_connection", "anon_kb_per_room"):
        assert isinstance(result[key], float)
    rss = result["rss_kib"]
    for phase in ("baseline", "after_rooms", "after_connections"):
        assert rss[phase]["VmRSS"] >= rss[phase]["RssAnon"] > 0
    assert result["nofile"]["soft"] >= 60 + 8 + memory_bench.FD_MARGIN
    assert result["server"]["exit_status"] is not None, "the server was reaped"


def test_read_rss_and_the_descriptor_limit() -> None:
    rss = memory_bench.read_rss(os.getpid())
    assert set(rss) == {"VmRSS", "RssAnon", "RssFile", "RssShmem"}
    assert rss["VmRSS"] == rss["RssAnon"] + rss["RssFile"] + rss["RssShmem"]
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        soft, hard = memory_bench.raise_nofile(100)
        assert (soft, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft == hard or hard == resource.RLIM_INFINITY, "raised as far as the hard limit allows"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_memory_bench_refuses_more_connections_than_descriptors(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A hard limit below the run's need is said up front, with the limit, before any engine starts."""
    monkeypatch.setattr(memory_bench, "raise_nofile", lambda needed: (500, 500))
    assert memory_bench.run(_args("--connections", "5000")) == 1
    err = capsys.readouterr().err
    assert "hard limit is 500" in err and "5000 connections" in err


def test_dispatcher_knows_memory_and_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHES["memory"] is memory_bench
    args = build_parser().parse_args(["memory"])
    assert (args.connections, args.rooms, args.creators, args.settle) == (5000, 10_000, 250, 1.0)
    assert args.run is memory_bench.run
    for bad in (["--connections", "0"], ["--rooms", "-1"], ["--settle", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["memory", *bad])
    assert memory_bench.run(_args("--url", "ws://127.0.0.1:1/")) == 2, "--url needs --dev-key and --server-pid"
    capsys.readouterr()
