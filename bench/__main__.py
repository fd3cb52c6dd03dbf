"""``python -m roost.bench <name> [options]``: one dispatcher, one module per benchmark.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> int``; adding a benchmark
is one entry in :data:`BENCHES`, so every benchmark gets the same command-line shape.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from . import autobahn as autobahn_bench
from . import cluster as cluster_bench
from . import crash as crash_bench
from . import durable as durable_bench
from . import fanout as fanout_bench
from . import inbound as inbound_bench
from . import memory as memory_bench
from . import protocol as protocol_bench
from . import receipts as receipts_bench
from . import restart as restart_bench
from . import users as users_bench

__all__ = ["BENCHES", "BenchModule", "build_parser", "main"]


class BenchModule(Protocol):
    """What the dispatcher needs from a benchmark module (modules satisfy this structurally)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


BENCHES: dict[str, BenchModule] = {
    "protocol": protocol_bench,
    "fanout": fanout_bench,
    "durable": durable_bench,
    "restart": restart_bench,
    "memory": memory_bench,
    "crash": crash_bench,
    "autobahn": autobahn_bench,
    "users": users_bench,
    "receipts": receipts_bench,
    "cluster": cluster_bench,
    "inbound": inbound_bench,
}
"""Subcommand name -> benchmark module."""


def build_parser() -> argparse.ArgumentParser:
    """The parser for every benchmark; a subcommand's help is its module's first docstring line."""
    parser = argparse.ArgumentParser(prog="python -m roost.bench", description="Roost benchmarks.")
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, module in BENCHES.items():
        doc = (getattr(module, "__doc__", None) or "").strip()
        summary = doc.splitlines()[0] if doc else None
        child = sub.add_parser(name, help=summary, description=doc or None,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(child)
        child.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen benchmark; returns its exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
