"""Prometheus metrics: plain integers where events happen, families built only when scraped.

The trap this module exists to avoid: ``prometheus_client``'s ``Counter.inc`` takes a lock, and
``labels(...)`` is a dict lookup plus a lock, per call. A room delivering one chat to 200 members
would pay that 200 times. So nothing on the hot path touches ``prometheus_client``: the objects that
own the events keep plain counters (``Gateway.stats`` and its ``Counter`` fields, ``Supervisor``'s
room counters, :class:`RoomStats` shared by the room actors, each ``Outbox``'s ``pushes`` and
``bytes_sent``), and :class:`Metrics` turns them into metric families when ``/metrics`` is scraped.
Per-delivery figures are read from the live outboxes at scrape time (plus a running total of closed
ones), so a delivery costs nothing it did not already cost.

Each engine has its own ``CollectorRegistry``, never the process-wide ``REGISTRY``: two engines in one
process (tests do it all the time) must not collide or mix their numbers.

The families, their names and help texts are :data:`FAMILIES` (README.md's table is generated from it).

``prometheus_client`` is imported at the first scrape, not with this module: with its exposition
(``http.server``, ``email``, ``wsgiref``) it is ~30 ms of CPU, a tenth of every ``roost serve`` start,
for an endpoint that may never be scraped.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import pathlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import CollectorRegistry

    from .app import Engine

__all__ = ["COMMIT_BUCKETS", "FAMILIES", "TURN_BUCKETS", "Family", "Histogram", "Metrics", "RoomStats", "markdown_table"]

TURN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the room-turn histogram: a turn of a chat room is tens of microseconds;
one that takes 100 ms stalls every member of its room."""

COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the store-commit histogram: the memory store commits in microseconds,
LMDB (one log record and its fdatasync) in a fraction of a millisecond plus the group-commit wait;
seconds mean a sick disk."""


class Histogram:
    """Fixed buckets, plain integers: one ``bisect`` and one list increment per observation.

    ``counts[i]`` is the number of values ``<= bounds[i]`` and ``> bounds[i - 1]`` (the last slot:
    above every bound); :meth:`cumulative` gives Prometheus's ``le`` buckets at scrape time.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (``le``).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Counts of values ``<=`` each bound, then of all values (the ``+Inf`` bucket)."""
        total, out = 0, []
        for count in self.counts:
            total += count
            out.append(total)
        return out


class RoomStats:
    """Counters every room actor of one engine updates (once per turn, or per request at most)."""

    __slots__ = ("commits", "errors", "inbox_high", "receipts", "resumes", "turns")

    def __init__(self) -> None:
        self.turns = Histogram(TURN_BUCKETS)
        """Seconds from a turn's first command to the release of its replies (commit included)."""
        self.commits = Histogram(COMMIT_BUCKETS)
        """Seconds a turn waited for its writes to be durable."""
        self.errors: collections.Counter[str] = collections.Counter()
        """Error replies rooms sent, by error code."""
        self.resumes: collections.Counter[str] = collections.Counter(replay=0, resync=0)
        """Accepted ``resume`` requests by outcome: ``replay`` (the missed events) or ``resync``."""
        self.receipts = 0
        """``receipts`` frames built (one per online author per receipt window, §17)."""
        self.inbox_high = 0
        """The most commands one room found queued at the start of a turn, since start: the inbox's
        high-water mark, exactly (a queue only grows between two takes, so it is deepest when taken)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its Prometheus type, label (if any), and the question it answers."""

    kind: str
    help: str
    label: str | None = None


FAMILIES: dict[str, Family] = {
    # connections
    "roost_connections_open": Family("gauge", "How many TCP connections are open now (handshaking, in session or "
                                     "closing)?"),
    "roost_sessions_open": Family("gauge", "How many authenticated sessions are connected now?"),
    "roost_handshakes_pending": Family("gauge", "How many connections have not authenticated yet?"),
    "roost_connections_accepted": Family("counter", "How many TCP connections were accepted?"),
    "roost_connections_closed": Family("counter", "How did connections end, by the WebSocket close code sent or "
                                       "answered (1006: TCP ended without a Close; none: never a WebSocket; other: a code the "
                                       "protocol does not define, chosen by the peer)?", "code"),
    "roost_handshakes": Family("counter", "How did handshakes end: ok (welcome sent), refused (HTTP 503, too many "
                               "pending) or failed (no session, see roost_auth_failures_total)?", "outcome"),
    "roost_auth_failures": Family("counter", "Why were connections refused a session (a token reason word, revoked, "
                                  "missing, timeout, bad_hello, version, too_many_sessions, reserved_sub, or guest_ and a guest "
                                  "proof's reason word)?", "reason"),
    "roost_rate_limited": Family("counter", "How many frames were refused for going over the rate?"),
    "roost_slow_consumers": Family("counter", "How many connections were closed for not reading (4000)?"),
    # requests
    "roost_requests": Family("counter", "Which requests do clients send (frames after hello, by type)?", "type"),
    "roost_request_errors": Family("counter", "Which errors do requests get (error replies, by code)?", "code"),
    # output
    "roost_deliveries": Family("counter", "How many pushes (replies and events, one per recipient) went to "
                               "connections?"),
    "roost_sent_bytes": Family("counter", "How many bytes did the server write to connections?"),
    "roost_outbox_backlog_bytes": Family("gauge", "How many bytes wait in outboxes for slow readers now?"),
    "roost_outbox_backlog_max_bytes": Family("gauge", "How many bytes wait for the slowest reader now?"),
    # rooms
    "roost_rooms_live": Family("gauge", "How many rooms are live now?"),
    "roost_rooms_asleep": Family("gauge", "How many live rooms are asleep now (no task, state in the store)?"),
    "roost_room_wakes": Family("counter", "How many times was a sleeping room woken (by a command or its reaper)?"),
    "roost_rooms_created": Family("counter", "How many rooms were created?"),
    "roost_rooms_restored": Family("counter", "How many rooms came back from the store at start?"),
    "roost_rooms_reaped": Family("counter", "How many rooms were closed for staying empty (reaped)?"),
    "roost_rooms_closed": Family("counter", "Why did rooms close for good (closed, expired: reaped, internal: "
                                 "crashed too often, failed: could not be recovered)?", "reason"),
    "roost_rooms_crashed": Family("counter", "How many times did a room actor crash (and restart)?"),
    "roost_resumes": Family("counter", "Did resumes replay the missed events or need a resync?", "outcome"),
    "roost_receipts": Family("counter", "How many receipts frames (delivery status batches) went to authors?"),
    "roost_room_inbox_depth_high_water": Family("gauge", "How many commands did one room find queued at the start "
                                                "of a turn, at most?"),
    "roost_room_turn_duration_seconds": Family("histogram", "How long do room turns take, from their first "
                                               "command to the release of their replies (commit included)?"),
    "roost_store_commit_duration_seconds": Family("histogram", "How long do room turns wait for their writes "
                                                  "to be durable?"),
    "roost_revocations": Family("gauge", "How many revocation entries are held?"),
    # inboxes
    "roost_inbox_notifies": Family("counter", "How many inbox entries were committed and pushed (notify)?"),
    "roost_inbox_dropped": Family("counter", "How many inbox entries were dropped by the per-user bound "
                                  "(oldest first)?"),
    "roost_inbox_resumes": Family("counter", "Did inbox resumes replay the missed entries or need a resync?",
                                  "outcome"),
}
"""Every family :class:`Metrics` exposes (README.md's table is generated from it). Counters count
since the engine started serving; their samples carry Prometheus's ``_total`` suffix."""


def _family(name: str, value: float) -> Metric:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    family = FAMILIES[name]
    if family.kind == "counter":
        return CounterMetricFamily(name, family.help, value=value)
    return GaugeMetricFamily(name, family.help, value=value)


def _by(name: str, counts: Iterable[tuple[object, int]]) -> CounterMetricFamily:
    from prometheus_client.core import CounterMetricFamily

    family = FAMILIES[name]
    metric = CounterMetricFamily(name, family.help, labels=[family.label or ""])
    for key, count in sorted((str(key), count) for key, count in counts):
        metric.add_metric([key], count)
    return metric


def _histogram(name: str, histogram: Histogram) -> HistogramMetricFamily:
    from prometheus_client.core import HistogramMetricFamily

    bounds = [repr(float(bound)) for bound in histogram.bounds] + ["+Inf"]
    return HistogramMetricFamily(name, FAMILIES[name].help,
                                 buckets=list(zip(bounds, histogram.cumulative(), strict=True)),
                                 sum_value=histogram.sum)


def markdown_table() -> str:
    """The README table of :data:`FAMILIES` (``python -m roost.metrics README.md`` rewrites it)."""
    rows = ["| metric | type | label | answers |", "|---|---|---|---|"]
    for name, family in FAMILIES.items():
        sample = f"{name}_total" if family.kind == "counter" else name
        rows.append(f"| `{sample}` | {family.kind} | {f'`{family.label}`' if family.label else ''} | {family.help} |")
    return "\n".join(rows) + "\n"


class Metrics:
    """The engine's metrics: ``exposition()`` is the body and content type of ``GET /metrics``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.rooms = RoomStats()
        """Shared by every room actor of this engine (through the supervisor and each RoomRuntime)."""
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """This engine's own registry (never ``prometheus_client.REGISTRY``), made at first use."""
        if self._registry is None:
            from prometheus_client.registry import CollectorRegistry

            self._registry = CollectorRegistry()
            self._registry.register(self)
        return self._registry

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format (0.0.4) of every metric now, and its content type."""
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def collect(self) -> Iterator[Metric]:
        """Build every family from the live counters (called by the registry at each scrape)."""
        engine = self._engine
        gateway, router, supervisor = engine._gateway, engine._router, engine._supervisor
        stats = gateway.stats if gateway is not None else collections.Counter()
        connections = list(gateway.connections) if gateway is not None else []
        auth_failures = gateway.auth_failures if gateway is not None else collections.Counter()

        yield _family("roost_connections_open", len(connections))
        yield _family("roost_sessions_open", len(gateway.by_sid) if gateway is not None else 0)
        yield _family("roost_handshakes_pending", gateway.pending_handshakes if gateway is not None else 0)
        yield _family("roost_connections_accepted", stats["connections_accepted"])
        yield _by("roost_connections_closed", gateway.closes.items() if gateway is not None else ())
        yield _by("roost_handshakes", [("ok", stats["sessions_opened"]), ("refused", stats["handshakes_refused"]),
                                       ("failed", sum(auth_failures.values()))])
        yield _by("roost_auth_failures", auth_failures.items())
        yield _family("roost_rate_limited", stats["rate_limited"])
        yield _family("roost_slow_consumers", stats["slow_consumers"])

        yield _by("roost_requests", gateway.requests.items() if gateway is not None else ())
        errors = collections.Counter(self.rooms.errors)
        if gateway is not None:
            errors.update(gateway.errors)
        yield _by("roost_request_errors", errors.items())

        pushes = sent = backlog = largest = 0
        for connection in connections:
            outbox = connection.outbox
            pushes += outbox.pushes
            sent += outbox.bytes_sent
            queued = outbox.backlog_bytes
            backlog += queued
            largest = max(largest, queued)
        if gateway is not None:
            pushes += gateway.closed_pushes
            sent += gateway.closed_bytes_sent
        yield _family("roost_deliveries", pushes)
        yield _family("roost_sent_bytes", sent)
        yield _family("roost_outbox_backlog_bytes", backlog)
        yield _family("roost_outbox_backlog_max_bytes", largest)

        closed = supervisor.closed if supervisor is not None else collections.Counter()
        yield _family("roost_rooms_live", len(router.rooms) if router is not None else 0)
        yield _family("roost_rooms_asleep", supervisor.asleep if supervisor is not None else 0)
        yield _family("roost_room_wakes", supervisor.wakes if supervisor is not None else 0)
        yield _family("roost_rooms_created", supervisor.created if supervisor is not None else 0)
        yield _family("roost_rooms_restored", supervisor.restored if supervisor is not None else 0)
        yield _family("roost_rooms_reaped", closed["expired"])
        yield _by("roost_rooms_closed", closed.items())
        yield _family("roost_rooms_crashed", supervisor.restarts if supervisor is not None else 0)
        rooms = self.rooms
        yield _by("roost_resumes", rooms.resumes.items())
        yield _family("roost_receipts", rooms.receipts)
        yield _family("roost_room_inbox_depth_high_water", rooms.inbox_high)
        yield _histogram("roost_room_turn_duration_seconds", rooms.turns)
        yield _histogram("roost_store_commit_duration_seconds", rooms.commits)
        yield _family("roost_revocations", len(engine.revocations))
        inbox = engine.inbox.stats
        yield _family("roost_inbox_notifies", inbox.notifies)
        yield _family("roost_inbox_dropped", inbox.dropped)
        yield _by("roost_inbox_resumes", inbox.resumes.items())


def _rewrite(path: str) -> None:
    """Replace the table between the ``metrics:begin``/``metrics:end`` markers of ``path``."""
    text = pathlib.Path(path).read_text(encoding="utf-8")
    begin, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    pathlib.Path(path).write_text(text[:begin] + "\n" + markdown_table() + text[end:], encoding="utf-8")


TABLE_BEGIN = "<!-- metrics:begin (generated by python -m roost.metrics README.md; do not edit) -->"
TABLE_END = "<!-- metrics:end -->"

if __name__ == "__main__":
    _rewrite(sys.argv[1])
