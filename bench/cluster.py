"""What spreading an engine over processes costs, measured in one run: ``python -m roost.bench cluster``.

Three parts, each a ratio against the others of the same run (this machine is shared and noisy):

1. **Per delivery, 1 process against N workers** (``roost serve --workers N --cluster``): the same chat
   load as ``bench fanout`` (``--rooms --members --rate``), the server's CPU per delivery (the
   supervisor's and every worker's) and latency percentiles, both servers pinned to the same CPU.
   Members come in through the node's one port and are sent (``moved``) to their room's worker: a
   room's messages never cross processes, so what N workers add per delivery is their own overhead
   (more processes on the same core here), not a hop.
2. **Per join, the hop**: ``--joins`` clients each connect and ``join`` a room through the node's
   shared port (answered ``moved``, then a second connection to the room's worker) against the
   same number connecting to the room's worker directly: the cost of placement, paid once per
   member, never per message.
3. **What 8 and 32 cores carry**, from the per-delivery cost of part 1 with N workers: a worker per
   core, each carrying ``1e6 / us_per_delivery`` deliveries a second, less one core for Redis and
   the kernel's share. A projection, not a measurement: it assumes rooms fit one worker each (a
   room is one actor: a 200-member room is bounded by one core whatever the node has), and that the
   load spreads evenly (rooms are placed where their first member lands).

The machine's Redis (``--cluster``) under a key prefix of the run's own; nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from . import fanout

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m roost.bench cluster`` (the load's are ``bench fanout``'s)."""
    fanout.add_arguments(parser)
    parser.set_defaults(rooms=10, members=10, rate=20.0, seconds=8.0, workers=2)
    parser.add_argument("--joins", type=int, default=100, help="joins timed each way for the hop (default 100)")


async def _time_joins(url: str, tokens: list[str], code: str) -> tuple[float, float, str]:
    """Mean ms per connect + join through ``url``; returns (ms, moves per join, the url joined at)."""
    from roost.client import open_client

    spent = 0.0
    moves = 0
    landed = url
    for token in tokens:
        started = time.perf_counter()
        async with open_client(url, token, disconnect_timeout=0.5) as client:
            snapshot = await client.join_or_create(code)
            spent += time.perf_counter() - started  # connect + join (+ the move), not the leave
            moves += client.moves
            landed = client.url
            await client.leave(snapshot.room)  # a seat kept through the reconnect grace would fill the room
    return spent * 1000 / len(tokens), moves / len(tokens), landed


def _joins(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Part 2: a node of ``args.workers`` workers, joins through its shared port and direct."""
    prefix = f"roost-bench-{secrets.token_hex(4)}:"
    env = {**os.environ, "ROOST_CLUSTER_PREFIX": prefix}
    argv = [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data", str(workdir / "joins"),
            "--log-level", args.log_level, "--workers", str(args.workers), "--cluster", args.cluster]
    server = fanout.ServerProcess(argv, cpu=None, workdir=workdir, name="joins", env=env)
    try:
        lines = server.read_announcement(["ROOST_URL", "ROOST_DEV_KEY"], fanout.SERVER_START_TIMEOUT)
        tokens = fanout.mint_tokens(Path(lines["ROOST_DEV_KEY"]), 2 * args.joins + 1, tag="join")

        async def measure() -> dict[str, Any]:
            shared = lines["ROOST_URL"]
            _ms, _moves, owner = await _time_joins(shared, tokens[:1], "HOP")  # makes the room
            via_shared, moves, _ = await _time_joins(shared, tokens[1:args.joins + 1], "HOP")
            direct, direct_moves, _ = await _time_joins(owner, tokens[args.joins + 1:], "HOP")
            return {"join_ms_via_shared_port": round(via_shared, 3), "join_ms_direct": round(direct, 3),
                    "join_ratio": round(via_shared / direct, 2) if direct else None,
                    "hop_ms_per_join": round(via_shared - direct, 3), "moves_per_join": round(moves, 2),
                    "direct_moves_per_join": round(direct_moves, 2)}

        return trio.run(measure)
    finally:
        server.stop()
        fanout.forget_prefix(args.cluster, prefix)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    server_cpu, loadgen_cpu = fanout._pins(args)
    with tempfile.TemporaryDirectory(prefix="roost-bench-cluster-") as tmp, fanout._pinned(loadgen_cpu):
        workdir = Path(tmp)
        for name in ("one", "spread"):
            (workdir / name).mkdir()
        one = argparse.Namespace(**{**vars(args), "workers": 1})
        single = fanout._engine_run(one, server_cpu, workdir / "one")
        spread = fanout._engine_run(args, server_cpu, workdir / "spread")
        joins = _joins(args, workdir)
    per_delivery = spread["server_cpu_us_per_delivery"]
    result: dict[str, Any] = {
        "rooms": args.rooms, "members": args.members, "rate": args.rate, "workers": args.workers,
        "one_process": {key: single[key] for key in ("server_cpu_us_per_delivery", "p50_ms", "p99_ms", "errors")},
        "workers_node": {key: spread[key] for key in ("server_cpu_us_per_delivery", "p50_ms", "p99_ms", "errors")},
        "workers_cpu_ratio": fanout._ratio(spread, single),
        "moves": spread.get("moves"),
        "steal_cpu_util": [single.get("steal_cpu_util"), spread.get("steal_cpu_util")],
        **joins,
    }
    if per_delivery:
        per_core = 1e6 / per_delivery
        result["deliveries_per_s_per_core"] = round(per_core)
        result["projected_deliveries_per_s"] = {str(cores): round(per_core * (cores - 1)) for cores in (8, 32)}
    return result


def render(result: dict[str, Any]) -> str:
    one, spread = result["one_process"], result["workers_node"]
    lines = [
        f"Roost cluster cost: {result['rooms']} rooms x {result['members']} members at {result['rate']} msg/s each",
        "",
        f"{'':34}{'1 process':>12}{str(result['workers']) + ' workers':>12}{'ratio':>8}",
        f"{'server CPU per delivery (us)':34}{one['server_cpu_us_per_delivery']!s:>12}"
        f"{spread['server_cpu_us_per_delivery']!s:>12}{result['workers_cpu_ratio']!s:>8}",
        f"{'p50 ms':34}{one['p50_ms']!s:>12}{spread['p50_ms']!s:>12}",
        f"{'p99 ms':34}{one['p99_ms']!s:>12}{spread['p99_ms']!s:>12}",
        f"{'errors':34}{one['errors']!s:>12}{spread['errors']!s:>12}",
        "",
        f"join through the shared port (moved, reconnect): {result['join_ms_via_shared_port']} ms, "
        f"direct: {result['join_ms_direct']} ms ({result['join_ratio']}x; the hop {result['hop_ms_per_join']} ms "
        f"per join, {result['moves_per_join']} moves per join; 0 per message)",
    ]
    if "projected_deliveries_per_s" in result:
        projected = result["projected_deliveries_per_s"]
        lines.append(f"one worker carries ~{result['deliveries_per_s_per_core']:,} deliveries/s per core at this load: "
                     f"8 cores ~{projected['8']:,}, 32 cores ~{projected['32']:,} (a core left to Redis and the "
                     "kernel; rooms of one worker each, spread evenly: a projection)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.workers < 2:
        print("roost bench cluster: --workers must be at least 2", file=sys.stderr)
        return 2
    result = collect(args)
    print(render(result))
    print(json.dumps(result, separators=(",", ":")))
    return 0
