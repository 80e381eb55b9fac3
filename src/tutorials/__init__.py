"""tutorials: a catalog of tutorials in PostgreSQL, over SQLAlchemy 2 asyncio and asyncpg.

The library surface, as in the tutorial::

    from tutorials import Tutorial, get_session, save_tutorial, get_tutorial, delete_tutorial

    saved = await save_tutorial(Tutorial(name="Async SQLAlchemy"))
    found = await get_tutorial(saved.tutorial_id)
    gone = await delete_tutorial(saved.tutorial_id)
    async with get_session() as session:   # one transaction, committed at the end
        ...

With no DATABASE_URL the embedded PostgreSQL is started on first use.
"""

from tutorials.db.session import Database, close_default_database, get_session
from tutorials.errors import (
    Conflict,
    FieldError,
    InvalidInput,
    NotFound,
    StaleVersion,
    Timeout,
    TutorialsError,
    Unavailable,
)
from tutorials.library import (
    delete_tutorial,
    get_tutorial,
    list_tutorials,
    save_tutorial,
    search_tutorials,
    update_tutorial,
)
from tutorials.models import Base, Tutorial
from tutorials.repository import Page
from tutorials.schemas import TutorialCreate, TutorialPatch, TutorialRead
from tutorials.settings import Settings, get_settings
from tutorials.transfer import ImportSummary, export_rows, import_file, import_rows

__all__ = [
    "Base",
    "Conflict",
    "Database",
    "FieldError",
    "ImportSummary",
    "InvalidInput",
    "NotFound",
    "Page",
    "Settings",
    "StaleVersion",
    "Timeout",
    "Tutorial",
    "TutorialCreate",
    "TutorialPatch",
    "TutorialRead",
    "TutorialsError",
    "Unavailable",
    "close_default_database",
    "delete_tutorial",
    "export_rows",
    "get_session",
    "get_settings",
    "get_tutorial",
    "import_file",
    "import_rows",
    "list_tutorials",
    "save_tutorial",
    "search_tutorials",
    "update_tutorial",
]
