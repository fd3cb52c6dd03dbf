"""Keep ``python -m roost.bench inbound`` (and its ``--layers`` table) from rotting without valgrind.

The suite has no valgrind time to spare: the loops run natively (``--tool none``) against a real engine
subprocess, ``--layers`` compiles (gcc) and installs its wrappers there (so a renamed engine function fails
here, not as an empty row of the table), and the table is built from a small callgrind dump written
out below, whose figures are known by hand.
"""

from __future__ import annotations

import json

import pytest

from roost.bench import inbound as inbound_bench
from roost.bench import layers
from roost.bench.__main__ import BENCHES, build_parser


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_dispatcher_knows_inbound_and_refuses_bad_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHES["inbound"] is inbound_bench
    args = build_parser().parse_args(["inbound", "--shapes", "200x1,10x10", "--layers"])
    assert args.shapes == [(200, 1), (10, 10)] and args.layers and args.tool == "callgrind"
    for bad in (["inbound", "--shapes", "200"], ["inbound", "--shapes", "0x3"], ["inbound", "--senders", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)
    capsys.readouterr()


def test_both_loops_run_natively_and_every_layer_is_on_the_path(capsys: pytest.CaptureFixture[str]) -> None:
    """Rounds with the layer wrappers (each layer's functions called while messages flow), then the
    in-flight loop on the memory store: each measures what it was asked to."""
    assert BENCHES["inbound"].run(build_parser().parse_args(
        ["inbound", "--tool", "none", "--layers", "--shapes", "2x2", "--messages", "8", "--warmup", "1"])) == 0
    assert BENCHES["inbound"].run(build_parser().parse_args(
        ["inbound", "--tool", "none", "--store", "memory", "--rooms", "2", "--members", "2", "--senders", "1",
         "--warmup", "4", "--messages", "10"])) == 0
    rounds, in_flight = _json_lines(capsys.readouterr().out)
    assert (rounds["rooms"], rounds["members"], rounds["loop"], rounds["messages"]) == (2, 2, "rounds", 8)
    calls = rounds["layer_calls"]
    assert set(calls) == {layer.key for layer in layers.LAYERS}
    assert all(calls[key] >= 1 for key in calls), calls  # 2 rooms x 2 members, LMDB: every layer runs
    assert in_flight["loop"] == "in flight, 1 per room" and in_flight["messages"] >= 10


def test_grace_drops_one_member_per_room_and_measures_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    """``--grace``: one more member per room joins and drops its connection (its room keeps a timer);
    both loops then measure the R x P members that stayed (a round waits for their deliveries only)."""
    assert BENCHES["inbound"].run(build_parser().parse_args(
        ["inbound", "--tool", "none", "--grace", "--shapes", "2x2", "--messages", "8", "--warmup", "1"])) == 0
    assert BENCHES["inbound"].run(build_parser().parse_args(
        ["inbound", "--tool", "none", "--grace", "--store", "memory", "--rooms", "2", "--members", "2",
         "--senders", "1", "--warmup", "4", "--messages", "10"])) == 0
    rounds, in_flight = _json_lines(capsys.readouterr().out)
    assert (rounds["grace"], rounds["loop"], rounds["messages"]) == (2, "rounds", 8)
    assert (in_flight["grace"], in_flight["loop"]) == (2, "in flight, 1 per room") and in_flight["messages"] >= 10


# A dump shaped like callgrind's (compressed names, two layers nested, one GC run inside a layer,
# one outside): 1150 Ir in all over 10 messages.
_DUMP = """\
# callgrind format
version: 1
positions: line
events: Ir
summary: 0

ob=(1) /lib/libpython.so
fl=(1) eval.c
fn=(1) _PyEval_EvalFrameDefault
10 300
cfn=(2) L_turn__in__top
calls=1 0
10 500
cfn=(4) gc_collect_main'_PyObject_GC_Link'_PyEval_EvalFrameDefault
calls=1 0
10 40

fn=(2)
10 320
cfn=(3) L_encode__in__turn
calls=2 0
10 120
cfn=(5) gc_collect_main'_PyObject_GC_Link'L_turn__in__top'_PyEval_EvalFrameDefault
calls=1 0
10 60

fn=(3)
10 120
fn=(4)
10 40
fn=(5)
10 60
fn=(6) _PyObject_Free
10 310

totals: 1150
"""


def test_the_layer_table_counts_nothing_twice() -> None:
    dump = layers.parse_dump(_DUMP)
    assert dump.total == 1150 and sum(dump.self_cost.values()) == 1150
    assert dump.self_cost["gc_collect_main"] == 100 and dump.objects["_PyEval_EvalFrameDefault"] == "/lib/libpython.so"
    rows = {title.split(" (")[0]: per for title, per, _, _ in layers.layer_table(dump, 10)}
    calls = {title.split(" (")[0]: count for title, _, _, count in layers.layer_table(dump, 10)}
    assert (calls["encode"], calls["room turn minus encode"], calls["cyclic GC"]) == (0.2, 0.1, 0.2)
    assert rows["room turn minus encode"] == (500 - 120 - 60) / 10  # its GC and its encode are their own rows
    assert rows["encode"] == 12.0
    assert rows["cyclic GC"] == 10.0
    assert [per for title, per in rows.items() if title.startswith("residual")] == [(1150 - 320 - 120 - 100) / 10]
    assert sum(per for title, per in rows.items() if title != "**total**") == rows["**total**"] == 115.0
    top = layers.top_exclusive(dump, 10, 2)
    assert top == [("L_turn__in__top", "libpython.so", 32.0), ("_PyObject_Free", "libpython.so", 31.0)]
    table = layers.render(layers.layer_table(dump, 10), title="t")
    assert "| **total** | 0.1 k | 100 % |" in table and "| 0.0 k | 27.8 % | 0.10 |" in table


def test_the_c_wrappers_name_one_symbol_per_layer_and_enclosing_layer() -> None:
    source = layers.c_source()
    for layer in layers.LAYERS:
        assert f"L_{layer.key}__in__top(" in source
        assert all(f"L_{layer.key}__in__{outer.key}(" in source for outer in layers.LAYERS)
