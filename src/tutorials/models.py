"""The schema as SQLAlchemy models: `Base` (with a naming convention) and `Tutorial`.

Alembic's autogenerate compares these models with the database, so every index and constraint
the migrations create is declared here too, under the name the naming convention gives it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Constraint names that are stable and predictable, so migrations can refer to them and the
#: error classifier can recognise them (see `errors._CONSTRAINT_DETAILS`).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Text search configuration used by the generated column and by queries: they must agree.
SEARCH_CONFIG = "english"

#: `array_to_string` is only STABLE, and generated columns need IMMUTABLE functions: the
#: migration that adds the search column creates this thin immutable wrapper.
TAGS_TEXT_FUNCTION = "tutorials_tags_text"

SEARCH_DOCUMENT = (
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, name), 'A') || "
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(description, '')), 'B') || "
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, {TAGS_TEXT_FUNCTION}(tags)), 'C')"
)


class Base(DeclarativeBase):
    """Declarative base whose metadata names constraints by `NAMING_CONVENTION`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tutorial(Base):
    """One tutorial in the catalog.

    `tutorial_id` is a bigint identity so it never runs out. `url`, when present, is unique: it
    is the natural key that makes imports idempotent. `version` starts at 1 and grows by one on
    every update (optimistic concurrency). `search` is a generated full-text document; it is
    deferred, so ordinary loads never fetch it.
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
        TSVECTOR, Computed(SEARCH_DOCUMENT, persisted=True), deferred=True
    )

    __table_args__ = (
        CheckConstraint("btrim(name) <> ''", name="name_not_blank"),
        CheckConstraint("url ~ '^https?://'", name="url_http"),
        CheckConstraint("version >= 1", name="version_positive"),
        Index("ix_tutorials_tags", "tags", postgresql_using="gin"),
        Index("ix_tutorials_search", "search", postgresql_using="gin"),
    )

    def __repr__(self) -> str:
        return f"Tutorial(tutorial_id={self.tutorial_id!r}, name={self.name!r})"
