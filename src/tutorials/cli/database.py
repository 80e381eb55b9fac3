"""`tutorials db ...`: the embedded server's life cycle, and migrations from the installed package.

The migration commands are Alembic's own, aimed at the configured database (DATABASE_URL, or
the embedded server) and at the migrations shipped inside the package, so they work with no
repository checkout. Alembic and SQLAlchemy are imported only when one of them runs, and the
embedded server's modules only by the commands that manage it: nothing here is imported by
`tutorials --help` or another group's command.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tutorials.cli._app import EXIT_INVALID, Command, error_line, fail, guarded, new_app, say
from tutorials.limits import MAX_REPLICAS

if TYPE_CHECKING:
    from tutorials.db.embedded import EmbeddedPostgres

db_app = new_app("The embedded PostgreSQL server and the schema migrations.")


def _server() -> EmbeddedPostgres:
    from tutorials.db.embedded import EmbeddedPostgres, default_root
    from tutorials.settings import get_settings

    return EmbeddedPostgres(get_settings().home or default_root())


def _embedded(action: str) -> EmbeddedPostgres:
    from tutorials.settings import get_settings

    if get_settings().database_url is not None:
        fail(f"DATABASE_URL is set: there is no embedded server to {action}", EXIT_INVALID)
    return _server()


def _embedded_error() -> type[Exception]:
    from tutorials.db.embedded import EmbeddedPostgresError

    return EmbeddedPostgresError


def _print(text: str) -> None:
    say(text)


@db_app.command(
    cls=Command,
    help=(
        "Start the embedded PostgreSQL and print its URL.\n\n"
        "The first start sets everything up: the data directory, a password kept in a file "
        "only you can read, and (as root) the system user tutorials-pg that runs the server. "
        "Starting a server that already runs just prints its URL. The server keeps running "
        "after this command, until `tutorials db stop`.\n\n"
        "With --replicas N it also makes (once, with pg_basebackup) and starts N streaming "
        "replicas on ports of their own; their URLs go to stderr. Every command and "
        "`tutorials serve` then send reads to them (docs/SCALING.md). Replicas made before "
        "are started again by every start.\n\n"
        "\b\nExamples:\n"
        '  psql "$(tutorials db start)"\n'
        "  tutorials db start --replicas 1"
    ),
)
@guarded
def start(
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            min=0,
            max=MAX_REPLICAS,
            help="Make and start this many streaming replicas of it (on this machine).",
        ),
    ] = 0,
) -> None:
    """Start (or adopt) the embedded server, provisioning what it needs; print its URL."""
    server = _embedded("start")
    try:
        url = server.start(replicas=replicas)
        running = server.replicas()
    except _embedded_error() as exc:
        fail(str(exc))
    _print(url)
    for replica in running:
        error_line(f"replica {replica.index}: {replica.url}")


def _connections(count: int) -> str:
    return f"{count} client connection{'s' if count != 1 else ''}"


@db_app.command(
    cls=Command,
    help=(
        "Stop the embedded PostgreSQL.\n\n"
        "While other clients are connected (a running `tutorials serve`, a psql session) it "
        "refuses and says how many; --force stops the server anyway.\n\n"
        "\b\nExamples:\n"
        "  tutorials db stop\n"
        "  tutorials db stop --force"
    ),
)
@guarded
def stop(
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            metavar="",
            help="Stop even while clients are connected (their open transactions are lost).",
        ),
    ] = False,
) -> None:
    """Stop the embedded server unless clients are connected (or with --force)."""
    server = _embedded("stop")
    try:
        if not force and (count := server.client_connections()) > 0:
            fail(
                f"the embedded PostgreSQL has {_connections(count)} open; "
                "`tutorials db stop --force` stops it anyway"
            )
        stopped = server.stop()
    except _embedded_error() as exc:
        fail(str(exc))
    _print("stopped" if stopped else "not running")


@db_app.command(
    cls=Command,
    help=(
        "Say whether the embedded PostgreSQL runs, where its data is, and its port and URL.\n\n"
        "Exits with 1 when it is not running, so scripts can ask.\n\n"
        "\b\nExamples:\n"
        "  tutorials db status\n"
        "  tutorials db status --json"
    ),
)
@guarded
def status(
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print one JSON object instead.")
    ] = False,
) -> None:
    """Report the embedded server's state; exit 1 when it is not running."""
    try:
        state = _embedded("inspect").status()
    except _embedded_error() as exc:
        fail(str(exc))
    running = _server().replicas() if state.running else []
    if as_json:
        _print(
            json.dumps(
                {
                    "running": state.running,
                    "pid": state.pid,
                    "port": state.port,
                    "data_dir": str(state.data_dir),
                    "url": state.url,
                    "replicas": [
                        {
                            "index": replica.index,
                            "pid": replica.pid,
                            "port": replica.port,
                            "url": replica.url,
                        }
                        for replica in running
                    ],
                }
            )
        )
    else:
        _print(f"data directory: {state.data_dir}")
        if state.running:
            _print(f"running: pid {state.pid}, port {state.port}")
            _print(f"url: {state.url}")
            for replica in running:
                _print(
                    f"replica {replica.index}: pid {replica.pid}, port {replica.port}, "
                    f"url {replica.url}"
                )
        else:
            _print("not running")
    if not state.running:
        raise typer.Exit(1)


@db_app.command(
    cls=Command,
    help=(
        "Print the URL of the running embedded PostgreSQL (exit 1 if it is not running).\n\n"
        "The URL holds no password: it names the file that does (passfile=...), which only "
        "you can read, so it works for you and for nobody else.\n\n"
        "\b\nExamples:\n"
        '  psql "$(tutorials db url)"\n'
        "  tutorials db url --sqlalchemy"
    ),
)
@guarded
def url(
    sqlalchemy: Annotated[
        bool,
        typer.Option(
            "--sqlalchemy",
            metavar="",
            help="Print the postgresql+asyncpg:// form, for SQLAlchemy's create_async_engine.",
        ),
    ] = False,
) -> None:
    """Print the running embedded server's URL (libpq form, or SQLAlchemy's)."""
    try:
        found = _embedded("inspect").url(sqlalchemy=sqlalchemy)
    except _embedded_error() as exc:
        fail(str(exc))
    if found is None:
        fail("the embedded PostgreSQL is not running: start it with `tutorials db start`")
    _print(found)


def _alembic(action: str, *args: str, offline: bool = False, **kwargs: Any) -> None:
    """Run an Alembic command on the configured database; its failures become clear lines."""
    from alembic import command
    from alembic.util import AutogenerateDiffsDetected, CommandError
    from sqlalchemy.engine import URL

    from tutorials.db.embedded import EmbeddedPostgresError
    from tutorials.db.engine import resolve_url
    from tutorials.db.migrate import alembic_config
    from tutorials.errors import classify
    from tutorials.settings import get_settings

    try:
        if offline:  # offline SQL needs PostgreSQL's dialect, never a server
            url = URL.create("postgresql+asyncpg", database="offline")
        else:
            url = resolve_url(get_settings()).sqlalchemy_url()
        config = alembic_config(url=url)
        getattr(command, action)(config, *args, **kwargs)
    except AutogenerateDiffsDetected as exc:
        fail(f"the models and the migrations differ: {exc}")
    except (CommandError, EmbeddedPostgresError) as exc:
        fail(str(exc))
    except Exception as exc:
        domain = classify(exc)
        if domain is None:
            raise
        raise domain from exc


@db_app.command(cls=Command)
@guarded
def upgrade(
    revision: Annotated[
        str,
        typer.Argument(metavar="REVISION", help="Target, or FROM:TO with --sql (e.g. 0002:head)."),
    ] = "head",
    sql: Annotated[
        bool,
        typer.Option(
            "--sql",
            help="Print the SQL instead of running it (no database is touched), for a DBA to "
            "review and run with psql; see docs/MIGRATIONS.md for what it does not do.",
        ),
    ] = False,
) -> None:
    """Apply migrations up to REVISION (default: head), online: the service keeps answering.

    \b
    Examples:
      tutorials db upgrade
      tutorials db upgrade --sql 0002:head > upgrade.sql
    """
    _alembic("upgrade", revision, sql=sql, offline=sql)


@db_app.command(cls=Command)
@guarded
def downgrade(
    revision: Annotated[
        str, typer.Argument(metavar="REVISION", help="e.g. -1 or base.", show_default=False)
    ],
) -> None:
    """Revert migrations down to REVISION (with the service stopped: not online).

    \b
    Examples:
      tutorials db downgrade -1
      tutorials db downgrade base
    """
    _alembic("downgrade", revision)


@db_app.command(cls=Command)
@guarded
def current() -> None:
    """Show the revision the database is at.

    \b
    Example:
      tutorials db current
    """
    _alembic("current", verbose=False)


@db_app.command(cls=Command)
@guarded
def check() -> None:
    """Fail if the models and the database's schema differ (run it on a database at head).

    Columns, types, defaults, constraints and indexes, as Alembic's autogenerate compares
    them; functions and triggers are out of its sight (the tests compare those).

    \b
    Example:
      tutorials db upgrade && tutorials db check
    """
    _alembic("check")
    _print("no differences between the models and the migrations")


@db_app.command(cls=Command)
@guarded
def revision(
    message: Annotated[
        str, typer.Option("--message", "-m", metavar="TEXT", help="What the revision does.")
    ],
    autogenerate: Annotated[
        bool, typer.Option(help="Compare the models with the database and write the diff.")
    ] = True,
) -> None:
    """Write a new migration into the package's migrations.

    \b
    Example:
      tutorials db revision -m "Add a column"
    """
    _alembic("revision", message=message, autogenerate=autogenerate)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
