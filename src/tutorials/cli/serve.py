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
import contextlib
import ipaddress
import signal
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated

import asyncpg
import typer

from tutorials.cli._app import EXIT_INVALID, fail, guarded
from tutorials.errors import TutorialsError

if TYPE_CHECKING:
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


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


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
) -> None:
    """Run the HTTP API with OpenAPI docs at /docs and the web page at /."""
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
    embedded = _start_embedded_early(settings)  # runs while the API is imported below
    from tutorials.api.logs import configure_logging  # imports tutorials.api: the app

    configure_logging(log_level)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        started = runner.run(
            _serve(bind_host, bind_port, graceful_timeout, log_level.lower(), embedded)
        )
    if not started:
        fail("the server did not start (see the log above)")


def _start_embedded_early(settings: Settings) -> Future[str] | None:
    """Start (or adopt) the embedded server in a thread; None when DATABASE_URL is set.

    Only a head start: `open_database` asks for the embedded server again as always and finds
    it running. A failure here is kept in the future and not reported: the same start, made
    again when the database is opened, reports it the usual way (one line, exit code).
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

    from tutorials.api.app import create_app, open_database
    from tutorials.settings import get_settings

    settings = get_settings()
    if embedded is not None:
        with contextlib.suppress(Exception):  # reported by open_database's own start, below
            await asyncio.wrap_future(embedded)
    try:
        database = await open_database(settings)  # domain errors end the command in one line
    except TutorialsError:
        raise
    except Exception as exc:
        fail(f"cannot open the database: {_describe(exc)}")
    try:
        config = uvicorn.Config(
            create_app(settings, database),
            host=host,
            port=port,
            lifespan="on",
            access_log=False,  # RequestContextMiddleware writes the structured access log
            log_config=None,  # logging is configured by `serve` (JSON lines)
            log_level=log_level,
            timeout_graceful_shutdown=graceful_timeout,
            server_header=False,
            proxy_headers=False,
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises a signal it caught once it has shut down gracefully; with these
        # handlers in place that is a no-op, and a graceful stop exits 0.
        previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            await server.serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return server.started
    finally:
        await database.dispose()


def _describe(error: BaseException) -> str:
    """What the server said (e.g. `database "x" does not exist`), never the URL or password.

    PostgreSQL's own messages name users and databases but never carry the password, and the
    embedded server's (one line: a path, a port, a log tail) have no password to carry;
    anything else is described by its type only.
    """
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
