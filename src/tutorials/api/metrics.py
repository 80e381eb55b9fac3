"""Prometheus metrics: request counts and latencies by route and status, and the pool's state.

Each app has its own `CollectorRegistry` (not the process-global one), so several apps in one
process (tests) never clash. Requests are labelled by the route *template*
(`/tutorials/{tutorial_id}`), never the raw path, so the number of series stays bounded; paths
no route matches share one label. Pool gauges are read from the engine at scrape time, so they
cost nothing per request. Nothing secret (URL, tokens) is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.pool import Pool, QueuePool

#: Methods we label as themselves; anything else becomes "OTHER" (clients choose methods).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class PoolCollector(Collector):
    """Connections checked out, idle in the pool, and in overflow, read when scraped."""

    def __init__(self, pool: Callable[[], Pool | None]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self._pool()
        if not isinstance(pool, QueuePool):
            return
        yield GaugeMetricFamily(
            "tutorials_db_pool_in_use", "Connections checked out of the pool.", pool.checkedout()
        )
        yield GaugeMetricFamily(
            "tutorials_db_pool_idle", "Connections idle in the pool.", pool.checkedin()
        )
        yield GaugeMetricFamily(
            "tutorials_db_pool_overflow",
            "Connections open beyond pool_size.",
            max(0, pool.overflow()),
        )
        yield GaugeMetricFamily("tutorials_db_pool_size", "Configured pool_size.", pool.size())


class HttpMetrics:
    """The app's registry, its request metrics, and a cheap per-request `observe`."""

    def __init__(self, pool: Callable[[], Pool | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tutorials_http_requests",
            "HTTP requests answered.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "tutorials_http_request_duration_seconds",
            "Time from receiving a request to finishing its response.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(PoolCollector(pool))
        # `labels()` takes a lock and builds a key each time; remember the children instead.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method if method in KNOWN_METHODS else "OTHER", route, status)
        children = self._children.get(key)
        if children is None:
            labels = (key[0], key[1], str(status))
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
