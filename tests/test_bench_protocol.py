"""Keep ``python -m roost.bench protocol`` from rotting: run it in-process on a tiny budget.

Only the shape of the output is checked (every frame type present, JSON last line), never a timing,
so a slow or busy machine cannot fail this test.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest

from roost.bench import protocol as protocol_bench
from roost.bench.__main__ import BENCHES, build_parser
from roost.protocol.frames import CLIENT_FRAMES, SERVER_FRAMES


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    protocol_bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_protocol_bench_prints_table_then_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert protocol_bench.run(_args("--seconds", "0.2")) == 0

    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) > 1, "a human-readable table comes before the JSON line"
    assert not lines[0].startswith("{")
    result = json.loads(lines[-1])

    assert set(result["frames"]) == set(CLIENT_FRAMES) | set(SERVER_FRAMES)
    for name, row in result["frames"].items():
        assert row["dir"] == ("client" if name in CLIENT_FRAMES else "server")
        assert row["bytes"] > 0
        assert math.isfinite(row["encode_us"]) and math.isfinite(row["decode_us"])
        assert name in "\n".join(lines[:-1])
    for key in ("token_verify_per_s", "token_forged_per_s", "session_check_per_s"):
        assert result[key] is None or result[key] > 0
    assert {"packb_us", "unpackb_us"} <= set(result["baseline"])
    assert set(result["ratios"]) == {"encode_vs_packb", "decode_vs_unpackb"}
    assert isinstance(result["python"], str) and result["python"]


def test_dispatcher_knows_protocol_and_refuses_a_bad_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHES["protocol"] is protocol_bench
    args = build_parser().parse_args(["protocol", "--seconds", "0.5"])
    assert args.seconds == 0.5 and args.run is protocol_bench.run
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["protocol", "--seconds", bad])
    capsys.readouterr()
