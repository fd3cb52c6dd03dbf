"""Acceptance: Autobahn|Testsuite's fuzzingclient, cases 1-7 and 10, against the engine's WebSocket code.

The echo server (``bench/autobahn.py``) runs on the engine's transport, outbox and WebSocket layer;
every case must end OK or INFORMATIONAL both in what was exchanged and in how the connection closed
(NON-STRICT fails: it means a violation was noticed late). ``.ci/run`` builds the Python 2.7
virtualenv first (``python -m roost.bench autobahn --install``); run alone, this test builds it (once, about
a minute, from PyPI).
"""

from __future__ import annotations

from pathlib import Path

import trio

from roost.bench.autobahn import DEFAULT_CASES, autobahn_report, ensure_wstest, summarise


async def test_autobahn_cases_1_to_7_and_10_are_ok_or_informational(tmp_path: Path) -> None:
    wstest = await trio.to_thread.run_sync(ensure_wstest)
    with trio.fail_after(120):
        report = await autobahn_report(wstest, DEFAULT_CASES, tmp_path)
    lines, failing = summarise(report)
    sections = {case.split(".")[0] for case in report}
    assert sections == {"1", "2", "3", "4", "5", "6", "7", "10"}, sections
    assert len(report) > 200, len(report)
    assert not failing, "\n".join(lines + ["failing:", *failing])
