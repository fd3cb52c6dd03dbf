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
