"""Inbox durability against SIGKILL (tests/test_crash.py style): a real ``roost serve`` process on LMDB,
killed while notifies are in flight; every acknowledged entry is delivered after the restart, once,
in seq order, and the user's room index is back too."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from roost.bench.crash import DevServer, free_port
from roost.client import ClientError, open_client
from roost.keys import read_private_key
from roost.protocol.frames import InboxEntry, InboxResume
from roost.protocol.tokens import new_claims, sign


async def test_acknowledged_entries_survive_sigkill_and_reach_the_user_in_order(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "data", free_port())
    acked: list[tuple[int, int]] = []  # (seq, j) in acknowledgement order
    try:
        with trio.fail_after(90):
            lines = await server.start()
            url, service_key = lines["ROOST_URL"], lines["ROOST_SERVICE_KEY"]
            kid, key = read_private_key(Path(lines["ROOST_DEV_KEY"]))

            def token(sub: str) -> str:
                return sign(new_claims(sub=sub, name=sub, kid=kid, now=time.time(), ttl=3600), key)

            async with open_client(url, token("ann"), reconnect=False) as ann:
                room = (await ann.create()).room  # the room index entry is committed with the join
            async with trio.open_nursery() as nursery:
                async def notify_until_killed() -> None:
                    async with open_client(url, token("ops"), reconnect=False) as ops:
                        j = 0
                        try:
                            while True:
                                result = await ops.notify(service_key, "ann", "n", {"j": j})
                                acked.append((result["seq"], j))
                                j += 1
                        except ClientError:
                            return  # the kill: what was in flight has no acknowledgement

                nursery.start_soon(notify_until_killed)
                while len(acked) < 20:
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
                await server.kill()
            await server.start()
            async with open_client(url, token("ann"), reconnect=False) as ann:
                welcome = ann.welcome
                assert welcome.inbox is not None and [r.room for r in welcome.rooms] == [room]
                assert welcome.inbox.seq >= acked[-1][0]  # an in-flight one may have landed: never fewer
                stored: list[InboxEntry] = []
                before = None
                while True:
                    page = await ann.inbox_history(before, 100)
                    stored[:0] = page.entries
                    if page.next is None:
                        break
                    before = page.next
                assert [e.seq for e in stored] == list(range(1, welcome.inbox.seq + 1))  # dense, in order
                by_seq = {e.seq: e.body["j"] for e in stored}
                assert [by_seq[seq] for seq, _ in acked] == [j for _, j in acked]
                assert [seq for seq, _ in acked] == list(range(1, len(acked) + 1))
                await ann.inbox_ready()
            # a device that last saw entry 5 resumes exactly after it, across the kill
            async with open_client(url, token("ann"), reconnect=False) as device:
                head = await device.inbox_ready()
                result = await device.request(InboxResume(id=0, epoch=1, seq=5))
                assert (result.replayed, result.resync) == (head.seq - 5, False)
                with trio.fail_after(10):
                    while device.statistics().duplicates_dropped < head.seq - 5:
                        await trio.sleep(0.01)  # the replay is already held: dropped as seen
    finally:
        await server.kill()
    assert len(acked) >= 20
