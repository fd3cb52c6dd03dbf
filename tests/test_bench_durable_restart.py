"""Keep ``python -m roost.bench durable`` and ``python -m roost.bench restart`` from rotting: tiny runs, real servers.

Both start real engine subprocesses on 127.0.0.1 and talk to them over real sockets. Only the shape of
the output, the absence of errors and properties that hold on any machine are checked, never a timing.
"""

from __future__ import annotations

import argparse
import json
import types

import pytest

from roost.bench import durable as durable_bench
from roost.bench import restart as restart_bench
from roost.bench.__main__ import BENCHES, build_parser


def _args(module: types.ModuleType, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


def _output(capsys: pytest.CaptureFixture[str]) -> dict:
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) > 1 and not lines[0].startswith("{"), "a human-readable table comes before the JSON line"
    result: dict = json.loads(lines[-1])
    return result


def test_durable_bench_runs_group_commit_the_memory_store_and_both_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(durable_bench, "--clients", "4", "--rooms", "2", "--window", "2", "--seconds", "0.6",
                 "--warmup", "0.2", "--drain", "5", "--setup-timeout", "10")
    assert durable_bench.run(args) == 0
    result = _output(capsys)

    assert {"acked_per_s", "baseline_acked_per_s", "ratio", "p50_ms", "p99_ms", "baseline_p50_ms", "baseline_p99_ms",
            "server_cpu_util", "loadgen_cpu_util", "errors", "python"} <= set(result)
    assert result["errors"] == 0, {mode: run["error_samples"] for mode, run in result["runs"].items()}
    assert result["acked_per_s"] > 0 and result["baseline_acked_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["acked_per_s"] / result["baseline_acked_per_s"], rel=0.01)
    assert (result["clients"], result["rooms"], result["window"], result["sync"]) == (4, 2, 2, True)
    assert set(result["runs"]) == {"group", "memory", "message", "turn", "direct"}
    assert result["direct_ratio"] == pytest.approx(result["acked_per_s"] / result["direct_acked_per_s"], abs=0.006)
    assert result["memory_acked_per_s"] > 0
    assert result["memory_ratio"] == pytest.approx(result["acked_per_s"] / result["memory_acked_per_s"], abs=0.006)
    assert "transactions" not in result["runs"]["memory"].get("store", {}) or \
        result["runs"]["memory"]["store"]["transactions"] is None, "the memory store writes no LMDB transaction"
    for run in result["runs"].values():
        assert run["members_joined"] == 4
        assert run["unacked"] == 0 and run["acked"] == run["sent"] > 0
        assert run["server"]["exit_status"] is not None, "the server was reaped"
    store = {mode: run["store"] for mode, run in result["runs"].items()}
    assert store["memory"]["commits"] > 0
    assert store["group"]["commits"] >= store["group"]["transactions"] > 0
    assert store["turn"]["commits"] == store["turn"]["transactions"], "one transaction per room turn"
    assert store["direct"]["commits"] >= store["direct"]["transactions"] > 0
    assert store["message"]["transactions"] >= result["runs"]["message"]["acked"], "one transaction per message"


def test_restart_bench_restores_every_room(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(restart_bench, "--rooms", "50", "--messages", "3", "--repeat", "1", "--timeout", "20")
    assert restart_bench.run(args) == 0
    result = _output(capsys)

    assert {"rooms", "messages", "restore_s", "baseline_restore_s", "db_bytes"} <= set(result)
    assert (result["rooms"], result["messages"], result["members"]) == (50, 3, 2)
    assert result["errors"] == 0, result["problems"]
    assert result["restore_s"] > 0 and result["baseline_restore_s"] > 0
    assert result["url_s"] <= result["restore_s"]
    assert result["db_bytes"] > 0
    assert result["records"] == 50 * result["records_per_room"]
    assert all(status is not None for status in result["exit_status"]), "every server was reaped"


def test_dispatcher_knows_both_and_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHES["durable"] is durable_bench and BENCHES["restart"] is restart_bench
    args = build_parser().parse_args(["durable"])
    assert (args.clients, args.rooms, args.window, args.seconds, args.baselines) == (200, 20, 4, 10.0, ["memory", "message", "turn", "direct"])
    args = build_parser().parse_args(["restart"])
    assert (args.rooms, args.messages, args.members, args.prepare) == (10_000, 2, 2, "clone")
    for bad in (["durable", "--window", "0"], ["durable", "--baselines", "nope"], ["restart", "--rooms", "0"],
                ["restart", "--messages", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)
    assert durable_bench.run(_args(durable_bench, "--clients", "5", "--rooms", "2")) == 2, "N must be a multiple of R"
    capsys.readouterr()
