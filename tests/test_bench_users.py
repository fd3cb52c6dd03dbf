"""``python -m roost.bench users`` runs and prints a figure for every measurement."""

from __future__ import annotations

from roost.bench import users as users_bench
from roost.bench.__main__ import BENCHES, build_parser


def test_the_users_bench_measures_every_row(capsys) -> None:
    assert BENCHES["users"] is users_bench
    args = build_parser().parse_args(["users", "--ops", "50", "--callers", "4", "--proofs", "1000"])
    assert args.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line[:44].strip() for line in lines[1:]]
    assert names == ["note_seen (known id)", "store.get per sign-in", "upsert + link_key, 4 callers at once",
                     "verify_guest_proof", "verify (user token)", "SeenProofs.claim (1000 live)"]
    for line in lines[1:]:
        ops, seconds, per_op, rate = line[44:].split()
        assert int(ops) == 50 and float(per_op) > 0 and float(rate) > 0
