"""``python -m roost.bench cluster``: one process against a node of two workers, the join's hop, a projection."""

from __future__ import annotations

import argparse
import json

import pytest

from roost.bench import cluster as cluster_bench


def test_the_cluster_bench_compares_one_process_with_two_workers_and_times_the_hop(
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cluster_bench.add_arguments(parser)
    args = parser.parse_args(["--rooms", "2", "--members", "2", "--rate", "5", "--seconds", "1", "--warmup", "0.5",
                              "--drain", "2", "--joins", "3"])
    assert cluster_bench.run(args) == 0
    out = capsys.readouterr().out.rstrip("\n").split("\n")
    assert "1 process" in out[2] and "2 workers" in out[2]
    result = json.loads(out[-1])
    assert result["one_process"]["errors"] == result["workers_node"]["errors"] == 0
    assert result["workers_cpu_ratio"] > 0 and result["moves"] >= 4
    assert result["moves_per_join"] == 1.0 and result["direct_moves_per_join"] == 0.0  # once per join, by the shared port
    assert result["projected_deliveries_per_s"]["32"] > result["projected_deliveries_per_s"]["8"] > 0


def test_the_cluster_bench_needs_two_workers() -> None:
    parser = argparse.ArgumentParser()
    cluster_bench.add_arguments(parser)
    assert cluster_bench.run(parser.parse_args(["--workers", "1"])) == 2
