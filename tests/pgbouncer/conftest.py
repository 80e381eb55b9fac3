"""Fixtures for the PgBouncer tests: a PgBouncer of this module's own in front of the server,
with a small server pool, so that transaction pooling is what the tests go through."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import URL
from tests.pgbouncer.harness import PgBouncer, unavailable

#: Server connections per database: fewer than the service's pool, so connections are shared.
SERVER_POOL = 6


@pytest.fixture(scope="module")
def pgbouncer(server_url: URL) -> Iterator[PgBouncer]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    running = PgBouncer(server_url, pool_size=SERVER_POOL)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def bounced_url(pgbouncer: PgBouncer, direct_database_url: URL) -> URL:
    """This test's fresh database, through the module's PgBouncer."""
    assert direct_database_url.database is not None
    return pgbouncer.url(direct_database_url.database)
