"""Domain errors, and the one place that turns database failures into them.

Faces (HTTP, CLI, library) only ever see these classes; each face maps them to its own shape
(a status code, an exit code). Database errors are classified by SQLSTATE, never by message
text: messages change between PostgreSQL versions and locales, SQLSTATEs do not.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class FieldError:
    """One invalid input field: where it is (a path of names / indexes) and what is wrong."""

    loc: tuple[str | int, ...]
    msg: str


class TutorialsError(Exception):
    """Base of every error this package raises on purpose. `detail` is safe to show a user."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(TutorialsError):
    """The tutorial asked for does not exist."""


class Conflict(TutorialsError):
    """The write would break a uniqueness (or reference) rule, e.g. a `url` already taken."""


class InvalidInput(TutorialsError):
    """The input cannot be stored: caught by validation, or by a database constraint."""

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.errors: list[FieldError] = errors or []


class StaleVersion(TutorialsError):
    """Optimistic concurrency: the row changed since the caller read the version it holds."""

    def __init__(self, detail: str, current_version: int | None = None) -> None:
        super().__init__(detail)
        self.current_version = current_version


class Unavailable(TutorialsError):
    """The database cannot serve us right now; trying again later may succeed."""


class Timeout(Unavailable):
    """A statement ran past its deadline and the server cancelled it."""


class RetryableConflict(Unavailable):
    """A serialization failure or deadlock: the whole unit of work may simply be run again."""


@dataclass(frozen=True)
class _Rule:
    kind: type[TutorialsError]
    detail: str
    codes: frozenset[str] = field(default_factory=frozenset)


_RULES_BY_CODE: dict[str, _Rule] = {}
for _rule in (
    _Rule(Conflict, "conflicts with an existing tutorial", frozenset({"23505", "23503"})),
    _Rule(
        InvalidInput,
        "the database refused the value",
        # 22000 also comes from asyncpg itself, refusing to encode a value (an int beyond
        # bigint) before anything is sent.
        frozenset(
            {"23502", "23514", "22000", "22001", "22003", "22021", "22P02", "22007", "22008"}
        ),
    ),
    _Rule(RetryableConflict, "concurrent update conflict", frozenset({"40001", "40P01"})),
    _Rule(Timeout, "the database took too long to answer", frozenset({"57014", "55P03"})),
    _Rule(
        Unavailable,
        "the database is unavailable",
        frozenset({"57P01", "57P02", "57P03", "25006", "53300", "53000", "55000"}),
    ),
    # Misconfiguration seen from the client: nothing the request can fix, so 503 / exit 5.
    _Rule(Unavailable, "cannot authenticate to the database", frozenset({"28P01", "28000"})),
    _Rule(Unavailable, "the configured database does not exist", frozenset({"3D000"})),
):
    for _code in _rule.codes:
        _RULES_BY_CODE[_code] = _rule

_CONSTRAINT_DETAILS = {
    "uq_tutorials_url": "a tutorial with this url already exists",
    "ck_tutorials_name_not_blank": "name must not be blank",
    "ck_tutorials_url_http": "url must be an http or https URL",
}


_CONFIGURATION_CODES = frozenset({"28P01", "28000", "3D000"})


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: SQLAlchemy's `.orig`, then the driver's `__cause__`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def _first_str(error: BaseException, attribute: str) -> str | None:
    for link in _chain(error):
        value = getattr(link, attribute, None)
        if isinstance(value, str):
            return value
    return None


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE carried by a driver error, however SQLAlchemy wrapped it."""
    return _first_str(error, "sqlstate")


def _server_message(error: BaseException) -> str | None:
    """The first line of the server's own message (asyncpg's `PostgresError.message`)."""
    message = _first_str(error, "message")
    return message.splitlines()[0] if message else None


def _sqlalchemy_exc() -> ModuleType | None:
    """SQLAlchemy's `exc` module if this process imported it, else None.

    Looked up, not imported: SQLAlchemy costs a command line start a tenth of a second, and a
    process that never imported it (the service's asyncpg path) cannot hold one of its errors.
    """
    return sys.modules.get("sqlalchemy.exc")


def classify(error: BaseException) -> TutorialsError | None:
    """Map a database or connection failure to a domain error; None means "a bug: let it rise".

    Connection failures reach us in several costumes: SQLAlchemy's wrapped `DBAPIError` with a
    `08xxx` SQLSTATE or `connection_invalidated`, the pool's own `TimeoutError`, and bare
    `OSError` (connection refused) or `TimeoutError` on connect (an `OSError` too, and
    `asyncio.TimeoutError` is the same class), which SQLAlchemy does not wrap at all.
    """
    if isinstance(error, TutorialsError):
        return error
    sa_exc = _sqlalchemy_exc()
    if sa_exc is not None and isinstance(error, sa_exc.TimeoutError):
        return Unavailable("no database connection became free in time")
    code = sqlstate_of(error)
    if code is not None:
        rule = _RULES_BY_CODE.get(code)
        if rule is None and code.startswith("08"):
            return Unavailable("lost the connection to the database")
        if rule is None:
            return None
        detail = _CONSTRAINT_DETAILS.get(_first_str(error, "constraint_name") or "", rule.detail)
        if code in _CONFIGURATION_CODES:
            # The server's words name the database or role from the configured URL (never
            # its password): the one thing an operator needs to fix it.
            detail = f"cannot open the database: {_server_message(error) or rule.detail}"
        return rule.kind(detail)
    if sa_exc is not None:
        if isinstance(error, sa_exc.DBAPIError) and getattr(error, "connection_invalidated", False):
            return Unavailable("lost the connection to the database")
        if isinstance(error, sa_exc.InterfaceError | sa_exc.DisconnectionError):
            return Unavailable("lost the connection to the database")
    if isinstance(error, OSError):
        return Unavailable("cannot reach the database")
    if sa_exc is not None and isinstance(error, sa_exc.DBAPIError):
        orig = getattr(error, "orig", None)
        cause = orig.__cause__ if orig is not None else None
        if isinstance(cause, OSError):
            return Unavailable("cannot reach the database")
    return None
