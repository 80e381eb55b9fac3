"""Configuration: one `Settings` object, read from the environment when asked for, never at import.

Every knob that changes how the service talks to PostgreSQL lives here, with the default we
measured or reasoned about beside it. `DATABASE_URL` is the only name without the `TUTORIALS_`
prefix, because that is the name every platform and tutorial uses.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tutorials.db.url import DatabaseUrl, parse_database_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


def normalize_database_url(raw: str) -> URL:
    """Any common PostgreSQL URL form as a SQLAlchemy URL for the asyncpg driver (see
    `tutorials.db.url`); `ValueError`, without the password, for anything else."""
    return parse_database_url(raw).sqlalchemy_url()


_URL_START = re.compile(r"[\s,]+(?=postgres(?:ql)?(?:\+asyncpg)?://)", re.IGNORECASE)


def split_urls(text: str) -> list[str]:
    """URLs separated by spaces or commas. A comma inside a URL (`host=a:5432,b:5432`) stays:
    only one followed by the next URL's scheme separates."""
    return [part for chunk in _URL_START.split(text.strip()) for part in chunk.split() if part]


def _no_items() -> list[Any]:
    """The default of the list settings. A function of ours rather than `list`: pydantic reads
    a default factory's signature, and a builtin's is parsed from text by `inspect`, whose
    tokenizer compiles its regular expressions first, at every start of every command."""
    return []


class Settings(BaseSettings):
    """Everything configurable, from environment variables (prefix `TUTORIALS_`) or a `.env`."""

    model_config = SettingsConfigDict(
        env_prefix="TUTORIALS_",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,
        # `Settings(database_url=...)` by its name too, not only by its aliases (the default
        # differs between the pydantic-settings releases we admit).
        populate_by_name=True,
    )

    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "TUTORIALS_DATABASE_URL")
    )
    #: Where the embedded PostgreSQL keeps its data when no DATABASE_URL is given.
    home: Path | None = None
    #: Bring the schema to the migrations' head when the library or service first connects
    #: (under an advisory lock, a no-op when already there). Turn off where a deploy step owns it.
    auto_migrate: bool = True

    # The connection budget: `pool_size` for the service (every face, bulk transfer included),
    # opened on demand, plus `session_pool_size` for `get_session()` ORM units of work, opened
    # only when one is used. A short wait, so exhaustion fails fast (503) instead of hanging.
    pool_size: int = Field(default=20, ge=1, le=500)
    session_pool_size: int = Field(default=5, ge=1, le=500)
    #: Of `pool_size`, how many connections long streams (exports a client reads at its own
    #: pace) may hold at once; at least one is always left to reads and writes.
    stream_connections: int = Field(default=4, ge=1, le=500)
    pool_timeout: float = Field(default=2.0, gt=0, le=300)
    #: Connections idle this long are closed; below any proxy's idle timeout, so we never hand
    #: out a connection it has dropped.
    pool_recycle: int = Field(default=1800, ge=1)
    #: Ping a pooled connection that sat idle 10 s before using it (one closed by the server
    #: is always replaced, at no cost).
    pool_pre_ping: bool = True
    connect_timeout: float = Field(default=5.0, gt=0, le=300)

    # Server-side limits, sent as startup parameters (or SET LOCAL behind PgBouncer).
    statement_timeout_ms: int = Field(default=15_000, ge=0)
    lock_timeout_ms: int = Field(default=5_000, ge=0)
    idle_in_transaction_timeout_ms: int = Field(default=60_000, ge=0)
    application_name: str = "tutorials"
    #: Behind PgBouncer in transaction mode (or any transaction-pooling proxy): unnamed
    #: statements, no startup options but `application_name`; the timeouts come from the
    #: role's or database's defaults (checked at start-up) and `SET LOCAL` in transactions.
    pgbouncer: bool = False

    # Read replicas (docs/SCALING.md). Reads go to a replica that has replayed what they must
    # see and lags at most `replica_max_lag_ms`; writes, and everything else, to the primary.
    #: Replica URLs, separated by spaces or commas (a multi-host URL's own commas are kept).
    #: Empty: the embedded server's running replicas (`tutorials db start --replicas N`) when
    #: no DATABASE_URL is set, else none.
    replica_urls: Annotated[list[SecretStr], NoDecode] = Field(default_factory=_no_items)
    #: Connections per replica, per process (opened on demand), like `pool_size`.
    replica_pool_size: int = Field(default=20, ge=1, le=500)
    #: A replica whose replay is this far behind the primary is skipped until it catches up.
    replica_max_lag_ms: int = Field(default=1_000, ge=0, le=3_600_000)
    #: How often each replica's replay position (and the primary's WAL position) is read.
    replica_poll_interval_ms: int = Field(default=100, ge=5, le=60_000)

    # The connection budget across processes, checked at start-up against the servers'
    # `max_connections` (a warning, not a refusal: see docs/SCALING.md).
    #: How many processes (`tutorials serve` workers, hosts) share these servers.
    workers: int = Field(default=1, ge=1, le=10_000)
    #: Connections left free for everything else (psql, migrations, monitoring, replication)
    #: beyond the superusers' reserve.
    connection_reserve: int = Field(default=5, ge=0, le=10_000)

    #: Serialization failures and deadlocks are retried this many times, then answered 503.
    retry_attempts: int = Field(default=3, ge=1, le=20)
    #: Search ranks at most this many matching rows (0: every match). A query matching fewer
    #: is ranked exactly; one matching more gets its best among the first this many found,
    #: which keeps a common word at tens of ms instead of a second at 1,000,000 rows.
    search_candidates: int = Field(default=2_000, ge=0, le=10_000_000)

    # HTTP service.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=_no_items)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    #: `POST /tutorials/import` streams (flat memory), so it takes far more, but not unbounded.
    max_import_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=_no_items)
    retry_after_seconds: int = Field(default=1, ge=1)
    #: Host names the service answers to (a request naming another gets 400), `*` for any.
    #: Unset: the loopback names (localhost, 127.0.0.1, [::1]) when bound to a loopback
    #: address, which is what a DNS-rebinding page cannot forge; any host otherwise.
    allowed_hosts: Annotated[list[str], NoDecode] | None = None

    # Bounds on what one client can make the server hold (each answered with its status).
    #: uvicorn's HTTP parser: `h11` bounds the request line and headers by `max_header_bytes`
    #: while reading them; `httptools` is faster (about 90 µs less server CPU a request, a
    #: third of it: benchmarks/http_parsers.sh) but buffers a request head of any size, so
    #: use it only behind a proxy that bounds heads itself.
    http_parser: Literal["h11", "httptools"] = "h11"
    #: The request line and headers together, in bytes: larger heads are refused while they
    #: are read (h11) and, whatever the parser, before the app looks at them (431).
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    #: Header fields per request (431 above it).
    max_headers: int = Field(default=100, ge=8, le=10_000)
    #: Query parameters per request (422 above it, before any is read).
    max_query_params: int = Field(default=100, ge=1, le=10_000)
    #: A request body that stops arriving for this long is answered 408 and its connection
    #: closed (the body limit bounds its size, this its pace).
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: An idle keep-alive connection is closed after this long (uvicorn's `timeout_keep_alive`).
    keep_alive_timeout: int = Field(default=5, ge=1, le=3600)
    #: Open connections plus running requests beyond which new requests get 503 (uvicorn's
    #: `limit_concurrency`); keep it below the process's descriptor limit.
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    #: An export whose client reads nothing for this long is stopped: its COPY ends, its
    #: database connection is freed and its HTTP connection closed.
    export_stall_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: An import batch is written once it holds this many bytes of text (or `DEFAULT_BATCH`
    #: rows, whichever comes first): two batches in flight bound an import's memory.
    import_batch_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: `POST /tutorials/import` requests running at once; one more gets 503 + Retry-After.
    max_concurrent_imports: int = Field(default=2, ge=1, le=1000)
    #: FastAPI's native OpenTelemetry (spans, metrics, logs) for a process where an
    #: OpenTelemetry SDK is configured. Off by default: the service has its own `/metrics` and
    #: request-id logs, and FastAPI's check for a configured provider alone costs ≈ 9 µs of
    #: CPU per request, about 8% of a `GET /tutorials/{id}` (benchmarks/RESULTS.md).
    opentelemetry: bool = False

    @field_validator("database_url", mode="before")
    @classmethod
    def _empty_url_means_embedded(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _comma_separated_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @field_validator("replica_urls", mode="before")
    @classmethod
    def _listed_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return split_urls(value)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated_hosts(cls, value: object) -> object:
        if value in ("", None):
            return None
        if isinstance(value, str):
            return [host.strip() for host in value.split(",") if host.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            wild = "*" in pattern[1:] or (pattern.startswith("*") and not pattern.startswith("*."))
            if wild and pattern != "*":
                raise ValueError(f"{pattern!r}: write a host, *.example.com, or *")
        return value

    def database(self) -> DatabaseUrl | None:
        """The configured database, or None when the embedded server is wanted.

        `ValueError` for a URL that is not a PostgreSQL one (its message hides the password).
        """
        if self.database_url is None:
            return None
        return parse_database_url(self.database_url.get_secret_value())

    def replicas(self) -> list[DatabaseUrl]:
        """The configured replica URLs, parsed (`ValueError`, without passwords, if one is not
        a PostgreSQL URL)."""
        found = []
        for number, url in enumerate(self.replica_urls, start=1):
            try:
                found.append(parse_database_url(url.get_secret_value()))
            except ValueError as exc:
                raise ValueError(f"replica URL {number}: {exc}") from None
        return found

    def sqlalchemy_url(self) -> URL | None:
        """The configured URL for SQLAlchemy's asyncpg dialect, or None (embedded server)."""
        database = self.database()
        return None if database is None else database.sqlalchemy_url()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use (not at import)."""
    return Settings()
