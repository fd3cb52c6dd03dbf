"""The crash test: SIGKILL the server at random moments while clients chat; nothing acknowledged is lost."""

from __future__ import annotations

from pathlib import Path

import trio

from roost.bench.crash import crash_cycles


async def test_acknowledged_messages_survive_five_sigkills(tmp_path: Path) -> None:
    with trio.fail_after(150):
        result = await crash_cycles(tmp_path / "data", cycles=5, writers=3)
    assert result.problems == []
    assert result.acked > 0 and result.missing == result.duplicates == result.out_of_order == 0
    assert result.stored >= result.acked  # in-flight sends may land without their ack: never fewer
