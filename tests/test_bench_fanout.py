"""Keep ``python -m roost.bench fanout`` from rotting: a tiny run against a real engine and the baseline relay.

Both servers are real subprocesses on 127.0.0.1 and the clients are real sockets, so this exercises the
whole path (upgrade, hello, join_or_create, chat fan-out). Only the shape of the output and the absence
of errors are checked, never a timing, so a slow or busy machine cannot fail this test.
"""

from __future__ import annotations

import argparse
import json

import pytest

from roost.bench import fanout as fanout_bench
from roost.bench.__main__ import BENCHES, build_parser

KEYS = fanout_bench.METRICS


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fanout_bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_fanout_bench_runs_engine_and_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("--rooms", "1", "--members", "3", "--rate", "5", "--seconds", "1", "--warmup", "0.5",
                 "--drain", "2", "--setup-timeout", "10")
    assert fanout_bench.run(args) == 0

    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) > 1 and not lines[0].startswith("{"), "a human-readable table comes before the JSON line"
    result = json.loads(lines[-1])

    for figures in (result, result["baseline"]):
        assert set(KEYS) <= set(figures)
        assert figures["received"] > 0
        assert figures["offered"] > 0
        assert figures["errors"] == 0, (result["engine_detail"]["error_samples"],
                                        result["baseline_detail"]["error_samples"])
    assert {"cpu_ratio", "rooms", "members", "rate", "seconds", "python"} <= set(result)
    assert (result["rooms"], result["members"], result["rate"], result["seconds"]) == (1, 3, 5.0, 1.0)
    assert isinstance(result["python"], str) and result["python"]
    for detail in (result["engine_detail"], result["baseline_detail"]):
        assert detail["members_joined"] == 3
        assert detail["server"]["exit_status"] is not None, "the server was reaped"


def test_dispatcher_knows_fanout_and_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHES["fanout"] is fanout_bench
    args = build_parser().parse_args(["fanout", "--rooms", "10", "--members", "10", "--rate", "10"])
    assert (args.rooms, args.members, args.rate, args.seconds, args.warmup) == (10, 10, 10.0, 10.0, 2.0)
    assert args.run is fanout_bench.run
    for bad in (["--rooms", "0"], ["--rate", "0"], ["--seconds", "-1"], ["--members", "many"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["fanout", *bad])
    assert fanout_bench.run(_args("--url", "ws://127.0.0.1:1/")) == 2, "--url needs --dev-key"
    capsys.readouterr()
