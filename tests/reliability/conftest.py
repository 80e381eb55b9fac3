"""Fixtures for the fault tests: private clusters, databases on them, and the figures summary.

Each module gets a cluster of its own (`cluster`); a test that kills or restarts the server it
uses may ask for `own_cluster` instead, so its damage ends with it. Each test gets a fresh
database at the migrations' head (`private_db`), copied from a per-cluster template.

Every fault test reports its figures (requests sent, faults injected, acknowledged writes,
rows found, recovery time) through the `figures` fixture: they are printed at once (visible
with `-s`), attached to the test's report (`user_properties`, so JUnit XML carries them) and
listed again in a "reliability figures" section at the end of every run, so CI logs show them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tests.clusters import PrivateCluster, private_clusters_available
from tests.reliability.harness import Figures, PrivateDb, iptables_available, remove_stale_rules
from tests.support import figures_recorder, write_figures_section

FIGURES_KEY = "reliability_figures"
SECTION_PREFIX = "tests/reliability/"


def _require_clusters() -> None:
    reason = private_clusters_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of this module's own (loopback, free port), removed at the end."""
    _require_clusters()
    made = PrivateCluster.create()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
def own_cluster() -> Iterator[PrivateCluster]:
    """A cluster of this test's own, for tests that crash or cut off the server."""
    _require_clusters()
    made = PrivateCluster.create()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., PrivateCluster]]:
    """`make_cluster(conf={...})`: clusters with server settings of the test's choosing."""
    _require_clusters()
    made: list[PrivateCluster] = []

    def make(conf: dict[str, str] | None = None) -> PrivateCluster:
        made.append(PrivateCluster.create(conf))
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.destroy()


@pytest.fixture(scope="module")
def cluster_template(cluster: PrivateCluster) -> str:
    """A database at the migrations' head on the module's cluster, copied for each test."""
    return cluster.create_database()


@pytest.fixture
def private_db(cluster: PrivateCluster, cluster_template: str) -> PrivateDb:
    """A fresh migrated database on the module's cluster."""
    return PrivateDb(cluster, cluster.create_database(template=cluster_template))


@pytest.fixture
def own_db(own_cluster: PrivateCluster) -> PrivateDb:
    """A migrated database on this test's own cluster."""
    return PrivateDb(own_cluster, own_cluster.create_database())


@pytest.fixture(scope="module")
def module_db(cluster: PrivateCluster, cluster_template: str) -> PrivateDb:
    """A migrated database shared by a module's tests (for a module-wide service)."""
    return PrivateDb(cluster, cluster.create_database(template=cluster_template))


@pytest.fixture
def require_iptables() -> None:
    """Skip (with the reason) where iptables cannot be used; clear rules a killed run left."""
    reason = iptables_available()
    if reason is not None:
        pytest.skip(f"dead-network tests need iptables: {reason}")
    remove_stale_rules()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """`figures(sent=..., faults=..., acknowledged=..., rows_found=..., recovery_ms=...)`."""
    return figures_recorder(request, FIGURES_KEY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List every fault test's figures at the end of the run (so CI logs carry them)."""
    write_figures_section(
        terminalreporter, prefix=SECTION_PREFIX, key=FIGURES_KEY, title="reliability figures"
    )
