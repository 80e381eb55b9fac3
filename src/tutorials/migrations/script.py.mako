"""${message}

What this changes, and why a live service can take it (docs/MIGRATIONS.md): which steps
take which locks, for how long; what old code (still running during the deploy) sees.

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
from tutorials.db import online  # noqa: F401 - the steps a live table can take

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}

#: squawk findings on this revision's SQL that are accepted, rule -> why; `./dev
#: lint-migrations` (CI) fails on any other finding, and on an accepted rule no longer found.
squawk_accepts: dict[str, str] = {}


def upgrade() -> None:
    # Autogenerate's operations (below, if any) run in this revision's one transaction and
    # hold their locks to its end: fine for a new or small table, not for a live one. Write a
    # change to a live table as steps, each short or lock-friendly, all idempotent (a run that
    # died is finished by running it again):
    #
    #     with online.outside_transaction():
    #         online.ddl("ALTER TABLE t ADD COLUMN IF NOT EXISTS c text")     # metadata only
    #         online.backfill("t", key="id", assignments="c = ...", pending="c IS NULL")
    #         online.create_index("ix_t_c", "t", "c")                         # CONCURRENTLY
    #         online.add_check("ck_t_c", "t", "c <> ''")                      # NOT VALID, VALIDATE
    #
    # A change old code cannot survive (rename, drop, new NOT NULL without default) is split
    # over releases: expand (add, keep both in step), migrate (code moves, backfill), contract.
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
