"""Metrics (issue 10 item 3): the Prometheus exposition moves as a scripted session runs.

Real sockets, a real engine, the exposition parsed by ``prometheus_client.parser`` (what a Prometheus
server would read), and every counter checked against what the script did. Room reaping runs on
MockClock over memory streams (autojump misfires with bytes in flight on real sockets).
"""

from __future__ import annotations

import bisect
import time
from pathlib import Path

import prometheus_client
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from roost import Config, Engine
from roost.client import RequestError
from roost.metrics import FAMILIES, TABLE_BEGIN, TABLE_END, Histogram, markdown_table
from roost.protocol.codec import load_record
from roost.protocol.errors import CloseCode
from roost.protocol.frames import Leave, Ok, Resume, ResumeResult, RoomClosed
from roost.testing import SERVICE_KEY, TestKeys, connect_client, start_engine, test_config

from tests.wire import SlowMember, raw_peer

from .logics import Fragile

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(engine: Engine) -> Samples:
    """Every sample of the engine's exposition, by (sample name, labels)."""
    body, content_type = engine.metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("roost_"), family.name
        assert family.documentation.endswith("?"), f"{family.name}: help text should ask its question"
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``{label value: sample}`` for every sample of ``name`` (one label)."""
    return {dict(key)[label]: v for (sample, key), v in samples.items() if sample == name and key}


def check_histogram(samples: Samples, name: str) -> float:
    """Buckets cumulative, ``+Inf`` equal to the count; returns the count."""
    buckets = sorted(
        ((float(dict(key)["le"]), v) for (sample, key), v in samples.items() if sample == f"{name}_bucket"),
    )
    assert buckets and buckets[-1][0] == float("inf")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"{name} buckets are not cumulative"
    count = value(samples, f"{name}_count")
    assert counts[-1] == count
    assert (value(samples, f"{name}_sum") > 0) == (count > 0)
    return count


async def until_connections(engine: Engine, count: int) -> None:
    """Wait until the server has ``count`` connections (a closed one lingers until the peer's FIN)."""
    while len(engine.gateway.connections) != count:
        await trio.sleep(0.01)


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    """Small outbox bounds (a member that stops reading overflows after a few chats)."""
    return test_config(roost_keys, logics={"fragile": Fragile}, outbox_max_bytes=64 * 1024)


async def test_a_scripted_session_moves_every_counter(roost_engine: Engine, roost_keys: TestKeys,
                                                       roost_connect, nursery: trio.Nursery) -> None:
    engine = roost_engine
    with trio.fail_after(30):
        before = scrape(engine)
        assert value(before, "roost_connections_open") == 0
        assert value(before, "roost_rooms_live") == 0

        # A bad token: refused at hello with 4001, counted by its reason word (never the token).
        intruder = await raw_peer(nursery, engine.url)
        await intruder.send({"t": "hello", "v": 1, "token": "not-a-token"})
        assert await intruder.closed_code() == CloseCode.BAD_TOKEN
        await intruder.ws.aclose()
        await until_connections(engine, 0)

        ann, bob = await roost_connect("ann"), await roost_connect("bob")
        snap = await ann.create()
        await bob.join(room=snap.room)
        for i in range(3):
            await ann.chat_send(snap.room, f"hello {i}")
        with pytest.raises(RequestError):  # refused by the room: bob is not the host
            await bob.kick(snap.room, "ann")
        with pytest.raises(RequestError):  # refused by the connection: no such room
            await bob.join(room="r-nowhere")

        # Resume: one replay, one resync (an epoch the room never had).
        cat = await raw_peer(nursery, engine.url)
        await cat.hello(roost_keys.token("cat"))
        await cat.send({"t": "join", "id": 1, "room": snap.room})
        seq = (await cat.recv_until(Ok)).result["seq"]
        await cat.send(Resume(id=2, room=snap.room, epoch=snap.epoch, seq=seq))
        assert not load_record(ResumeResult, (await cat.recv_until(Ok)).result).resync
        await cat.send(Resume(id=3, room=snap.room, epoch=snap.epoch + 7, seq=0))
        assert load_record(ResumeResult, (await cat.recv_until(Ok)).result).resync
        await ann.kick(snap.room, "cat")

        # A room crash (restarted), and a room closed by the operator.
        fragile = await ann.create(logic="fragile")
        with pytest.raises(RequestError):
            await ann.send(fragile.room, "boom")
        doomed = await ann.create()
        await ann.admin(SERVICE_KEY, "close", {"room": doomed.room})
        await ann.next_event(RoomClosed)

        # A member that stops reading: closed with 4000.
        sleeper = await SlowMember.join(engine.address, roost_keys.token("zed"), snap.room)
        sent = 0
        while engine.gateway.stats["slow_consumers"] == 0:
            await ann.chat_send(snap.room, "x" * 4000)
            sent += 1
            assert sent < 2000, "the slow consumer was never detected"

        during = scrape(engine)
        await bob.aclose()
        await sleeper.stream.aclose()
        await until_connections(engine, 2)  # ann and cat stay
        after = scrape(engine)

    # connections
    assert value(during, "roost_connections_open") == 4  # ann, bob, cat, the sleeper (the intruder is gone)
    assert value(after, "roost_connections_open") == len(engine.gateway.connections) == 2
    assert value(after, "roost_connections_accepted_total") == 5
    closes = labelled(after, "roost_connections_closed_total", "code")
    assert closes == {str(int(CloseCode.BAD_TOKEN)): 1, "1000": 1, str(int(CloseCode.SLOW_CONSUMER)): 1}
    assert value(after, "roost_handshakes_total", outcome="ok") == 4
    assert value(after, "roost_handshakes_total", outcome="failed") == 1
    assert labelled(after, "roost_auth_failures_total", "reason") == {"malformed": 1}
    assert value(after, "roost_slow_consumers_total") == 1
    assert value(during, "roost_outbox_backlog_max_bytes") <= value(during, "roost_outbox_backlog_bytes")
    # rooms
    assert value(after, "roost_rooms_created_total") == 3
    assert value(after, "roost_rooms_crashed_total") == 1
    assert labelled(after, "roost_rooms_closed_total", "reason") == {"closed": 1}
    assert value(after, "roost_rooms_live") == len(engine.router.rooms) == 2
    assert value(after, "roost_resumes_total", outcome="replay") == 1
    assert value(after, "roost_resumes_total", outcome="resync") == 1
    assert value(after, "roost_room_inbox_depth_high_water") >= 1
    # requests
    requests = labelled(after, "roost_requests_total", "type")
    assert requests["create"] == 3 and requests["join"] == 4 and requests["resume"] == 2
    assert requests["chat_send"] == 3 + sent and requests["kick"] == 2 and requests["admin"] == 1
    errors = labelled(after, "roost_request_errors_total", "code")
    assert errors == {"forbidden": 1, "not_found": 1, "internal": 1}
    # histograms: a commit per turn at most, plus the first commit of each actor (creation, restart)
    turns = check_histogram(after, "roost_room_turn_duration_seconds")
    commits = check_histogram(after, "roost_store_commit_duration_seconds")
    actors = value(after, "roost_rooms_created_total") + value(after, "roost_rooms_crashed_total")
    assert 0 < turns and 0 < commits <= turns + actors
    # deliveries and bytes: never less than what the script made the server send
    assert value(after, "roost_deliveries_total") >= 3 + sent
    assert value(after, "roost_sent_bytes_total") >= 4000 * sent
    assert value(after, "roost_deliveries_total") >= value(during, "roost_deliveries_total")
    assert value(after, "roost_sent_bytes_total") >= value(during, "roost_sent_bytes_total")
    # admin stats reads the same counters
    stats = engine.statistics()
    assert stats["connections"] == value(after, "roost_connections_open")
    assert stats["restarts"] == value(after, "roost_rooms_crashed_total")
    assert stats["slow_consumers"] == value(after, "roost_slow_consumers_total")
    assert stats["connections_accepted"] == value(after, "roost_connections_accepted_total")
    assert stats["sessions_opened"] == value(after, "roost_handshakes_total", outcome="ok")
    assert stats["auth_failures"] == value(after, "roost_auth_failures_total", reason="malformed") == 1


BASE = time.time()


def wall() -> float:
    """The engine's wall clock moves with the MockClock (the reaper reads both)."""
    return BASE + trio.current_time()


async def test_an_empty_room_is_counted_reaped(autojump_clock, nursery: trio.Nursery) -> None:
    keys = TestKeys(clock=wall)
    engine = await start_engine(nursery, test_config(keys, wall_clock=wall, solo_room_ttl=10.0))
    ann = await raw_peer(nursery, stream=engine.connect_memory())
    await ann.hello(keys.token("ann"), hb=300_000)
    await ann.send({"t": "create", "id": 1})
    room = (await ann.recv_until(Ok)).result["room"]
    await ann.send(Leave(id=2, room=room))
    await ann.recv_until(Ok)
    await trio.sleep(11)
    samples = scrape(engine)
    assert value(samples, "roost_rooms_reaped_total") == 1
    assert labelled(samples, "roost_rooms_closed_total", "reason") == {"expired": 1}
    assert value(samples, "roost_rooms_live") == 0


async def test_two_engines_in_one_process_keep_separate_metrics(nursery: trio.Nursery) -> None:
    keys = TestKeys()
    first = await start_engine(nursery, test_config(keys))
    second = await start_engine(nursery, test_config(keys))
    client = await connect_client(nursery, first.url, keys.token("ann"))
    await client.create()
    one, two = scrape(first), scrape(second)
    assert value(one, "roost_connections_accepted_total") == 1 and value(one, "roost_rooms_created_total") == 1
    assert value(two, "roost_connections_accepted_total") == 0 and value(two, "roost_rooms_created_total") == 0
    # ... and none of it lands in prometheus_client's process-wide registry
    global_names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
    assert not {name for name in global_names if name.startswith("roost_")}


def test_an_engine_that_is_not_serving_exposes_zeros_and_every_declared_family() -> None:
    body, _ = Engine(test_config(TestKeys())).metrics.exposition()
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert {name: family.type for name, family in families.items()} == {
        name: family.kind for name, family in FAMILIES.items()}
    samples = scrape(Engine(test_config(TestKeys())))
    assert value(samples, "roost_connections_open") == 0
    assert check_histogram(samples, "roost_room_turn_duration_seconds") == 0


def test_the_readme_table_is_generated_from_the_families() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index(TABLE_BEGIN) + len(TABLE_BEGIN):readme.index(TABLE_END)]
    assert table.strip() == markdown_table().strip(), "run: python -m roost.metrics README.md"


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_histogram_buckets_are_prometheus_le_buckets(values: list[float]) -> None:
    """A value exactly on a bound counts in that bound's bucket (``le``: less or equal)."""
    histogram = Histogram((0.001, 0.01, 0.1, 1.0))
    for v in values:
        histogram.observe(v)
    cumulative = histogram.cumulative()
    for bound, count in zip((*histogram.bounds, float("inf")), cumulative, strict=True):
        assert count == sum(1 for v in values if v <= bound)
    assert histogram.count == len(values) and histogram.sum == pytest.approx(sum(values))
    assert bisect.bisect_left(histogram.bounds, 0.01) == 1


async def test_close_codes_a_peer_chooses_cannot_grow_the_label_set(roost_engine: Engine, roost_keys: TestKeys,
                                                                     nursery: trio.Nursery) -> None:
    """A peer may close with any code of 3000-4999 and the server answers with it: each one as its own
    label would let clients mint 2000 series. Codes the protocol does not define count as ``other``."""
    with trio.fail_after(10):
        for code in (4321, 3999, int(CloseCode.NORMAL)):
            peer = await raw_peer(nursery, roost_engine.url)
            await peer.hello(roost_keys.token("ann"))
            await peer.ws.aclose(code=code)
            await until_connections(roost_engine, 0)
    assert labelled(scrape(roost_engine), "roost_connections_closed_total", "code") == {"other": 2, "1000": 1}
