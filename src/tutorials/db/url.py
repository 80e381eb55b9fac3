"""Database URLs: read once, then handed to asyncpg (the service's pool) and SQLAlchemy (ORM
sessions, migrations) in the form each expects.

Accepted: `postgresql://`, `postgres://` (the Heroku form) and `postgresql+asyncpg://`, with
libpq's options (`host=a:5432&host=b:5432` or `a:5432,b:5432` for several hosts,
`target_session_attrs`, `sslmode` and the ssl file options, `passfile`, `connect_timeout`) and,
for URLs written for SQLAlchemy, asyncpg's spellings of them (`ssl`, `timeout`,
`command_timeout`, `statement_cache_size`). Anything else is refused, and no message or repr
ever contains the password.

No SQLAlchemy here: the service's path (and the command line's start-up) never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
#: libpq options asyncpg reads from a DSN itself.
_DSN_OPTIONS = {
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "target_session_attrs",
}
#: Spellings of asyncpg's (a URL written for SQLAlchemy's asyncpg dialect), as libpq's.
_ASYNCPG_SPELLINGS = {"ssl": "sslmode", "timeout": "connect_timeout"}
_SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
_SESSION_ATTRS = {"any", "primary", "standby", "prefer-standby", "read-write", "read-only"}


@dataclass(frozen=True)
class DatabaseUrl:
    """A validated PostgreSQL URL.

    `dsn` is libpq's form (what psql and asyncpg read), with the options asyncpg does not read
    from a DSN kept apart: `connect_timeout` (seconds), `command_timeout` (seconds) and
    `statement_cache_size`.
    """

    dsn: str
    connect_timeout: float | None = None
    command_timeout: float | None = None
    statement_cache_size: int | None = None
    #: The DSN's parts, for `sqlalchemy_url` and `rendered`.
    _options: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.rendered()!r})"

    def rendered(self, *, hide_password: bool = True) -> str:
        """The URL to show a person: the password replaced by `***` unless asked for."""
        if not hide_password:
            return self.dsn
        parts = urlsplit(self.dsn)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}{at}{hosts}"
        return parts._replace(netloc=netloc).geturl()

    def asyncpg_options(self) -> dict[str, object]:
        """Keyword arguments for `asyncpg.connect` / `asyncpg.create_pool` (besides `dsn`)."""
        options: dict[str, object] = {}
        if self.connect_timeout is not None:
            options["timeout"] = self.connect_timeout
        if self.command_timeout is not None:
            options["command_timeout"] = self.command_timeout
        if self.statement_cache_size is not None:
            options["statement_cache_size"] = self.statement_cache_size
        return options

    def sqlalchemy_url(self) -> URL:
        """The same database as a SQLAlchemy URL for its asyncpg dialect (imports SQLAlchemy)."""
        from sqlalchemy.engine import URL

        parts = urlsplit(self.dsn)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        query: dict[str, str | tuple[str, ...]] = {}
        host_list = [host for host in hosts.split(",") if host]
        single_host: str | None = None
        port: int | None = None
        if len(host_list) == 1:
            single_host, port = _host_and_port(host_list[0])
        elif host_list:
            query["host"] = tuple(host_list)
        for key, value in self._options:
            if key == "host":
                query["host"] = (*query.get("host", ()), value)  # a socket directory
            elif key == "sslmode":
                query["ssl"] = value
            elif key in ("passfile", "target_session_attrs", "sslrootcert", "sslcert", "sslkey"):
                query[key] = value
        if self.connect_timeout is not None:
            query["timeout"] = str(self.connect_timeout)
        if self.command_timeout is not None:
            query["command_timeout"] = str(self.command_timeout)
        if self.statement_cache_size is not None:
            query["prepared_statement_cache_size"] = str(self.statement_cache_size)
            query["statement_cache_size"] = str(self.statement_cache_size)
        return URL.create(
            "postgresql+asyncpg",
            username=unquote(user) or None,
            password=unquote(password) or None,
            host=single_host,
            port=port,
            database=unquote(parts.path.lstrip("/")) or None,
            query=query,
        )

    def with_database(self, name: str) -> DatabaseUrl:
        parts = urlsplit(self.dsn)
        dsn = parts._replace(path="/" + quote(name, safe="")).geturl()
        return DatabaseUrl(
            dsn,
            self.connect_timeout,
            self.command_timeout,
            self.statement_cache_size,
            self._options,
        )


def _host_and_port(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        address, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
        return address, int(port) if port else None
    name, colon, port = host.rpartition(":")
    if not colon:
        return host, None
    return name, int(port)


def _number(key: str, value: str, kind: type[float] | type[int]) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"database URL option {key} must be a number") from None
    if number < 0:
        raise ValueError(f"database URL option {key} must not be negative")
    return number


def parse_database_url(raw: str) -> DatabaseUrl:
    """Validate a PostgreSQL URL (see the module docstring). `ValueError` if it is not one; its
    message never contains the password."""
    try:
        parts = urlsplit(raw.strip())
    except ValueError:
        raise ValueError("malformed database URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported database URL scheme {scheme or '(none)'!r}: "
            "use postgresql://, postgres:// or postgresql+asyncpg://"
        )
    if parts.fragment:
        raise ValueError("malformed database URL (it has a #fragment)")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    host_list = [host for host in hosts.split(",") if host]
    for host in host_list:
        try:
            _host_and_port(host)
        except ValueError:
            raise ValueError(f"malformed host {host!r} in the database URL") from None
    options: list[tuple[str, str]] = []
    connect_timeout = command_timeout = None
    statement_cache_size = None
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError("malformed database URL query") from None
    for raw_key, value in query:
        key = _ASYNCPG_SPELLINGS.get(raw_key, raw_key)
        if key == "connect_timeout":
            connect_timeout = _number(key, value, float) or None  # libpq: 0 means none
        elif key == "command_timeout":
            command_timeout = _number(key, value, float)
        elif key in ("statement_cache_size", "prepared_statement_cache_size"):
            statement_cache_size = int(_number(key, value, int))
        elif key == "host" and "/" not in value:
            host_list.append(value)  # `?host=a:5432&host=b:5432`: into the host list
        elif key in _DSN_OPTIONS:
            if key == "sslmode" and value not in _SSL_MODES:
                raise ValueError(f"unsupported sslmode {value!r}")
            if key == "target_session_attrs" and value not in _SESSION_ATTRS:
                raise ValueError(f"unsupported target_session_attrs {value!r}")
            options.append((key, value))
        else:
            raise ValueError(f"unsupported database URL option {raw_key!r}")
    netloc = f"{userinfo}{at}{','.join(host_list)}"
    dsn = parts._replace(scheme="postgresql", netloc=netloc, query=urlencode(options)).geturl()
    return DatabaseUrl(dsn, connect_timeout, command_timeout, statement_cache_size, tuple(options))
