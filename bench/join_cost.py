"""What the membership index adds to a join: instructions per join, with and without the index write.

``python -m roost.bench.join_cost --joins 2000`` runs ``--joins`` joins, each followed by its leave, of
distinct users into a room with one other member, through a real room actor (``_handle`` of a ``join`` frame, the turn's ``take_writes`` and
``commit_now`` on the memory store, the flush of the replies), in one Trio run. ``--no-index`` makes
``RoomState.touch_membership`` a no-op, so the turn writes no index entry. Wall-clock figures are
meaningless on a shared machine: compare instruction counts, with a fixed hash seed (string hashing
moves the totals by more than the index costs otherwise), e.g.::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.idx python -m roost.bench.join_cost --joins 500
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.no  python -m roost.bench.join_cost --joins 500 --no-index

and divide the difference of the two totals by the joins (a join and its leave each write one entry).
Measured (500 joins): 2,382.5 M against 2,362.3 M instructions, 40.5 k per join + leave, about 4 % of
one (~1 M instructions each: ``--joins 1`` is the start-up to subtract).

``--welcomes N`` instead reads N times what ``welcome`` tells about a user who is a member of three
rooms (``InboxService.welcome``: the inbox head and a page of the room index), from a real LMDB store
in a temporary directory: the two store reads a handshake now makes (each a hop to LMDB's reader
thread). Compare ``--welcomes 1000`` with ``--welcomes 1`` under callgrind.

``--handshakes N`` runs N whole handshakes (WebSocket upgrade, ``hello`` with a signed token,
``welcome``, close) against an engine on LMDB over in-memory streams, for a user with three rooms;
``--no-welcome`` leaves the inbox out of ``welcome`` (the handshake before item 4), for the share of it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio

from roost.config import Config
from roost.protocol.errors import CloseCode
from roost.protocol.frames import Join, Leave
from roost.inbox import TABLE, InboxService
from roost.peer import Peer
from roost.room import RoomActor, RoomRuntime
from roost.state import RoomOptions, RoomState, membership_key
from roost.store import Write
from roost.store.lmdb import LmdbStore
from roost.store.memory import MemoryStore


class _Peer(Peer):
    def __init__(self, user: str) -> None:
        self.sid, self.user, self.name = f"s-{user}", user, user
        self.room_scope = self.role = None
        self.rooms: set[str] = set()
        self.pushed = 0

    @property
    def alive(self) -> bool:
        return True

    @property
    def last_heard_ms(self) -> int:
        return 0

    def push(self, data: bytes) -> None:
        self.pushed += len(data)

    def close(self, code: CloseCode, reason: str) -> None:
        pass


async def _run(joins: int) -> float:
    config = Config()
    state = RoomState(room_id="r-bench", code="BENCH", options=RoomOptions(max_members=joins + 1), created=0,
                      history_limit=config.history_limit, replay_limit=config.replay_events)
    runtime = RoomRuntime("r-bench", "BENCH", 16)
    actor = RoomActor(runtime, state, MemoryStore(), config, None, created=True)
    peers = [_Peer(f"u{i}") for i in range(joins)]
    started = time.perf_counter()
    host = _Peer("host")  # keeps the room at two members at most: each join costs the same
    actor._handle(host, Join(id=0, room="r-bench"), trio.current_time())
    await actor.finish_turn()
    for i, peer in enumerate(peers):  # one request per turn, as they normally come
        actor._handle(peer, Join(id=i, room="r-bench"), trio.current_time())
        await actor.finish_turn()
        actor._handle(peer, Leave(id=i, room="r-bench"), trio.current_time())
        await actor.finish_turn()
    return time.perf_counter() - started


async def _welcomes(count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = LmdbStore(Path(tmp) / "db")
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            inbox = InboxService(store, Config())
            await store.commit([Write(None, membership_key("u0", f"r{i}"), b"\xc0", table=TABLE) for i in range(3)])
            started = time.perf_counter()
            for _ in range(count):
                head, page = await inbox.welcome("u0")
            elapsed = time.perf_counter() - started
            assert head.seq == 0 and page.rooms == ()  # the rooms are not live here: listed from the index, then left out
            nursery.cancel_scope.cancel()
    return elapsed


async def _handshakes(count: int, welcome: bool) -> float:
    import trio_websocket

    from roost.app import Engine
    from roost.protocol.codec import Sender, decode, encode
    from roost.protocol.frames import PROTOCOL_VERSION, Hello, Welcome
    from roost.testing import TestKeys, test_config

    keys = TestKeys()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(test_config(keys), store=LmdbStore(Path(tmp) / "db"))
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.serve)
            await engine.store.commit([Write(None, membership_key("u0", f"r{i}"), b"\xc0", table=TABLE)
                                       for i in range(3)])
            if not welcome:
                engine.gateway.inbox = None
            token = keys.token("u0")
            started = time.perf_counter()
            for _ in range(count):
                async with trio.open_nursery() as client:
                    ws = await trio_websocket.wrap_client_stream(client, engine.connect_memory(), "localhost", "/")
                    await ws.send_message(encode(Hello(v=PROTOCOL_VERSION, token=token)))
                    assert isinstance(decode(await ws.get_message(), Sender.SERVER), Welcome)
                    await ws.aclose()
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=2000)
    parser.add_argument("--no-index", action="store_true", help="skip the membership index write (baseline)")
    parser.add_argument("--welcomes", type=int, default=0, help="time N welcome reads on LMDB instead")
    parser.add_argument("--handshakes", type=int, default=0, help="time N whole handshakes on LMDB instead")
    parser.add_argument("--no-welcome", action="store_true", help="with --handshakes: no inbox in welcome")
    args = parser.parse_args()
    if args.handshakes:
        elapsed = trio.run(_handshakes, args.handshakes, not args.no_welcome)
        what = "without" if args.no_welcome else "with"
        print(f"{args.handshakes} handshakes on LMDB {what} the inbox in welcome: {elapsed * 1e6 / args.handshakes:.1f} us each")
        return
    if args.welcomes:
        elapsed = trio.run(_welcomes, args.welcomes)
        print(f"{args.welcomes} welcome reads on LMDB: {elapsed * 1e6 / args.welcomes:.1f} us each")
        return
    if args.no_index:
        RoomState.touch_membership = lambda self, user: None  # type: ignore[method-assign]
    elapsed = trio.run(_run, args.joins)
    print(f"{args.joins} joins + leaves, index {'off' if args.no_index else 'on'}: {elapsed * 1e6 / args.joins:.1f} us per join+leave")


if __name__ == "__main__":
    main()
