"""Read-your-writes: where in the primary's write-ahead log (WAL) a reader must be.

PostgreSQL numbers every byte of its WAL with a log sequence number (LSN, written `16/B374D848`).
A write commits at some LSN; a streaming replica has replayed up to `pg_last_wal_replay_lsn()`.
A replica that has replayed past a write's commit LSN shows that write, so a read that must see
it may go there; one that has not goes to the primary.

The position travels in a context variable, one `Position` per task (and the tasks it starts):

- a write on a `Database` with replicas records its commit LSN in the current position
  (`committed`), so later reads of the same task see the write (read-your-writes within a
  task, for the library, at no cost to anyone else);
- a caller that got an LSN elsewhere (another request, another process: the HTTP header
  `X-Commit-LSN`, a library record's `commit_lsn`) asks for it with `reading_after(lsn)` or the
  HTTP request header `X-Read-After-LSN`;
- `Database` routes a read to a replica only when that replica is known to have replayed past
  `required()`, else to the primary.

Without replicas nothing here is touched: no position is made, no LSN is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass

from tutorials.errors import FieldError, InvalidInput

__all__ = [
    "Position",
    "begin",
    "format_lsn",
    "last_commit_lsn",
    "note_commit",
    "parse_lsn",
    "reading_after",
    "required",
]

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
LSN_RULE = "must be a PostgreSQL WAL position (LSN) such as 0/16B3748, as a write returned it"


def parse_lsn(text: str, *, field: str = "lsn") -> int:
    """`16/B374D848` as the integer PostgreSQL compares (high 32 bits / low 32 bits);
    `InvalidInput` naming `field` for anything else."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(f"invalid input: {field}: {LSN_RULE}", [FieldError((field,), LSN_RULE)])
    return int(match.group(1), 16) << 32 | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """PostgreSQL's own spelling of an LSN (`pg_lsn` output): upper-case hex, no padding."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(slots=True)
class Position:
    """What the current task has written (`committed`) and was asked to read after."""

    read_after: int | None = None
    committed: int | None = None
    #: A write committed but its LSN could not be read (the connection died right after the
    #: commit): only the primary is sure to show it.
    unknown: bool = False


_POSITION: ContextVar[Position | None] = ContextVar("tutorials_wal_position", default=None)

#: Larger than any LSN: "only the primary will do".
PRIMARY_ONLY = 1 << 64


def required() -> int | None:
    """The LSN a replica must have replayed to serve a read of this task (None: any)."""
    position = _POSITION.get()
    if position is None:
        return None
    if position.unknown:
        return PRIMARY_ONLY
    after, committed = position.read_after, position.committed
    if after is None or (committed is not None and committed > after):
        return committed
    return after


def note_commit(lsn: int | None) -> None:
    """Record a commit of this task at `lsn` (None: committed, position unknown)."""
    position = _POSITION.get()
    if position is None:
        position = Position()
        _POSITION.set(position)  # for the rest of this task (a coroutine shares its context)
    if lsn is None:
        position.unknown = True
    elif position.committed is None or lsn > position.committed:
        position.committed = lsn


def begin(read_after: int | None = None) -> Position:
    """A fresh position for a new unit of consistency (an HTTP request), set in this context."""
    position = Position(read_after=read_after)
    _POSITION.set(position)
    return position


def reading_after(
    lsn: str | int | None, *, field: str = "after_lsn"
) -> AbstractContextManager[None]:
    """Within the block, reads see at least everything committed at `lsn` (a string as a write
    returned it, or its integer); None changes nothing, at next to no cost
    (a shared `nullcontext`: every library read without an LSN passes through here)."""
    return _NOTHING if lsn is None else _reading_after(lsn, field)


_NOTHING = nullcontext()


@contextmanager
def _reading_after(lsn: str | int, field: str) -> Iterator[None]:
    wanted = parse_lsn(lsn, field=field) if isinstance(lsn, str) else lsn
    current = _POSITION.get()
    position = Position(
        read_after=wanted if current is None else max(wanted, current.read_after or 0),
        committed=None if current is None else current.committed,
        unknown=current is not None and current.unknown,
    )
    token = _POSITION.set(position)
    try:
        yield
    finally:
        _POSITION.reset(token)
        # What the block wrote belongs to the task, not to the block.
        if position.unknown:
            note_commit(None)
        if position.committed is not None:
            note_commit(position.committed)


def last_commit_lsn() -> str | None:
    """The commit LSN of this task's latest write on a database with replicas (else None)."""
    position = _POSITION.get()
    if position is None or position.committed is None:
        return None
    return format_lsn(position.committed)
