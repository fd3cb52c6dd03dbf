"""Saturation sweep of ``bench fanout``: raise ``--rate`` until p99 passes a bound; the last rate that held.

``python -m roost.bench fanout --sweep --rooms R --members P --rate M0 [--sweep-factor F]
[--sweep-p99-ms L] [--sweep-steps N] [--sweep-seconds B]`` runs the engine alone (``roost serve --dev``,
LMDB, as ``bench fanout`` does) at ``M0`` messages/s per member, then at ``M0 x F``, ``M0 x F^2``, ...,
each step a fresh server and fresh members under the same method as one ``bench fanout`` run (pinning,
warm-up, window, drain). It stops at the first step whose delivery p99 is over ``L`` ms (default 50),
or that lost deliveries or saw an error, once a step has held; while none has, a failed step halves
the rate instead (so a start above saturation still finds a figure). It also stops when the next step
would pass ``N`` steps, the per-member rate cap (1,000/s) or the time budget ``B`` seconds; and prints
each step and the last one that held.

Figures per step: ``msgs_per_s`` = inbound ``chat_send``/s offered (R x P x M); ``server_cpu_util`` =
server utime + stime over the window (1.0 = one core busy); ``msgs_per_core_s`` = ``msgs_per_s /
server_cpu_util``, the rate one fully busy core would carry at that step's cost per message (the
figure the issue's "k msgs/s per core" means; read it at the last step that held, where the server is
closest to saturation, since cost per message falls as batches grow). The engine is started with a
config raising the per-connection rate limit (``rate``/``burst``) far above the offered load: the
default 50 requests/s per connection would turn the sweep into a rate-limit test. Bounded in time;
nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .fanout import RATE_MAX, ServerError, _fmt, _pinned, _pins, _served_run, mint_tokens

__all__ = ["collect_sweep", "render_sweep", "run_sweep"]

RATE_LIMIT = 1_000_000
"""The engine's per-connection request rate and burst for the sweep (far above any offered load)."""
STEP_OVERHEAD_S = 4.0
"""Server start, setup and stop of a step, beyond warm-up + seconds + drain (a budget estimate)."""


def _step(args: argparse.Namespace, rate: float, cpu: int | None, workdir: Path, index: int) -> dict[str, Any]:
    config = workdir / "sweep.toml"
    config.write_text(f"rate = {float(RATE_LIMIT)}\nburst = {RATE_LIMIT}\n", encoding="utf-8")
    step_args = copy.copy(args)
    step_args.rate = rate
    members = args.rooms * args.members
    argv = [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data",
            str(workdir / f"engine-data-{index}"), "--config", str(config), "--log-level", args.log_level]
    figures = _served_run(step_args, f"engine-{index}", argv, ["ROOST_URL", "ROOST_DEV_KEY"], cpu, workdir,
                          lambda lines: mint_tokens(Path(lines["ROOST_DEV_KEY"]), members))
    msgs = args.rooms * args.members * rate
    util = figures["server_cpu_util"]
    return {
        "rate": round(rate, 3),
        "msgs_per_s": round(msgs, 1),
        "deliveries_per_s": figures["deliveries_per_s"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "server_cpu_util": util,
        "msgs_per_core_s": round(msgs / util, 1) if util else None,
        "server_cpu_us_per_delivery": figures["server_cpu_us_per_delivery"],
        "offered": figures["offered"],
        "received": figures["received"],
        "errors": figures["errors"],
        "error_kinds": figures["error_kinds"],
        "other_cpu_util": figures["other_cpu_util"],
        "steal_cpu_util": figures.get("steal_cpu_util"),
    }


def _held(step: dict[str, Any], limit_ms: float) -> str | None:
    """Why ``step`` did not hold (None when it held)."""
    if step["errors"]:
        return f"errors {step['error_kinds']}"
    if step["received"] < step["offered"]:
        return f"lost {step['offered'] - step['received']} deliveries"
    if step["p99_ms"] is None:
        return "no delivery measured"
    if step["p99_ms"] > limit_ms:
        return f"p99 {step['p99_ms']} ms > {limit_ms:g} ms"
    return None


def collect_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Run the steps (bounded by count, rate cap and time budget); every figure."""
    pins = _pins(args)
    per_step = args.warmup + args.seconds + args.drain + STEP_OVERHEAD_S
    deadline = time.monotonic() + args.sweep_seconds
    steps: list[dict[str, Any]] = []
    held: dict[str, Any] | None = None
    stop = "steps"
    rate = args.rate
    with tempfile.TemporaryDirectory(prefix="roost-sweep-") as tmp, _pinned(pins[1]):
        workdir = Path(tmp)
        for index in range(args.sweep_steps):
            if steps and time.monotonic() + per_step > deadline:
                stop = "time budget"
                break
            step = _step(args, rate, pins[0], workdir, index)
            steps.append(step)
            failed = _held(step, args.sweep_p99_ms)
            if failed is not None:
                step["failed"] = failed
                if held is None:  # above saturation from the start: step down until one holds
                    rate /= 2
                    continue
                stop = "p99" if failed.startswith("p99") else "failed"
                break
            held = step
            rate *= args.sweep_factor
            if rate > RATE_MAX:
                stop = "rate cap"
                break
    return {
        "rooms": args.rooms,
        "members": args.members,
        "start_rate": args.rate,
        "factor": args.sweep_factor,
        "p99_limit_ms": args.sweep_p99_ms,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "stopped_by": stop,
        "held_rate": held["rate"] if held else None,
        "held_msgs_per_s": held["msgs_per_s"] if held else None,
        "held_server_cpu_util": held["server_cpu_util"] if held else None,
        "held_msgs_per_core_s": held["msgs_per_core_s"] if held else None,
        "held_p99_ms": held["p99_ms"] if held else None,
        "pinned": {"server_cpu": pins[0], "loadgen_cpu": pins[1]},
        "steps": steps,
    }


def render_sweep(result: dict[str, Any]) -> str:
    lines = [
        (f"Roost saturation sweep: {result['rooms']} room(s) x {result['members']} members, rate from "
         f"{result['start_rate']:g} msg/s per member x {result['factor']:g} per step until delivery p99 > "
         f"{result['p99_limit_ms']:g} ms; {result['seconds']:g} s measured per step after {result['warmup']:g} s"),
        "",
        f"{'rate':>8}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu util':>10}{'msgs/s/core':>13}{'other cpu':>11}{'steal':>7}  result",
        "-" * 87,
    ]
    for step in result["steps"]:
        lines.append(f"{_fmt(step['rate']):>8}{_fmt(step['msgs_per_s']):>10}{_fmt(step['p50_ms']):>9}"
                     f"{_fmt(step['p99_ms']):>9}{_fmt(step['server_cpu_util']):>10}{_fmt(step['msgs_per_core_s']):>13}"
                     f"{_fmt(step['other_cpu_util']):>11}{_fmt(step.get('steal_cpu_util')):>7}  {step.get('failed', 'held')}")
    lines.append("")
    if result["held_rate"] is None:
        lines.append(f"no step held (stopped by {result['stopped_by']})")
    else:
        lines.append(f"last rate that held: {result['held_rate']:g} msg/s per member = {result['held_msgs_per_s']:,.0f} "
                     f"msgs/s at server CPU {_fmt(result['held_server_cpu_util'])} -> "
                     f"{_fmt(result['held_msgs_per_core_s'])} msgs/s per core (stopped by {result['stopped_by']})")
    return "\n".join(lines)


def run_sweep(args: argparse.Namespace) -> int:
    """Print the steps' table, then one JSON line."""
    if args.url:
        print("bench fanout: --sweep starts its own engine per step (no --url)", file=sys.stderr)
        return 2
    try:
        result = collect_sweep(args)
    except ServerError as exc:
        print(f"bench fanout: {exc}", file=sys.stderr)
        return 1
    print(render_sweep(result))
    print(json.dumps(result, separators=(",", ":")))
    sys.stdout.flush()
    return 0
