"""Schema changes a live service can take: the steps every migration of this project is made of.

A migration runs while the service answers. What hurts a live table is not the work a
migration does but the locks it holds while doing it: an `ALTER TABLE` waiting for an
ACCESS EXCLUSIVE lock queues every later read and write of the table behind it, and one that
rewrites or scans the table holds that lock for as long as the rewrite takes. So a revision is
written as a sequence of small steps, each its own transaction, none holding a lock that
blocks reads or writes for more than a fraction of a second:

- `ddl`: metadata-only DDL in one short transaction under `SET LOCAL lock_timeout`
  (`LOCK_TIMEOUT`) and a `statement_timeout` that refuses a step that turns out to rewrite or
  scan; a lock timeout or deadlock rolls the step back, waits (growing, jittered) and retries.
- `create_index` / `drop_index`: `CONCURRENTLY`, outside any transaction; an INVALID index a
  failed build left behind is dropped and built again.
- `add_check` / `add_unique`: `NOT VALID` then `VALIDATE` (a scan under SHARE UPDATE EXCLUSIVE,
  which blocks neither reads nor writes); a unique constraint is put on an index built
  concurrently (`UNIQUE USING INDEX`).
- `backfill`: an `UPDATE` in batches by key range, each batch its own transaction, so row locks
  are held for one batch and nothing waits long.

The whole upgrade of a revision runs inside `outside_transaction()` (Alembic's
`autocommit_block`: env.py runs each revision in a transaction of its own and holds the
migration advisory lock for the whole run, on the session, not the transaction). A revision is
stamped only after its last step, so a run that dies half-way runs the revision again from the
top: every step is idempotent (IF [NOT] EXISTS, `skip_if`, a backfill's "pending" condition),
and `already()` lets a revision skip what is done.

Offline (`alembic upgrade --sql`, `tutorials db upgrade --sql`) the same statements are
written out: `BEGIN; SET LOCAL lock_timeout ...; ...; COMMIT;` for each `ddl` step, the
concurrent builds as they are, and a backfill as a `DO` block that commits after each batch.
What offline SQL cannot do is look at the database: no retries, no skipping, no cleaning up of
invalid indexes (see docs/MIGRATIONS.md).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import op
from sqlalchemy import Connection, text

from tutorials.errors import sqlstate_of

#: How long a step waits for its lock before giving way to the queries queued behind it.
LOCK_TIMEOUT = "300ms"
#: A metadata-only step takes milliseconds; one that runs longer is rewriting or scanning the
#: table under its lock, and is cancelled rather than left to block everyone.
DDL_STATEMENT_TIMEOUT = "2s"
#: VALIDATE's lock blocks neither reads nor writes (only other DDL and vacuum): it may wait.
VALIDATE_LOCK_TIMEOUT = "10s"
#: Attempts of a step before the migration gives up (its work so far stays; run it again).
ATTEMPTS = 40
#: First pause between attempts, in seconds; it doubles up to `MAX_PAUSE`, with jitter.
FIRST_PAUSE = 0.05
MAX_PAUSE = 3.0
#: Rows per backfill batch: one batch's row locks are held for well under a second.
BATCH_ROWS = 5000

#: lock_not_available, deadlock_detected, serialization_failure: worth another attempt.
RETRIED_SQLSTATES = frozenset({"55P03", "40P01", "40001"})


class StepFailed(RuntimeError):
    """A step could not get its locks in `ATTEMPTS` tries (the migration stops; rerun it)."""


def offline() -> bool:
    """True when Alembic writes SQL (`--sql`) instead of running it."""
    return bool(op.get_context().as_sql)


def _connection() -> Connection:
    return op.get_bind()


def scalar(sql: str, **params: Any) -> object:
    """One value from the database (online only)."""
    return _connection().execute(text(sql), params).scalar()


def already(condition: str, **params: Any) -> bool:
    """Whether the SQL boolean `condition` holds now; always False offline (write every step)."""
    if offline():
        return False
    return bool(scalar(f"SELECT {condition}", **params))


@contextmanager
def outside_transaction() -> Iterator[None]:
    """Run the block outside Alembic's transaction, so each step commits on its own."""
    with op.get_context().autocommit_block():
        yield


def _execute(statement: str) -> None:
    op.execute(statement)


def _retrying(what: str, attempt_once: Any) -> None:
    """Call `attempt_once()` until it succeeds; retry only lock timeouts and deadlocks."""
    pause = FIRST_PAUSE
    for attempt in range(1, ATTEMPTS + 1):
        try:
            attempt_once()
            return
        except Exception as exc:
            if sqlstate_of(exc) not in RETRIED_SQLSTATES:
                raise
            if attempt == ATTEMPTS:
                raise StepFailed(
                    f"{what}: no lock after {ATTEMPTS} attempts of {LOCK_TIMEOUT} "
                    f"(a long transaction holds the table?); nothing of this step was applied"
                ) from exc
        # Waited in the server, not with time.sleep: an auto-migrating service runs this on its
        # event loop's thread (through SQLAlchemy's greenlet), which must not be blocked.
        scalar("SELECT pg_sleep(:seconds)", seconds=pause * random.uniform(0.5, 1.5))
        pause = min(MAX_PAUSE, pause * 2)


def ddl(
    *statements: str,
    skip_if: str | None = None,
    lock_timeout: str = LOCK_TIMEOUT,
    statement_timeout: str = DDL_STATEMENT_TIMEOUT,
) -> None:
    """`statements` as one short transaction under a lock timeout, retried on lock failures.

    Only for steps that take their locks for milliseconds: metadata-only DDL (adding a nullable
    column or one with a constant default, NOT VALID constraints, renames, triggers,
    functions). `skip_if` (a SQL boolean) skips the step when it is already done (online).
    """
    if skip_if is not None and already(skip_if):
        return
    _transaction(statements, lock_timeout, statement_timeout)


def _transaction(statements: tuple[str, ...], lock_timeout: str, statement_timeout: str) -> None:
    preamble = [
        "BEGIN",
        f"SET LOCAL lock_timeout = '{lock_timeout}'",
        f"SET LOCAL statement_timeout = '{statement_timeout}'",
    ]
    if offline():
        for statement in [*preamble, *statements, "COMMIT"]:
            _execute(statement)
        return

    def attempt() -> None:
        try:
            for statement in [*preamble, *statements]:
                _execute(statement)
            _execute("COMMIT")
        except BaseException:
            _execute("ROLLBACK")
            raise

    _retrying(statements[0].split("\n", 1)[0][:80], attempt)


def _long_running() -> None:
    """Settings for a step that may run for minutes without blocking reads or writes."""
    _execute("SET statement_timeout = 0")
    _execute("SET lock_timeout = 0")


def _index_validity(name: str) -> bool | None:
    """True: a valid index `name` exists; False: an invalid one; None: none (or offline)."""
    if offline():
        return None
    value = scalar(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:name)", name=name
    )
    return None if value is None else bool(value)


def create_index(
    name: str, table: str, columns: str, *, unique: bool = False, using: str | None = None
) -> None:
    """`CREATE [UNIQUE] INDEX CONCURRENTLY`; reads and writes go on while it builds."""
    validity = _index_validity(name)
    if validity is True:
        return
    if validity is False:  # a build that failed or was cancelled left it INVALID
        drop_index(name)
    _long_running()
    method = f" USING {using}" if using else ""
    kind = "UNIQUE INDEX" if unique else "INDEX"
    _execute(f"CREATE {kind} CONCURRENTLY IF NOT EXISTS {name} ON {table}{method} ({columns})")


def drop_index(name: str) -> None:
    """`DROP INDEX CONCURRENTLY IF EXISTS`."""
    _long_running()
    _execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def _constraint_exists(table: str, name: str) -> str:
    return (
        "EXISTS (SELECT FROM pg_constraint "
        f"WHERE conrelid = to_regclass('{table}') AND conname = '{name}')"
    )


def add_check(name: str, table: str, condition: str) -> None:
    """A CHECK constraint added NOT VALID (no scan), then validated without blocking writes."""
    ddl(
        f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID",
        skip_if=_constraint_exists(table, name),
    )
    # A scan under SHARE UPDATE EXCLUSIVE: reads and writes go on, and so may the wait for it.
    _transaction(
        (f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}",),
        lock_timeout=VALIDATE_LOCK_TIMEOUT,
        statement_timeout="0",
    )


def add_unique(name: str, table: str, column: str) -> None:
    """A UNIQUE constraint on an index built concurrently (the index takes the name)."""
    create_index(name, table, column, unique=True)
    ddl(
        f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}",
        skip_if=_constraint_exists(table, name),
    )


def backfill(
    table: str, *, key: str, assignments: str, pending: str, batch_rows: int = BATCH_ROWS
) -> int:
    """`UPDATE table SET assignments WHERE pending`, in batches of `batch_rows` keys.

    Each batch is its own transaction, so row locks last one batch. Run it after whatever keeps
    new rows right (a default, a trigger) is in place: rows written later need no backfill,
    so the key range is read once, at the start. Returns the rows updated (0 offline).
    """

    def update(low: str) -> str:
        return (
            f"UPDATE {table} SET {assignments} "
            f"WHERE {key} >= {low} AND {key} < {low} + {batch_rows} AND ({pending})"
        )

    _long_running()
    if offline():
        _execute(
            "DO $$\nDECLARE lo bigint; hi bigint;\nBEGIN\n"
            f"  SELECT min({key}), max({key}) INTO lo, hi FROM {table};\n"
            "  WHILE lo <= hi LOOP\n"
            f"    {update('lo')};\n"
            "    COMMIT;\n"
            f"    lo := lo + {batch_rows};\n"
            "  END LOOP;\nEND $$"
        )
        return 0
    bounds = _connection().execute(text(f"SELECT min({key}), max({key}) FROM {table}")).one()
    low, high = bounds
    updated = 0
    if low is None:
        return 0
    for start in range(int(low), int(high) + 1, batch_rows):
        statement = text(update(":lo"))

        def attempt(statement: Any = statement, start: int = start) -> None:
            nonlocal updated
            updated += _connection().execute(statement, {"lo": start}).rowcount

        _retrying(f"backfill of {table}", attempt)
    return updated
