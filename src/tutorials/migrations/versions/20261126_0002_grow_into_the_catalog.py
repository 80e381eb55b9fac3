"""Grow tutorials into the catalog

- `tutorial_id` becomes a bigint identity (it never runs out), continuing after existing ids;
- `url` (unique when present: the natural key of idempotent imports), `description`, `tags`
  (GIN-indexed for containment queries), `created_at` / `updated_at` set by the database, and
  `version` for optimistic concurrency;
- checks: a name that is not blank, an http(s) url, a positive version;
- `search`, a full-text document over name, description and tags, kept by a trigger and
  GIN-indexed. `array_to_string` is only STABLE, so a tiny IMMUTABLE wrapper feeds the tags
  to it.

Written to run under a live service (issue 18; the patterns: docs/MIGRATIONS.md), every step
short or lock-friendly, so a table of any size keeps answering reads and writes:

1. functions; new columns (nullable, or with a constant default: metadata only); the `search`
   trigger; for the id, a `tutorial_id_new bigint` kept equal to `tutorial_id` by a trigger;
2. a batched backfill of `search` and `tutorial_id_new` for the rows already there;
3. indexes built CONCURRENTLY; checks added NOT VALID, then validated;
4. the id swap, in one short transaction: `tutorial_id_new` (NOT NULL proved by a validated
   check, so no scan) becomes `tutorial_id`, primary key on its ready unique index, identity
   continuing after the largest id; the old int column is dropped (metadata only).

The first version of this revision did all of it in one transaction, with a type change and a
stored generated `search` column that rewrite the table under ACCESS EXCLUSIVE: 23.6 s of a
stopped table at a million rows. Databases that ran it have `search` GENERATED; revision 0003
turns that into this revision's trigger, so both end at the same schema. Every step here is
idempotent, so a run that died half-way (the revision is stamped only at its end) is resumed by
running it again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 22:45:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tutorials.db import online

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Why the findings of `squawk` on this revision's SQL are accepted (see `dev lint-migrations`).
squawk_accepts = {
    "prefer-bigint-over-int": "`version` is an int counter of edits, part of the API's types",
    "ban-drop-column": "the swap drops the old int `tutorial_id` after its bigint copy took its "
    "place in the same transaction; no query sees the table without a `tutorial_id`",
    "renaming-column": "`tutorial_id_new` becomes `tutorial_id` in the swap's transaction, "
    "for old and new code alike",
    "ban-alter-identity": "identity is added to the bigint column in the swap, where it replaces "
    "the old column's serial default in the same transaction",
    "ban-drop-constraint": "the swap drops `pk_tutorials` and adds it back on the bigint column "
    "in the same transaction, and drops the temporary NOT NULL check it no longer needs",
    "ban-drop-function": "`tutorials_id_sync`, the swap's temporary trigger function",
}

TAGS_TEXT_FUNCTION = (
    "CREATE OR REPLACE FUNCTION tutorials_tags_text(tags text[]) RETURNS text "
    "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT array_to_string(tags, ' ') $$"
)
SEARCH_DOCUMENT_FUNCTION = (
    "CREATE OR REPLACE FUNCTION tutorials_search_document(name text, description text, "
    "tags text[]) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT "
    "setweight(to_tsvector('english'::regconfig, name), 'A') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(description, '')), 'B') || "
    "setweight(to_tsvector('english'::regconfig, tutorials_tags_text(tags)), 'C') $$"
)
SEARCH_TRIGGER_FUNCTION = (
    "CREATE OR REPLACE FUNCTION tutorials_search_update() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN NEW.search := tutorials_search_document(NEW.name, NEW.description, NEW.tags); "
    "RETURN NEW; END $$"
)
SEARCH_TRIGGER = (
    "CREATE TRIGGER tutorials_search BEFORE INSERT OR UPDATE OF name, description, tags, search "
    "ON tutorials FOR EACH ROW EXECUTE FUNCTION tutorials_search_update()"
)
ID_SYNC_FUNCTION = (
    "CREATE OR REPLACE FUNCTION tutorials_id_sync() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN NEW.tutorial_id_new := NEW.tutorial_id; RETURN NEW; END $$"
)

ID_IS_BIGINT = (
    "(SELECT atttypid = 'bigint'::regtype FROM pg_attribute "
    "WHERE attrelid = 'tutorials'::regclass AND attname = 'tutorial_id')"
)

CHECKS = {
    "ck_tutorials_name_not_blank": "btrim(name) <> ''",
    "ck_tutorials_url_http": "url ~ '^https?://'",
    "ck_tutorials_version_positive": "version >= 1",
}


def upgrade() -> None:
    with online.outside_transaction():
        id_done = online.already(ID_IS_BIGINT)
        online.ddl(TAGS_TEXT_FUNCTION, SEARCH_DOCUMENT_FUNCTION, SEARCH_TRIGGER_FUNCTION)
        online.ddl(
            "ALTER TABLE tutorials "
            "ADD COLUMN IF NOT EXISTS url text, "
            "ADD COLUMN IF NOT EXISTS description text, "
            "ADD COLUMN IF NOT EXISTS tags text[] DEFAULT '{}'::text[] NOT NULL, "
            "ADD COLUMN IF NOT EXISTS created_at timestamptz DEFAULT now() NOT NULL, "
            "ADD COLUMN IF NOT EXISTS updated_at timestamptz DEFAULT now() NOT NULL, "
            "ADD COLUMN IF NOT EXISTS version integer DEFAULT 1 NOT NULL, "
            "ADD COLUMN IF NOT EXISTS search tsvector",
            "DROP TRIGGER IF EXISTS tutorials_search ON tutorials",
            SEARCH_TRIGGER,
        )
        if not id_done:
            online.ddl(
                ID_SYNC_FUNCTION,
                "ALTER TABLE tutorials ADD COLUMN IF NOT EXISTS tutorial_id_new bigint",
                "DROP TRIGGER IF EXISTS tutorials_id_sync ON tutorials",
                "CREATE TRIGGER tutorials_id_sync BEFORE INSERT OR UPDATE ON tutorials "
                "FOR EACH ROW EXECUTE FUNCTION tutorials_id_sync()",
            )
        # `search = NULL` names the column, so its trigger fires and computes it.
        online.backfill(
            "tutorials",
            key="tutorial_id",
            assignments="search = NULL"
            if id_done
            else "search = NULL, tutorial_id_new = tutorial_id",
            pending="search IS NULL" if id_done else "search IS NULL OR tutorial_id_new IS NULL",
        )

        online.add_unique("uq_tutorials_url", "tutorials", "url")
        online.create_index("ix_tutorials_tags", "tutorials", "tags", using="gin")
        online.create_index("ix_tutorials_search", "tutorials", "search", using="gin")
        for name, condition in CHECKS.items():
            online.add_check(name, "tutorials", condition)

        if not id_done:
            online.create_index(
                "tutorials_tutorial_id_new_key", "tutorials", "tutorial_id_new", unique=True
            )
            online.add_check(
                "ck_tutorials_tutorial_id_new_not_null", "tutorials", "tutorial_id_new IS NOT NULL"
            )
            online.ddl(
                # NOT NULL is proved by the validated check: no scan under this lock.
                "ALTER TABLE tutorials ALTER COLUMN tutorial_id_new SET NOT NULL",
                "ALTER TABLE tutorials DROP CONSTRAINT pk_tutorials",
                "DROP TRIGGER tutorials_id_sync ON tutorials",
                "ALTER TABLE tutorials DROP COLUMN tutorial_id",  # and its serial sequence
                "ALTER TABLE tutorials RENAME COLUMN tutorial_id_new TO tutorial_id",
                "ALTER TABLE tutorials ADD CONSTRAINT pk_tutorials "
                "PRIMARY KEY USING INDEX tutorials_tutorial_id_new_key",
                "ALTER TABLE tutorials ALTER COLUMN tutorial_id "
                "ADD GENERATED BY DEFAULT AS IDENTITY",
                "SELECT setval(pg_get_serial_sequence('tutorials', 'tutorial_id'), "
                "coalesce(max(tutorial_id), 0) + 1, false) FROM tutorials",
                "ALTER TABLE tutorials DROP CONSTRAINT ck_tutorials_tutorial_id_new_not_null",
                "DROP FUNCTION tutorials_id_sync()",
            )


def downgrade() -> None:
    # Back to the tutorial's table. Not online (a type change rewrites the table): a downgrade
    # is for development and for a failed release, and runs with the service stopped.
    op.execute("DROP TRIGGER IF EXISTS tutorials_search ON tutorials")
    op.execute("DROP TRIGGER IF EXISTS tutorials_id_sync ON tutorials")
    op.execute("DROP INDEX IF EXISTS ix_tutorials_search")
    op.execute("DROP INDEX IF EXISTS ix_tutorials_tags")
    op.execute("DROP INDEX IF EXISTS tutorials_tutorial_id_new_key")
    for name in (*reversed(CHECKS), "ck_tutorials_tutorial_id_new_not_null"):
        op.execute(f"ALTER TABLE tutorials DROP CONSTRAINT IF EXISTS {name}")
    op.execute("ALTER TABLE tutorials DROP CONSTRAINT IF EXISTS uq_tutorials_url")
    for column in (
        "search",
        "version",
        "updated_at",
        "created_at",
        "tags",
        "description",
        "url",
        "tutorial_id_new",
    ):
        op.execute(f"ALTER TABLE tutorials DROP COLUMN IF EXISTS {column}")
    for function in (
        "tutorials_search_update()",
        "tutorials_search_document(text, text, text[])",
        "tutorials_tags_text(text[])",
        "tutorials_id_sync()",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")

    op.execute("ALTER TABLE tutorials ALTER COLUMN tutorial_id DROP IDENTITY IF EXISTS")
    op.alter_column("tutorials", "tutorial_id", type_=sa.Integer(), existing_type=sa.BigInteger())
    op.execute("CREATE SEQUENCE tutorials_tutorial_id_seq OWNED BY tutorials.tutorial_id")
    op.execute(
        "ALTER TABLE tutorials ALTER COLUMN tutorial_id "
        "SET DEFAULT nextval('tutorials_tutorial_id_seq')"
    )
    op.execute(
        "SELECT setval('tutorials_tutorial_id_seq', coalesce(max(tutorial_id), 0) + 1, false) "
        "FROM tutorials"
    )
