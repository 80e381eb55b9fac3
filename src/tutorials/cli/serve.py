"""`tutorials serve`: run the HTTP API (and the web page) with uvicorn.

The database is opened *before* the server binds (DATABASE_URL or the embedded server,
migrated when `auto_migrate` is on), on the same event loop the server then runs on: if it is
unreachable, the command ends with one line and exit code 5 instead of a traceback, and no
port is ever opened for a server that cannot serve. SIGTERM / SIGINT stop accepting
connections, let in-flight requests finish (up to `--graceful-timeout`), dispose the engine,
and exit 0.

Start-up time (goal: `/readyz` answers within 3 s of the command, measured by
`benchmarks/startup.py`): importing the HTTP stack costs this process most of a second of
CPU, while starting the embedded PostgreSQL is other processes (runuser, pg_ctl, the
postmaster, psql) waiting on each other and the disk. So with no DATABASE_URL the embedded
server is started in a thread *before* the API is imported, side by side with it; opening the
database later finds it running. The heavy imports (the API, uvicorn) happen only here, not
when another command is run.

Binds 127.0.0.1 by default. Binding anything else with writes open to all (no
`TUTORIALS_API_TOKENS`) is refused unless `--allow-open-writes` says it is meant.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tutorials.cli._app import EXIT_INVALID, Command, fail, guarded
from tutorials.errors import TutorialsError

if TYPE_CHECKING:
    import uvicorn

    from tutorials.db.database import Database
    from tutorials.settings import Settings

HostOption = Annotated[
    str | None,
    typer.Option(help="Address to bind (default: TUTORIALS_HOST, else 127.0.0.1)."),
]
PortOption = Annotated[
    int | None,
    typer.Option(min=0, max=65535, help="Port (default: TUTORIALS_PORT, else 8000)."),
]
OpenWritesOption = Annotated[
    bool,
    typer.Option(
        "--allow-open-writes",
        help="Allow binding a non-loopback address without TUTORIALS_API_TOKENS.",
    ),
]
GracefulOption = Annotated[
    int,
    typer.Option(min=0, help="Seconds in-flight requests get to finish when stopping."),
]
LogLevelOption = Annotated[
    str, typer.Option(help="Log level: debug, info, warning, error.", case_sensitive=False)
]
WorkersOption = Annotated[
    int,
    typer.Option(
        min=1,
        max=64,
        help="Worker processes (uvicorn's), each with its own pools: N times one process's "
        "database connections.",
    ),
]
LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        metavar="FORMAT",
        help="json (one object per line, for machines) or text (for people). Default: text "
        "on a terminal, else json.",
    ),
]


def register(app: typer.Typer) -> None:
    app.command("serve", cls=Command)(serve)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@guarded
def serve(
    host: HostOption = None,
    port: PortOption = None,
    allow_open_writes: OpenWritesOption = False,
    graceful_timeout: GracefulOption = 10,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = None,
    workers: WorkersOption = 1,
) -> None:
    """Run the HTTP API with OpenAPI docs at /docs and the web page at /.

    With --workers N, uvicorn runs N processes on the one port. Each opens its own
    pools, so N workers hold up to N x (TUTORIALS_POOL_SIZE + TUTORIALS_SESSION_POOL_SIZE)
    connections: start-up says the total and warns when the server cannot take it.
    /metrics adds up every worker's counts.

    \b
    Examples:
      tutorials serve
      tutorials serve --port 9000 --log-format json
      tutorials serve --workers 2
    """
    from tutorials.settings import get_settings

    settings = get_settings()
    bind_host = host if host is not None else settings.host
    bind_port = port if port is not None else settings.port
    if not is_loopback(bind_host) and not settings.api_tokens and not allow_open_writes:
        fail(
            f"refusing to bind {bind_host} with writes open to anyone: set "
            "TUTORIALS_API_TOKENS, or pass --allow-open-writes if that is really meant",
            EXIT_INVALID,
        )
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        fail(f"unknown log level {log_level!r}", EXIT_INVALID)
    if log_format is None:
        log_format = "text" if sys.stderr.isatty() else "json"
    if log_format not in ("json", "text"):
        fail(f"--log-format must be json or text, not {log_format!r}", EXIT_INVALID)
    embedded = _start_embedded_early(settings)  # runs while the API is imported below
    from tutorials.api.logs import configure_logging  # imports tutorials.api: the app

    configure_logging(log_level, log_format, pid=workers > 1)
    if workers > 1:
        _serve_workers(
            workers, bind_host, bind_port, graceful_timeout, log_level.lower(), log_format, embedded
        )
        return
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        started = runner.run(
            _serve(bind_host, bind_port, graceful_timeout, log_level.lower(), embedded)
        )
    if not started:
        fail("the server did not start (see the log above)")


def _start_embedded_early(settings: Settings) -> Future[str] | None:
    """Start (or adopt) the embedded server in a thread; None when DATABASE_URL is set.

    This is `serve`'s provisioning start (`EmbeddedPostgres.start`: the system account, the
    binaries, initdb); `_serve` reports its failure in one line. `open_database` then asks for
    the embedded server without provisioning, as the library does, and finds it running.
    """
    if settings.database_url is not None:
        return None
    from tutorials.db.embedded import EmbeddedPostgres, default_root

    server = EmbeddedPostgres(settings.home or default_root())
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tutorials-embedded")
    try:
        return executor.submit(server.start)
    finally:
        executor.shutdown(wait=False)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return None
    return uvloop.new_event_loop


async def _serve(
    host: str,
    port: int,
    graceful_timeout: int,
    log_level: str,
    embedded: Future[str] | None = None,
) -> bool:
    """Open the database, serve until told to stop, dispose the database. True if it served."""
    import uvicorn

    from tutorials.api.app import create_app
    from tutorials.settings import get_settings

    settings = get_settings()
    database = await _open(settings, embedded)
    settings = _hosts_for(settings, host)
    try:
        config = uvicorn.Config(
            create_app(settings, database),
            **_uvicorn_options(settings, host, port, graceful_timeout, log_level),
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises a signal it caught once it has shut down gracefully; with these
        # handlers in place that is a no-op, and a graceful stop exits 0.
        previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
        announcing = asyncio.create_task(_announce(server, host, port, database, embedded))
        try:
            await server.serve()
        finally:
            announcing.cancel()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return server.started
    finally:
        await database.dispose()


async def _open(settings: Settings, embedded: Future[str] | None) -> Database:
    """The database `serve` will use, open and checked (migrated when `auto_migrate` is on,
    its connection budget weighed); a failure ends the command in one line."""
    from tutorials.api.app import open_database

    if embedded is not None:
        try:  # the provisioning start; open_database below only adopts what it started
            await asyncio.wrap_future(embedded)
        except Exception as exc:
            fail(f"cannot open the database: {_describe(exc)}")
    try:
        return await open_database(settings)  # domain errors end the command in one line
    except TutorialsError:
        raise
    except Exception as exc:
        fail(f"cannot open the database: {_describe(exc)}")


def _hosts_for(settings: Settings, host: str) -> Settings:
    """Bound to loopback with no TUTORIALS_ALLOWED_HOSTS: answer to the loopback names only
    (what a DNS-rebinding page cannot forge)."""
    if settings.allowed_hosts is None and is_loopback(host):
        from tutorials.api.middleware import LOOPBACK_HOSTS

        return settings.model_copy(update={"allowed_hosts": list(LOOPBACK_HOSTS)})
    return settings


def _uvicorn_options(
    settings: Settings, host: str, port: int, graceful_timeout: int, log_level: str
) -> dict[str, Any]:
    """uvicorn's settings, the same for one process and for workers."""
    return {
        "host": host,
        "port": port,
        "lifespan": "on",
        "access_log": False,  # RequestContextMiddleware writes the structured access log
        "log_config": None,  # logging is configured by `serve` (JSON lines)
        "log_level": log_level,
        "timeout_graceful_shutdown": graceful_timeout,
        "server_header": False,
        "proxy_headers": False,
        # uvicorn's own bounds (public Config options; README "Bounds"): the request head's
        # size while it is read (h11 only: httptools buffers a head of any size), idle
        # keep-alive connections, and connections plus running requests (503 beyond; per
        # worker). uvicorn never times out a connection that sends nothing or half a head: its
        # keep-alive timer is armed only after a response. The app bounds the rest (431
        # header count and size, 408 stalled body, 422 too many query parameters).
        "http": settings.http_parser,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
    }


def _serve_workers(
    workers: int,
    host: str,
    port: int,
    graceful_timeout: int,
    log_level: str,
    log_format: str,
    embedded: Future[str] | None,
) -> None:
    """`serve --workers N`: uvicorn's supervisor and N worker processes (`tutorials.api.workers`).

    This process first opens the database once, as `serve` does, so that an unreachable
    server or a failed migration ends the command before any port is bound, and so that the
    workers start on a migrated schema. It weighs the connection budget for N workers, says the
    total, and closes the database again. Then it sets the environment the spawned workers
    inherit and hands over to `uvicorn.run(..., workers=N)` until SIGINT / SIGTERM.
    """
    import logging
    import os
    import shutil
    import tempfile

    import uvicorn

    from tutorials.api.metrics import MULTIPROC_DIR
    from tutorials.api.workers import FACTORY, LOG_FORMAT, LOG_LEVEL
    from tutorials.db.budget import primary_need
    from tutorials.settings import get_settings

    # TUTORIALS_WORKERS may already count processes on other hosts: never fewer than ours.
    settings = get_settings()
    settings = settings.model_copy(update={"workers": max(settings.workers, workers)})

    async def check() -> tuple[tuple[str, str, str | None], int]:
        database = await _open(settings, embedded)
        try:
            return _place(database, embedded), primary_need(settings, database.replicas is not None)
        finally:
            await database.dispose()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        (where, place, data_dir), per_worker = runner.run(check())
    metrics_dir = tempfile.mkdtemp(prefix="tutorials-metrics-")
    os.environ[MULTIPROC_DIR] = metrics_dir  # before any worker imports prometheus_client
    os.environ["TUTORIALS_WORKERS"] = str(settings.workers)
    os.environ[LOG_LEVEL] = log_level
    os.environ[LOG_FORMAT] = log_format
    hosts = _hosts_for(settings, host).allowed_hosts
    if hosts is not None and settings.allowed_hosts is None:
        os.environ["TUTORIALS_ALLOWED_HOSTS"] = ",".join(hosts)
    address = _address(host, port)
    logging.getLogger("tutorials.serve").info(
        "listening on %s with %d worker processes, on %s; each opens its own pools, up to "
        "%d x %d = %d connections to the primary; Ctrl-C stops it",
        address,
        workers,
        place,
        workers,
        per_worker,
        workers * per_worker,
        extra={"url": address, "database": where, "data_dir": data_dir},
    )
    try:
        uvicorn.run(
            FACTORY,
            factory=True,
            workers=workers,
            **_uvicorn_options(settings, host, port, graceful_timeout, log_level),
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _place(database: Database, embedded: Future[str] | None) -> tuple[str, str, str | None]:
    """The database's URL for people (`passfile=/path`, as `tutorials db url` says it; never a
    password), a phrase naming it, and the embedded server's data directory."""
    from urllib.parse import unquote

    where = unquote(database.url.rendered())
    if embedded is None:
        return where, f"{where} (DATABASE_URL)", None
    from tutorials.db.embedded import EmbeddedPostgres, default_root

    data_dir = str(EmbeddedPostgres(database.settings.home or default_root()).data_dir)
    return where, f"the embedded PostgreSQL {where}, data directory {data_dir}", data_dir


async def _announce(
    server: uvicorn.Server,
    host: str,
    port: int,
    database: Database,
    embedded: Future[str] | None,
) -> None:
    """Once the server listens, say in one line where, on which database (its password
    hidden) and, for the embedded server, in which data directory: the line a person starting
    the service looks for. A log record, so `--log-format json` gives it to machines too."""
    import logging

    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.01)
    address = _address(host, port)
    where, place, data_dir = _place(database, embedded)
    logging.getLogger("tutorials.serve").info(
        "listening on %s, on %s; Ctrl-C stops it",
        address,
        place,
        extra={"url": address, "database": where, "data_dir": data_dir},
    )


def _address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _describe(error: BaseException) -> str:
    """What the server said (e.g. `database "x" does not exist`), never the URL or password.

    PostgreSQL's own messages name users and databases but never carry the password, and the
    embedded server's (one line: a path, a port, a log tail) have no password to carry;
    anything else is described by its type only.
    """
    import asyncpg

    from tutorials.db.embedded import EmbeddedPostgresError

    current: BaseException | None = error
    while current is not None:
        if isinstance(current, asyncpg.PostgresError | EmbeddedPostgresError):
            return str(current).splitlines()[0] if str(current) else type(current).__name__
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return type(error).__name__


def _ignore(signum: int, frame: object) -> None:
    """Stand-in handler: the signal has already been acted on by uvicorn."""
