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

The families, their names and help texts are the table in README.md ("Metrics").
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

if TYPE_CHECKING:
    from .app import Engine

__all__ = ["COMMIT_BUCKETS", "TURN_BUCKETS", "Histogram", "Metrics", "RoomStats"]

TURN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the room-turn histogram: a turn of a chat room is tens of microseconds;
one that takes 100 ms stalls every member of its room."""

COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the store-commit histogram: the memory store commits in microseconds,
LMDB in about a millisecond plus the group-commit wait; seconds mean a sick disk."""


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

    __slots__ = ("commits", "errors", "inbox_high", "resumes", "turns")

    def __init__(self) -> None:
        self.turns = Histogram(TURN_BUCKETS)
        """Seconds from a turn's first command to the release of its replies (commit included)."""
        self.commits = Histogram(COMMIT_BUCKETS)
        """Seconds a turn waited for its writes to be durable."""
        self.errors: collections.Counter[str] = collections.Counter()
        """Error replies rooms sent, by error code."""
        self.resumes: collections.Counter[str] = collections.Counter(replay=0, resync=0)
        """Accepted ``resume`` requests by outcome: ``replay`` (the missed events) or ``resync``."""
        self.inbox_high = 0
        """The most commands one room found queued at the start of a turn, since start."""


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by(name: str, documentation: str, label: str, counts: Iterable[tuple[object, int]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, count in sorted((str(key), count) for key, count in counts):
        family.add_metric([key], count)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    bounds = [repr(float(bound)) for bound in histogram.bounds] + ["+Inf"]
    return HistogramMetricFamily(name, documentation, buckets=list(zip(bounds, histogram.cumulative(), strict=True)),
                                 sum_value=histogram.sum)


class Metrics:
    """The engine's metrics: ``exposition()`` is the body and content type of ``GET /metrics``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.rooms = RoomStats()
        """Shared by every room actor of this engine (through the supervisor and each RoomRuntime)."""
        self.registry = CollectorRegistry()
        """This engine's own registry (never ``prometheus_client.REGISTRY``)."""
        self.registry.register(self)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format (0.0.4) of every metric now, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def collect(self) -> Iterator[Metric]:
        """Build every family from the live counters (called by the registry at each scrape)."""
        engine = self._engine
        gateway, router, supervisor = engine._gateway, engine._router, engine._supervisor
        stats = gateway.stats if gateway is not None else collections.Counter()
        connections = list(gateway.connections) if gateway is not None else []
        auth_failures = gateway.auth_failures if gateway is not None else collections.Counter()

        yield _gauge("roost_connections_open", "How many TCP connections are open now (handshaking, in session or "
                     "closing)?", len(connections))
        yield _gauge("roost_sessions_open", "How many authenticated sessions are connected now?",
                     len(gateway.by_sid) if gateway is not None else 0)
        yield _gauge("roost_handshakes_pending", "How many connections have not authenticated yet?",
                     gateway.pending_handshakes if gateway is not None else 0)
        yield _counter("roost_connections_accepted", "How many TCP connections were accepted since start?",
                       stats["connections_accepted"])
        yield _by("roost_connections_closed", "How did connections end, by WebSocket close code (1006: no Close "
                  "frame; none: never upgraded, a plain HTTP exchange)?", "code",
                  gateway.closes.items() if gateway is not None else ())
        yield _by("roost_handshakes", "How did handshakes end: ok (welcome sent), refused (HTTP 503, too many "
                  "pending) or failed (no session: see roost_auth_failures_total)?", "outcome",
                  [("ok", stats["sessions_opened"]), ("refused", stats["handshakes_refused"]),
                   ("failed", sum(auth_failures.values()))])
        yield _by("roost_auth_failures", "Why were connections refused a session (token reason word, revoked, "
                  "missing, timeout, bad_hello, version, too_many_sessions)?", "reason", auth_failures.items())
        yield _counter("roost_rate_limited", "How many frames were refused for going over the rate?",
                       stats["rate_limited"])
        yield _counter("roost_slow_consumers", "How many connections were closed for not reading (4000)?",
                       stats["slow_consumers"])

        requests = gateway.requests if gateway is not None else collections.Counter()
        yield _by("roost_requests", "Which requests do clients send (frames after hello, by type)?", "type",
                  requests.items())
        errors = collections.Counter(self.rooms.errors)
        if gateway is not None:
            errors.update(gateway.errors)
        yield _by("roost_request_errors", "Which errors do requests get (error replies, by code)?", "code",
                  errors.items())

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
        yield _counter("roost_deliveries", "How many pushes (replies and events, one per recipient) went to "
                       "connections?", pushes)
        yield _counter("roost_sent_bytes", "How many bytes did the server write to connections?", sent)
        yield _gauge("roost_outbox_backlog_bytes", "How many bytes wait in outboxes for slow readers now?", backlog)
        yield _gauge("roost_outbox_backlog_max_bytes", "How many bytes wait for the slowest reader now?", largest)

        yield _gauge("roost_rooms_live", "How many rooms are live now?", len(router.rooms) if router is not None else 0)
        yield _counter("roost_rooms_created", "How many rooms were created since start?",
                       supervisor.created if supervisor is not None else 0)
        yield _counter("roost_rooms_restored", "How many rooms came back from the store at start?",
                       supervisor.restored if supervisor is not None else 0)
        closed = supervisor.closed if supervisor is not None else collections.Counter()
        yield _counter("roost_rooms_reaped", "How many rooms were closed for staying empty (reaped)?",
                       closed["expired"])
        yield _by("roost_rooms_closed", "Why did rooms close for good (closed, expired, internal: crashed too "
                  "often, failed: could not be recovered)?", "reason", closed.items())
        yield _counter("roost_rooms_crashed", "How many times did a room actor crash and restart?",
                       supervisor.restarts if supervisor is not None else 0)
        rooms = self.rooms
        yield _by("roost_resumes", "Did resumes replay the missed events or need a resync?", "outcome",
                  rooms.resumes.items())
        yield _gauge("roost_room_inbox_depth_high_water", "How many commands did one room find queued at the "
                     "start of a turn, at most, since start?", rooms.inbox_high)
        yield _histogram("roost_room_turn_duration_seconds", "How long do room turns take, from the first "
                         "command to the release of the replies (commit included)?", rooms.turns)
        yield _histogram("roost_store_commit_duration_seconds", "How long do room turns wait for their writes "
                         "to be durable?", rooms.commits)
        yield _gauge("roost_revocations", "How many revocation entries are held?", len(engine.revocations))
