"""Search kept by a trigger on databases that ran the first 0002

The first version of revision 0002 made `search` a stored generated column; the current one
makes it a plain column kept by the `tutorials_search` trigger (a generated column cannot be
added to a live table without rewriting it, nor its document changed later without another
rewrite). This revision brings databases that ran the first version to the same schema:
`DROP EXPRESSION` keeps the stored values (the same document the trigger computes) and is
metadata only, and the trigger is created in the same short transaction, so no write goes
without its document. On a database that ran the current 0002 there is nothing to do.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 14:00:00

"""

from collections.abc import Sequence

from tutorials.db import online

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Why the findings of `squawk` on this revision's SQL are accepted (see `dev lint-migrations`).
squawk_accepts = {
    "ban-drop-generated-expression": "the point of the revision: `search` keeps its values and "
    "its trigger, created in the same transaction, keeps them right; no client writes it",
}

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
#: True once `search` is a plain column with its trigger (the current 0002 made it so).
KEPT_BY_TRIGGER = (
    "(SELECT attgenerated = '' FROM pg_attribute "
    "WHERE attrelid = 'tutorials'::regclass AND attname = 'search') "
    "AND EXISTS (SELECT FROM pg_trigger "
    "WHERE tgrelid = 'tutorials'::regclass AND tgname = 'tutorials_search')"
)


def upgrade() -> None:
    with online.outside_transaction():
        if online.already(KEPT_BY_TRIGGER):
            return
        online.ddl(SEARCH_DOCUMENT_FUNCTION, SEARCH_TRIGGER_FUNCTION)
        online.ddl(
            "ALTER TABLE tutorials ALTER COLUMN search DROP EXPRESSION IF EXISTS",
            "DROP TRIGGER IF EXISTS tutorials_search ON tutorials",
            SEARCH_TRIGGER,
        )


def downgrade() -> None:
    # Nothing: revision 0002 now means "search kept by the trigger" (a generated column again
    # would rewrite the table), and 0002's downgrade removes it either way.
    pass
