"""Prometheus metrics: request counts and latencies by route and status, and the pool's state.

Requests are labelled by the route *template* (`/tutorials/{tutorial_id}`), never the raw path,
so the number of series stays bounded; paths no route matches share one label. Nothing secret
(URL, tokens) is ever a label.

**One process** (`tutorials serve`, tests, an app embedded elsewhere): each app has its own
`CollectorRegistry` (not the process-global one), so several apps in one process never clash,
and the pool gauges are read from the service's pool when scraped, costing nothing per request.

**Several worker processes** (`tutorials serve --workers N`): a scrape reaches one worker, which
must report all of them. prometheus-client's documented multiprocess mode does that. With
`PROMETHEUS_MULTIPROC_DIR` set (by `serve`, to a fresh directory, before the workers start),
every process writes its values to memory-mapped files there. A scrape builds a registry with
a `MultiProcessCollector`, which adds up counters and histograms across processes, dead ones
included, so totals never go back. The pool gauges are `livesum`: the sum over the workers
alive, so `tutorials_db_pool_size` is the connections all workers may open together. A worker
writes its pool's state when scraped and at most once a second after a request, and a worker
that stops drops its gauges (`close`, which calls `mark_process_dead`). prometheus-client
decides the mode when it is first imported, so the variable must be set before the process
starts. `serve` sets it in the parent, and the workers inherit it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

#: Reads the service pool's state: (connections open, of which idle, the most there may be).
PoolStats = Callable[[], tuple[int, int, int] | None]

#: The variable prometheus-client reads to switch to multiprocess mode.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
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
#: The pool gauges: name -> help.
POOL_GAUGES = {
    "tutorials_db_pool_in_use": "Connections checked out of the pool.",
    "tutorials_db_pool_idle": "Connections idle in the pool.",
    "tutorials_db_pool_size": "Configured pool_size.",
}
#: In multiprocess mode, how often (seconds) a busy worker writes its pool's state.
POOL_REFRESH = 1.0


def _pool_values(stats: tuple[int, int, int]) -> tuple[int, int, int]:
    """(in use, idle, size) in `POOL_GAUGES`' order."""
    open_, idle, size = stats
    return open_ - idle, idle, size


class PoolCollector(Collector):
    """Connections in use, idle in the pool, and the pool's size, read when scraped."""

    def __init__(self, stats: PoolStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats()
        if stats is None:
            return
        for (name, documentation), value in zip(
            POOL_GAUGES.items(), _pool_values(stats), strict=True
        ):
            yield GaugeMetricFamily(name, documentation, value)


class HttpMetrics:
    """The app's request metrics, a cheap per-request `observe`, and `render` for a scrape.

    Multiprocess mode is on when `PROMETHEUS_MULTIPROC_DIR` is set (see the module's
    docstring): read here, when the app is made, as prometheus-client read it when imported.
    """

    def __init__(self, pool: PoolStats) -> None:
        self._pool = pool
        self.multiprocess_dir = os.environ.get(MULTIPROC_DIR) or None
        # In multiprocess mode the values live in files, and a scrape reads the files: the
        # metrics are registered nowhere (a registry would export this process's share alone).
        self.registry: CollectorRegistry | None = (
            None if self.multiprocess_dir else CollectorRegistry()
        )
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
        self._gauges: tuple[Gauge, ...] = ()
        self._pool_written = 0.0
        if self.registry is not None:
            self.registry.register(PoolCollector(pool))
        else:
            self._gauges = tuple(
                Gauge(name, documentation, multiprocess_mode="livesum", registry=None)
                for name, documentation in POOL_GAUGES.items()
            )
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
        if self._gauges and time.monotonic() - self._pool_written >= POOL_REFRESH:
            self._write_pool()

    def render(self) -> bytes:
        """The Prometheus text of this app, or in multiprocess mode of every worker."""
        if self.registry is not None:
            return generate_latest(self.registry)
        self._write_pool()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """This process stops serving: in multiprocess mode, drop its live gauges."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def _write_pool(self) -> None:
        self._pool_written = time.monotonic()
        stats = self._pool()
        if stats is None:
            return
        for gauge, value in zip(self._gauges, _pool_values(stats), strict=True):
            gauge.set(value)
