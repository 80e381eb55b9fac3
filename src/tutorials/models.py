"""The schema as SQLAlchemy models: `Base` (with a naming convention) and `Tutorial`.

Alembic's autogenerate compares these models with the database, so every index and constraint
the migrations create is declared here too, under the name the naming convention gives it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Connection,
    DateTime,
    FetchedValue,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    event,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tutorials.fulltext import SEARCH_CONFIG

#: Constraint names that are stable and predictable, so migrations can refer to them and the
#: error classifier can recognise them (see `errors._CONSTRAINT_DETAILS`).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: `array_to_string` is only STABLE, and the document function must be IMMUTABLE (so that it
#: could back an index or a generated column): a thin immutable wrapper.
TAGS_TEXT_FUNCTION = "tutorials_tags_text"

#: The weighted document `search` holds: name A, description B, tags C.
SEARCH_DOCUMENT = (
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, name), 'A') || "
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(description, '')), 'B') || "
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, {TAGS_TEXT_FUNCTION}(tags)), 'C')"
)

#: `search` is a plain column kept by a trigger, not a generated column: a generated column
#: cannot be added to (or changed on) a live table without rewriting it under an ACCESS
#: EXCLUSIVE lock (docs/MIGRATIONS.md). Autogenerate does not see functions and triggers, so
#: they are declared here as the DDL the migrations run (`metadata.create_all` runs it too),
#: and tests/db/test_migrate.py compares them with a migrated database.
SEARCH_FUNCTIONS_DDL = (
    f"CREATE OR REPLACE FUNCTION {TAGS_TEXT_FUNCTION}(tags text[]) RETURNS text "
    "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT array_to_string(tags, ' ') $$",
    "CREATE OR REPLACE FUNCTION tutorials_search_document(name text, description text, "
    "tags text[]) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT "
    f"{SEARCH_DOCUMENT} $$",
    "CREATE OR REPLACE FUNCTION tutorials_search_update() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN NEW.search := tutorials_search_document(NEW.name, NEW.description, NEW.tags); "
    "RETURN NEW; END $$",
)
#: Fires when a statement names a column of the document (or `search` itself, which it
#: overwrites: the column holds the document and nothing else).
SEARCH_TRIGGER_DDL = (
    "CREATE TRIGGER tutorials_search BEFORE INSERT OR UPDATE OF name, description, tags, search "
    "ON tutorials FOR EACH ROW EXECUTE FUNCTION tutorials_search_update()"
)


class Base(DeclarativeBase):
    """Declarative base whose metadata names constraints by `NAMING_CONVENTION`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tutorial(Base):
    """One tutorial in the catalog.

    `tutorial_id` is a bigint identity so it never runs out. `url`, when present, is unique: it
    is the natural key that makes imports idempotent. `version` starts at 1 and grows by one on
    every update (optimistic concurrency). `search` is the full-text document, written by the
    database's trigger only (`FetchedValue`: never sent in an INSERT or UPDATE); it is deferred,
    so ordinary loads never fetch it.
    """

    __tablename__ = "tutorials"
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 - SQLAlchemy's declared form

    tutorial_id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    url: Mapped[str | None] = mapped_column(Text, unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("'{}'::text[]"), default=list
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    search: Mapped[str | None] = mapped_column(
        TSVECTOR, server_default=FetchedValue(), server_onupdate=FetchedValue(), deferred=True
    )

    __table_args__ = (
        CheckConstraint("btrim(name) <> ''", name="name_not_blank"),
        CheckConstraint("url ~ '^https?://'", name="url_http"),
        CheckConstraint("version >= 1", name="version_positive"),
        Index("ix_tutorials_tags", "tags", postgresql_using="gin"),
        Index("ix_tutorials_search", "search", postgresql_using="gin"),
        # Browsing by name and by last update (`repository.ordered_page`; revision 0004).
        Index("ix_tutorials_name_key", text("left(lower(name), 64)"), "tutorial_id"),
        Index("ix_tutorials_updated_at", "updated_at", "tutorial_id"),
    )

    def __repr__(self) -> str:
        return f"Tutorial(tutorial_id={self.tutorial_id!r}, name={self.name!r})"


def _create_search_trigger(target: object, connection: Connection, **kw: object) -> None:
    """`metadata.create_all`: the functions and trigger that keep `search`, after the table."""
    for statement in (*SEARCH_FUNCTIONS_DDL, SEARCH_TRIGGER_DDL):
        connection.execute(text(statement))


event.listen(Tutorial.__table__, "after_create", _create_search_trigger)
