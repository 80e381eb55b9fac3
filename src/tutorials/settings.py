"""Configuration: one `Settings` object, read from the environment when asked for, never at import.

Every knob that changes how the service talks to PostgreSQL lives here, with the default we
measured or reasoned about beside it. `DATABASE_URL` is the only name without the `TUTORIALS_`
prefix, because that is the name every platform and tutorial uses.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

#: libpq query options we understand, and what asyncpg calls them.
_LIBPQ_OPTION_NAMES = {
    "host": "host",
    "port": "port",
    "target_session_attrs": "target_session_attrs",
    "sslmode": "ssl",
    "ssl": "ssl",
    "connect_timeout": "timeout",
    "timeout": "timeout",
    "command_timeout": "command_timeout",
    "prepared_statement_cache_size": "prepared_statement_cache_size",
    "statement_cache_size": "statement_cache_size",
}
_SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}


def normalize_database_url(raw: str) -> URL:
    """Turn any common PostgreSQL URL form into a SQLAlchemy URL for the asyncpg driver.

    Accepts `postgresql+asyncpg://`, `postgresql://` and `postgres://` (the Heroku form), and
    libpq-style query options (`?host=a:5432&host=b:5432`, `target_session_attrs`, `sslmode`),
    renaming the ones asyncpg spells differently. Anything else is refused with a message that
    never contains the password.
    """
    scheme = urlsplit(raw).scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported database URL scheme {scheme or '(none)'!r}: "
            "use postgresql://, postgres:// or postgresql+asyncpg://"
        )
    raw = _hosts_list_to_query(raw)
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        # `from None`: the parser's own message may quote the URL, password included.
        raise ValueError("malformed database URL") from None
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in url.query.items():
        target = _LIBPQ_OPTION_NAMES.get(key)
        if target is None:
            raise ValueError(f"unsupported database URL option {key!r}")
        if target == "ssl":
            mode = value if isinstance(value, str) else value[-1]
            if mode not in _SSL_MODES:
                raise ValueError(f"unsupported sslmode {mode!r}")
            value = mode
        query[target] = value
    return url.set(drivername="postgresql+asyncpg", query=query)


def _hosts_list_to_query(raw: str) -> str:
    """Rewrite libpq's `postgresql://u@h1:5432,h2:5433/db` into `?host=h1:5432&host=h2:5433`."""
    parts = urlsplit(raw)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if "," not in hostlist:
        return raw
    hosts = "&".join(f"host={host}" for host in hostlist.split(",") if host)
    query = f"{hosts}&{parts.query}" if parts.query else hosts
    return parts._replace(netloc=f"{userinfo}{at}", query=query).geturl()


class Settings(BaseSettings):
    """Everything configurable, from environment variables (prefix `TUTORIALS_`) or a `.env`."""

    model_config = SettingsConfigDict(
        env_prefix="TUTORIALS_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "TUTORIALS_DATABASE_URL")
    )
    #: Where the embedded PostgreSQL keeps its data when no DATABASE_URL is given.
    home: Path | None = None
    #: Bring the schema to the migrations' head when the library or service first connects
    #: (under an advisory lock, a no-op when already there). Turn off where a deploy step owns it.
    auto_migrate: bool = True

    # Pool: explicit sizes and a short wait, so exhaustion fails fast (503) instead of hanging.
    # A fixed pool by default: an overflow connection is closed when it comes back to a pool
    # holding `pool_size` idle ones, so load hovering around `pool_size` opens and closes
    # connections all the time. At 32 concurrent requests, 10 + 10 overflow cost 148 µs of
    # CPU per `GET /tutorials/{id}` against 74 µs with 20 + 0 (benchmarks/RESULTS.md).
    pool_size: int = Field(default=20, ge=1, le=500)
    max_overflow: int = Field(default=0, ge=0, le=500)
    pool_timeout: float = Field(default=2.0, gt=0, le=300)
    #: Below any proxy's idle timeout, so we never hand out a connection it has dropped.
    pool_recycle: int = Field(default=1800, ge=1)
    pool_pre_ping: bool = True
    connect_timeout: float = Field(default=5.0, gt=0, le=300)

    # Server-side limits, sent as startup parameters (or SET LOCAL behind PgBouncer).
    statement_timeout_ms: int = Field(default=15_000, ge=0)
    lock_timeout_ms: int = Field(default=5_000, ge=0)
    idle_in_transaction_timeout_ms: int = Field(default=60_000, ge=0)
    application_name: str = "tutorials"
    #: Behind PgBouncer in transaction mode: no prepared statement caches, no startup options.
    pgbouncer: bool = False

    #: Serialization failures and deadlocks are retried this many times, then answered 503.
    retry_attempts: int = Field(default=3, ge=1, le=20)
    #: Search ranks at most this many matching rows (0: every match). A query matching fewer
    #: is ranked exactly; one matching more gets its best among the first this many found,
    #: which keeps a common word at tens of ms instead of a second at 1,000,000 rows.
    search_candidates: int = Field(default=2_000, ge=0, le=10_000_000)

    # HTTP service.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    #: `POST /tutorials/import` streams (flat memory), so it takes far more, but not unbounded.
    max_import_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    retry_after_seconds: int = Field(default=1, ge=1)
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

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    def sqlalchemy_url(self) -> URL | None:
        """The configured URL normalised for asyncpg, or None when the embedded server is wanted."""
        if self.database_url is None:
            return None
        return normalize_database_url(self.database_url.get_secret_value())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use (not at import)."""
    return Settings()
