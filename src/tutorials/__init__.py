"""tutorials: a catalog of tutorials in PostgreSQL, over SQLAlchemy 2 asyncio and asyncpg.

The library surface, as in the tutorial::

    from tutorials import Tutorial, get_session, save_tutorial, get_tutorial, delete_tutorial

    saved = await save_tutorial(Tutorial(name="Async SQLAlchemy"))
    found = await get_tutorial(saved.tutorial_id)
    gone = await delete_tutorial(saved.tutorial_id)
    async with get_session() as session:   # one transaction, committed at the end
        ...
    await close_default_database()

With no DATABASE_URL the embedded PostgreSQL is used: started on first use, except as root,
where it must have been started by `tutorials db start` (or `tutorials serve`).

The names below are imported on first use (PEP 562), so `import tutorials` costs nothing
until one is needed: the command line imports only what its command uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: Each public name, and the module it lives in.
_EXPORTS = {
    "Base": "tutorials.models",
    "Tutorial": "tutorials.models",
    "Conflict": "tutorials.errors",
    "FieldError": "tutorials.errors",
    "InvalidInput": "tutorials.errors",
    "NotFound": "tutorials.errors",
    "StaleVersion": "tutorials.errors",
    "Timeout": "tutorials.errors",
    "TutorialsError": "tutorials.errors",
    "Unavailable": "tutorials.errors",
    "Database": "tutorials.db.database",
    "close_default_database": "tutorials.db.session",
    "get_session": "tutorials.db.session",
    "delete_tutorial": "tutorials.library",
    "delete_tutorials": "tutorials.library",
    "get_tutorial": "tutorials.library",
    "last_commit_lsn": "tutorials.library",
    "list_tutorials": "tutorials.library",
    "save_tutorial": "tutorials.library",
    "search_tutorials": "tutorials.library",
    "update_tutorial": "tutorials.library",
    "Page": "tutorials.schemas",
    "TutorialCreate": "tutorials.schemas",
    "TutorialPatch": "tutorials.schemas",
    "TutorialRead": "tutorials.schemas",
    "TutorialRecord": "tutorials.schemas",
    "Settings": "tutorials.settings",
    "get_settings": "tutorials.settings",
    "ImportSummary": "tutorials.transfer",
    "export_rows": "tutorials.transfer",
    "import_file": "tutorials.transfer",
    "import_rows": "tutorials.transfer",
    "restore_file": "tutorials.transfer",
}

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
    "TutorialRecord",
    "TutorialsError",
    "Unavailable",
    "close_default_database",
    "delete_tutorial",
    "delete_tutorials",
    "export_rows",
    "get_session",
    "get_settings",
    "get_tutorial",
    "import_file",
    "import_rows",
    "last_commit_lsn",
    "list_tutorials",
    "restore_file",
    "save_tutorial",
    "search_tutorials",
    "update_tutorial",
]

if TYPE_CHECKING:
    from tutorials.db.database import Database
    from tutorials.db.session import close_default_database, get_session
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
        delete_tutorials,
        get_tutorial,
        last_commit_lsn,
        list_tutorials,
        save_tutorial,
        search_tutorials,
        update_tutorial,
    )
    from tutorials.models import Base, Tutorial
    from tutorials.schemas import (
        Page,
        TutorialCreate,
        TutorialPatch,
        TutorialRead,
        TutorialRecord,
    )
    from tutorials.settings import Settings, get_settings
    from tutorials.transfer import (
        ImportSummary,
        export_rows,
        import_file,
        import_rows,
        restore_file,
    )


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tutorials' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
