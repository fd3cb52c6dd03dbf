"""Receipts benchmark: frames per chat message for delivery status, against the broadcast it replaces.

``python -m roost.bench receipts [--members 10 50 200] [--messages 20] [--window 0.25]`` runs an
engine in this process on in-memory streams and Trio's ``MockClock`` (counts, not speed: the figures
do not depend on the machine or its load). Per room size N: one author sends ``--messages`` chat
messages back to back; the N-1 other members are Python clients that report delivered cursors by
themselves; then every other member reads the last message. It prints, per N, the ``delivered``
frames the server received, the ``receipts`` frames it sent, and what a design that broadcasts every
cursor move to every member would have sent: (N-1) moves x N recipients per message for delivered
alone. One JSON line per N follows the table.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio
import trio.testing

from roost.testing import TestKeys, connect_client, start_engine, test_config

__all__ = ["add_arguments", "measure", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=int, nargs="+", default=[10, 50, 200], help="room sizes N")
    parser.add_argument("--messages", type=int, default=20, help="chat messages sent back to back")
    parser.add_argument("--window", type=float, default=0.25, help="the engine's receipt_window (s)")


async def measure(members: int, messages: int, window: float) -> dict[str, Any]:
    """One room of ``members``: the counts described in the module docstring."""
    keys = TestKeys()
    config = test_config(keys, receipt_window=window, rate=10_000.0, burst=10_000,
                         default_max_members=members, outbox_max_frames=4096)
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery, config)

        async def memory() -> trio.abc.Stream:
            return engine.connect_memory()

        clients = [await connect_client(nursery, engine.url, keys.token(f"u{i}"), stream=memory,
                                        event_buffer=100_000) for i in range(members)]
        author, others = clients[0], clients[1:]
        room = (await author.create(max=members)).room
        for client in others:
            await client.join(room=room)
        seen = 0
        async with trio.open_nursery() as burst:
            for i in range(messages):
                burst.start_soon(author.chat_send, room, f"message {i}")
        receipts = 0
        with trio.move_on_after(60 * window):  # virtual time: every window that has work ends in it
            while seen < messages:
                frame = await author.next_event("receipts")
                receipts += 1
                seen = max([seen, *(s.n for s in frame.msgs if s.delivered == members - 1)])
        async with trio.open_nursery() as reads:
            for client in others:
                reads.start_soon(client.read, room, messages)
        await trio.sleep(2 * window)
        result = {
            "members": members,
            "messages": messages,
            "delivered_frames_in": engine.gateway.requests["delivered"],
            "receipts_frames_out": engine.metrics.rooms.receipts,
            "broadcast_design_frames": (members - 1) * members * messages,
            "all_delivered_seen": seen >= messages,
        }
        nursery.cancel_scope.cancel()
    return result


def run(args: argparse.Namespace) -> int:
    rows = []
    for members in args.members:
        rows.append(trio.run(measure, members, args.messages, args.window,
                             clock=trio.testing.MockClock(autojump_threshold=0)))
    print(f"{'N':>5} {'messages':>8} {'delivered in':>12} {'receipts out':>12} {'broadcast design':>16}")
    for row in rows:
        print(f"{row['members']:>5} {row['messages']:>8} {row['delivered_frames_in']:>12} "
              f"{row['receipts_frames_out']:>12} {row['broadcast_design_frames']:>16}")
    for row in rows:
        print(json.dumps(row))
    return 0 if all(row["all_delivered_seen"] for row in rows) else 1
