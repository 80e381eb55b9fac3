"""Fixtures for the bounds tests: the service in a subprocess on this test's database, raw
loopback sockets, and the figures each test reports.

The HTTP-level bounds (head size, timeouts, stalled exports, hosts) only exist in a real
server, so those tests drive `tutorials serve` (see `tests.serving.ServiceProcess`)
over real sockets on 127.0.0.1, with short timeouts set through the environment so that every
test ends in seconds. Figures are printed at once (visible with `-s`), attached to the test's
report, and listed again in a "bounds figures" section at the end of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from tests.serving import ServiceProcess, running_service, service_env
from tests.support import figures_recorder, write_figures_section

FIGURES_KEY = "bounds_figures"
SECTION_PREFIX = "tests/security/bounds/"

Figures = Callable[..., None]
#: `serve(*args, **settings)`: the service, started on this test's database (see `serve`).
Serve = Callable[..., AbstractAsyncContextManager[ServiceProcess]]


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """`figures(name=value, ...)`: this test's measured figures, for the end-of-run summary."""
    return figures_recorder(request, FIGURES_KEY)


@pytest.fixture
def service_url(database_url: URL) -> str:
    """This test's database as the URL the service subprocess is given."""
    return database_url.render_as_string(hide_password=False)


@pytest.fixture
def serve(service_url: str, tmp_path: Path) -> Serve:
    """`async with serve(TUTORIALS_X="1", ...) as service`: `tutorials serve` on this test's
    database (loopback, a free port), with those settings; always stopped afterwards."""
    tmp_path.chmod(0o755)

    def start(*args: str, **settings: str) -> AbstractAsyncContextManager[ServiceProcess]:
        return running_service(service_env(service_url, **settings), tmp_path, *args)

    return start


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List every bounds test's figures at the end of the run (so CI logs carry them)."""
    write_figures_section(
        terminalreporter, prefix=SECTION_PREFIX, key=FIGURES_KEY, title="bounds figures"
    )
