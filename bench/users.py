"""The user directory's costs: the hot path of a known token sub, guest proof checks, directory writes.

Prints one row per measurement (operations, seconds, per-operation µs, operations per second):

- ``note_seen (known id)``: what every backend-token sign-in pays once the user is recorded (a set
  lookup), against ``store.get per sign-in`` (what reading the directory on every connection would
  cost, LMDB in a temporary directory);
- ``verify_guest_proof`` and ``SeenProofs.claim`` (with ``--proofs`` live entries) beside ``verify``
  of a user token: what a guest sign-in adds;
- ``link_key, N callers at once``: directory mutations through the serial owner on LMDB, each
  acknowledged after its commit (a turn commits every queued operation at once).

Wall-clock figures are meaningless on a loaded machine: compare runs under
``valgrind --tool=callgrind`` (instruction counts) there.
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path

import trio
from nacl.signing import SigningKey

from roost.protocol.tokens import (
    GuestProof,
    Keyring,
    SeenProofs,
    kid_for,
    new_claims,
    sign,
    sign_guest_proof,
    verify,
    verify_guest_proof,
)
from roost.store.lmdb import LmdbStore
from roost.users import Directory

__all__ = ["add_arguments", "measure", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement (default 2000)")
    parser.add_argument("--callers", type=int, default=64, help="concurrent directory callers (default 64)")
    parser.add_argument("--proofs", type=int, default=100_000, help="live entries in SeenProofs (default 100000)")


def _row(name: str, count: int, seconds: float) -> tuple[str, int, float, float, float]:
    return name, count, seconds, seconds / count * 1e6, count / seconds if seconds else float("inf")


async def _measure(ops: int, callers: int, proofs: int, db: Path) -> list[tuple[str, int, float, float, float]]:
    rows = []
    store = LmdbStore(db)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        users = Directory(store, time.time)
        await nursery.start(users.run)
        for i in range(ops):
            users.note_seen(f"user-{i}", "x")
        await users.settle()
        started = time.perf_counter()
        for i in range(ops):
            users.note_seen(f"user-{i}", "x")
        rows.append(_row("note_seen (known id)", ops, time.perf_counter() - started))
        started = time.perf_counter()
        for i in range(ops):
            await store.get("users", f"u:user-{i}")
        rows.append(_row("store.get per sign-in", ops, time.perf_counter() - started))

        keys = [base64.urlsafe_b64encode(i.to_bytes(32, "big")).rstrip(b"=").decode() for i in range(ops)]
        next_key = iter(enumerate(keys))

        async def caller() -> None:
            for i, key in next_key:  # one new user per key: a user holds 32 keys at most
                user = f"c-{i}"
                await users.upsert("p", user, user_id=user)
                await users.link_key(user, key)

        started = time.perf_counter()
        async with trio.open_nursery() as inner:
            for _ in range(callers):
                inner.start_soon(caller)
        rows.append(_row(f"upsert + link_key, {callers} callers at once", ops, time.perf_counter() - started))
        nursery.cancel_scope.cancel()

    device, backend = SigningKey.generate(), SigningKey.generate()
    now = time.time()
    guest = [sign_guest_proof(device, aud="bench", now=now) for _ in range(ops)]
    started = time.perf_counter()
    checked = [verify_guest_proof(proof, audience="bench", now=now) for proof in guest]
    rows.append(_row("verify_guest_proof", ops, time.perf_counter() - started))
    kid = kid_for(backend.verify_key)
    keyring = Keyring({kid: backend.verify_key})
    token = sign(new_claims(sub="u", name="U", kid=kid, now=now, ttl=3600), backend)
    started = time.perf_counter()
    for _ in range(ops):
        verify(token, keyring, now)
    rows.append(_row("verify (user token)", ops, time.perf_counter() - started))
    seen = SeenProofs(proofs + ops + 1)
    for i in range(proofs):
        seen.claim(GuestProof(key="k", aud="a", iat=int(now), exp=int(now) + 300, jti=f"live-{i:012d}"), now)
    started = time.perf_counter()
    for proof in checked:
        seen.claim(proof, now)
    rows.append(_row(f"SeenProofs.claim ({proofs} live)", ops, time.perf_counter() - started))
    return rows


def measure(ops: int, callers: int, proofs: int) -> list[tuple[str, int, float, float, float]]:
    """Run every measurement; rows of (name, operations, seconds, µs per operation, operations per s)."""
    with tempfile.TemporaryDirectory() as tmp:
        return trio.run(_measure, ops, callers, proofs, Path(tmp) / "db")


def run(args: argparse.Namespace) -> int:
    rows = measure(args.ops, args.callers, args.proofs)
    print(f"{'measurement':<44} {'ops':>7} {'s':>8} {'µs/op':>9} {'ops/s':>11}")
    for name, count, seconds, per_op, rate in rows:
        print(f"{name:<44} {count:>7} {seconds:>8.3f} {per_op:>9.2f} {rate:>11.0f}")
    return 0
