"""Test fixtures: a real PostgreSQL, and a database of its own for every test.

The server is the one `TEST_DATABASE_URL` names (any database on it; we create our own), or
else a private embedded server started for this run in a temporary root and stopped at the end.
With `TEST_PGBOUNCER=1`, every test's database is reached through a real PgBouncer in
transaction mode started for the run (`tests/pgbouncer/harness.py`), with the settings'
`pgbouncer` mode on; databases are still created, and rows checked (`dsn`), directly.

Isolation: the migrations run once into a template database; each test that asks for a
database gets a copy of its own (`CREATE DATABASE ... TEMPLATE`). A copy a test gives back is
handed to a later test only once it is verified to be the template again (same schema, emptied;
`tests/databases.py`), and dropped otherwise. No state is shared between tests, and no test
depends on another's order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from tests.databases import TemplateCopies
from tests.skips import allowed as allowed_skip
from tests.support import admin_execute, asyncpg_dsn, run_async

from tutorials.db.migrate import alembic_config as packaged_alembic_config
from tutorials.db.migrate import upgrade
from tutorials.db.session import Database, close_default_database
from tutorials.settings import Settings, get_settings, normalize_database_url


def embedded_base(prefix: str = "tutorials-test-") -> Path:
    """A new 0755 directory for embedded roots: in /dev/shm (tmpfs) when there is one, else /tmp.

    Not under pytest's `/tmp/pytest-of-root` (0700): as root the server runs as `tutorials-pg`,
    which could not traverse it, and roots are never loosened for it. tmpfs because a data
    directory is ~1,300 files: copying one took 0.3-0.5 s on /tmp (ext4) here, 0.03 s on tmpfs.
    """
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else Path("/tmp")
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    base.chmod(0o755)
    return base


def copy_embedded_root(template: Path, dest: Path) -> Path:
    """A copy of an embedded root with owners, modes and links kept (`cp -a`): an initdb'd data
    directory in a few ms instead of initdb's second."""
    subprocess.run(["cp", "-a", "--", str(template), str(dest)], check=True)
    (dest / "port").unlink(missing_ok=True)  # each copy picks a free port of its own
    return dest


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Whatever a test does to the root logger (an in-process `serve` configures it with the
    stderr pytest captured for that test) is undone, so later tests do not log to a closed
    stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def embedded_template() -> Iterator[Path]:
    """One embedded root made once per session (initdb'd, stopped), for tests to copy."""
    from tutorials.db.embedded import EmbeddedPostgres

    base = embedded_base("tutorials-template-")
    server = EmbeddedPostgres(base / "root", durable=False)
    try:
        server.start()
        server.stop()
        yield server.root
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def postmasters(data_dir: Path) -> list[int]:
    """Pids of live postmasters whose cmdline names data_dir (children retitle themselves)."""
    from tutorials.db.embedded.postmaster import is_our_postmaster

    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and is_our_postmaster(int(entry.name), data_dir)
    ]


class EmbeddedRoots:
    """Embedded roots for one test, each in a directory of its own (`embedded_base`, 0755 unless
    told otherwise); afterwards every server started in them is stopped and everything removed."""

    def __init__(self, template: Path) -> None:
        self._template = template
        self._bases: list[Path] = []
        self._roots: list[Path] = []

    def new(
        self, *, initdb: bool = False, create: bool = True, name: str = "root", mode: int = 0o755
    ) -> Path:
        """A root: a copy of the session's initdb'd template (`initdb`), an empty directory,
        or (`create=False`) a path that does not exist yet. `mode` is its parent's."""
        base = embedded_base()
        base.chmod(mode)
        self._bases.append(base)
        root = base / name
        self._roots.append(root)
        if initdb:
            copy_embedded_root(self._template, root)
        elif create:
            root.mkdir(mode=0o755)
            root.chmod(0o755)
        return root

    def close(self) -> None:
        """Stop and remove everything (again: harmless)."""
        from tutorials.db.embedded import EmbeddedPostgres
        from tutorials.db.embedded.layout import Layout

        try:
            for root in self._roots:
                with contextlib.suppress(Exception):
                    EmbeddedPostgres(root).stop()
                assert postmasters(root / "data") == [], f"server left running on {root}"
                socket_dir = Layout(root).socket_dir()
                if socket_dir != root / "run":
                    shutil.rmtree(socket_dir, ignore_errors=True)
        finally:
            for base in self._bases:
                shutil.rmtree(base, ignore_errors=True)


OTHER_USER = "tutorials-intruder"


@pytest.fixture(scope="session")
def other_user() -> str:
    """A second OS user, neither root nor the embedded server's: created if missing (as root)."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("creating and impersonating a second OS user needs root (CI runs as root)")
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
            check=False,
            capture_output=True,
            text=True,
        )
        # Exit 9: a parallel worker created it first.
        assert made.returncode in (0, 9), made.stderr
    return OTHER_USER


@pytest.fixture
def embedded_roots(embedded_template: Path) -> Iterator[EmbeddedRoots]:
    """Fresh embedded roots for this test (see `EmbeddedRoots`). The session's template is made
    before the test runs, so nothing a test patches can leak into it."""
    roots = EmbeddedRoots(embedded_template)
    yield roots
    roots.close()


@pytest.fixture(scope="session")
def server_url(request: pytest.FixtureRequest) -> Iterator[URL]:
    """An admin URL of the PostgreSQL server the tests use.

    The embedded server's URL carries no password, only `passfile=`: the file that holds it,
    readable by this process's user alone.
    """
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield normalize_database_url(configured)
        return
    from tutorials.db.embedded import EmbeddedPostgres

    template: Path = request.getfixturevalue("embedded_template")
    base = embedded_base()
    server = EmbeddedPostgres(copy_embedded_root(template, base / "root"), durable=False)
    try:
        yield normalize_database_url(server.start())
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_name(server_url: URL) -> Iterator[str]:
    """A database at the migrations' head, copied for each test."""
    name = f"tutorials_template_{uuid.uuid4().hex[:12]}"
    run_async(lambda: admin_execute(server_url, f'CREATE DATABASE "{name}"'))

    async def migrate() -> None:
        database = Database.from_url(server_url.set(database=name), Settings())
        try:
            await upgrade(database.engine)
        finally:
            await database.dispose()

    run_async(migrate)
    yield name
    run_async(lambda: admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _fresh_database(server_url: URL) -> Iterator[URL]:
    name = f"tutorials_test_{uuid.uuid4().hex[:12]}"
    run_async(lambda: admin_execute(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.set(database=name)
    finally:
        run_async(
            lambda: admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


def through_pgbouncer() -> bool:
    return os.environ.get("TEST_PGBOUNCER", "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def bouncer(server_url: URL) -> Iterator[object]:
    """With TEST_PGBOUNCER=1: a PgBouncer (transaction mode) in front of the server."""
    if not through_pgbouncer():
        yield None
        return
    from tests.pgbouncer.harness import PgBouncer, unavailable

    reason = unavailable()
    if reason is not None:
        pytest.fail(f"TEST_PGBOUNCER=1 but {reason}")
    running = PgBouncer(server_url)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def template_copies(server_url: URL, template_name: str) -> Iterator[TemplateCopies]:
    """Copies of the template, given back and verified rather than dropped (tests/databases.py)."""
    copies = TemplateCopies(server_url, template_name)
    yield copies
    copies.close()


@pytest.fixture
def direct_database_url(server_url: URL, template_copies: TemplateCopies) -> Iterator[URL]:
    """A database of this test's own, at the migrations' head and empty, on the server itself."""
    name = template_copies.take()
    yield server_url.set(database=name)
    template_copies.give_back(name)


@pytest.fixture
def database_url(direct_database_url: URL, bouncer: object) -> URL:
    """This test's database as the service reaches it: directly, or through PgBouncer."""
    if bouncer is None:
        return direct_database_url
    from tests.pgbouncer.harness import PgBouncer

    assert isinstance(bouncer, PgBouncer)
    assert direct_database_url.database is not None
    return bouncer.url(direct_database_url.database)


@pytest.fixture
def empty_database_url(server_url: URL) -> Iterator[URL]:
    """A fresh empty database (no migrations applied)."""
    yield from _fresh_database(server_url)


@pytest.fixture
def settings() -> Settings:
    """Settings as the tests want them: never the developer's environment or `.env` (and in
    PgBouncer mode when the run goes through PgBouncer)."""
    return Settings(_env_file=None, auto_migrate=False, pgbouncer=through_pgbouncer())  # type: ignore[call-arg]


@pytest.fixture
async def database(database_url: URL, settings: Settings) -> AsyncIterator[Database]:
    """A `Database` (engine + sessionmaker) on this test's own database."""
    database = Database.from_url(database_url, settings)
    yield database
    await database.dispose()


@pytest.fixture
async def session(database: Database) -> AsyncIterator[AsyncSession]:
    """One unit of work on this test's database; committed when the test ends normally."""
    async with database.session() as session:
        yield session


@pytest.fixture
def dsn(direct_database_url: URL) -> str:
    """This test's database as a plain asyncpg DSN, for checking rows behind the library's back
    (directly on the server, never through PgBouncer)."""
    return asyncpg_dsn(direct_database_url)


@pytest.fixture
def database_env(database_url: URL, monkeypatch: pytest.MonkeyPatch) -> Iterator[URL]:
    """Point settings (so the CLI and the library's default database) at this test's database."""
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("TUTORIALS_AUTO_MIGRATE", "false")
    if through_pgbouncer():
        monkeypatch.setenv("TUTORIALS_PGBOUNCER", "true")
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


@pytest.fixture
async def library_env(database_env: URL) -> AsyncIterator[URL]:
    """`database_env` for async library tests: also disposes the default database afterwards."""
    yield database_env
    await close_default_database()


@pytest.fixture
def alembic_config() -> AlembicConfig:
    """pytest-alembic's built-in tests run the packaged migrations..."""
    return packaged_alembic_config()


@pytest.fixture
def alembic_engine(empty_database_url: URL) -> Iterator[AsyncEngine]:
    """...on an empty database of their own."""
    engine = create_async_engine(empty_database_url, poolclass=NullPool)
    yield engine
    run_async(engine.dispose)


# --- In CI, a skip is a failure unless tests/skips.py lists it ---------------------------------


class _SkipGuard:
    """Registered in CI only: collects skips tests/skips.py does not list, fails the run."""

    def __init__(self) -> None:
        self.unexpected: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if (
            report.skipped
            and not hasattr(report, "wasxfail")
            and allowed_skip(report.nodeid) is None
        ):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, (tuple, list)) else longrepr
            self.unexpected.append(f"{report.nodeid}: {reason}")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unexpected and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.unexpected:
            terminalreporter.section("skips CI does not accept (tests/skips.py)", red=True)
            for line in self.unexpected:
                terminalreporter.line(line)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI") == "true":
        config.pluginmanager.register(_SkipGuard(), "tutorials-skip-guard")


# --- Tests that do not depend on which server the suite uses run once in CI ---------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server-dependent-only",
        action="store_true",
        help="run only the tests that use the suite's server (TEST_DATABASE_URL or the "
        "embedded one): CI runs the others once, in the first pass",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _slow_files_first(items)
    if not config.getoption("--server-dependent-only"):
        return
    kept, dropped = [], []
    for item in items:
        (kept if "server_url" in getattr(item, "fixturenames", ()) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# --- Scheduling: the longest files start first, the rest fill in around them -------------------


def _slow_files_first(items: list[pytest.Item]) -> None:
    """Move every file holding a `slow` test to the front, keeping the order within each part.

    xdist hands whole files to workers in collection order (`--dist loadfile` with
    `--no-loadscope-reorder`, see pyproject.toml): a 40-second file handed out last leaves the
    other workers idle while it runs, one handed out first overlaps with everything else. The
    sort is deterministic, so every worker collects the same order, as xdist requires.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, plus one.

    A third of a pass is spent waiting, not computing: on a server starting, a leader key
    expiring, a browser. A worker more than there are cores keeps them busy meanwhile (on two
    cores: 3:40 with two workers, 3:26 with three; four made the fault tests late to notice
    their faults).
    """
    return len(os.sched_getaffinity(0)) + 1
