"""Bulk import and export at COPY speed: the library face of `tutorials import` / `export`.

    from tutorials.transfer import import_file, import_rows, export_rows

    with open("tutorials.csv", "rb") as source:
        summary = await import_file(database, source, format="csv")
    print(summary.inserted, summary.updated, summary.rejected)

    with open("backup.ndjson", "wb") as out:
        await export_rows(database, out, format="ndjson", tags=["python"])

    with open("backup.csv", "wb") as out:  # two COPY streams, for a server with idle cores
        await export_rows(database, out, jobs=2)

Every function takes a `tutorials.Database` or a caller's SQLAlchemy `AsyncEngine`. The rules
(validation, batches, idempotence, what happens to rows without a url) are in `importer`; the
SQL in `sql`; the file formats in `readers` and `exporter`.
"""

from tutorials.transfer.exporter import (
    EXPORT_FORMATS,
    MEDIA_TYPES,
    ExportWriteError,
    export_rows,
    export_to,
    iter_export,
)
from tutorials.transfer.importer import (
    DEFAULT_BATCH,
    ON_CONFLICT_MODES,
    ImportSummary,
    import_file,
    import_rows,
)
from tutorials.transfer.readers import (
    READERS,
    RowError,
    SourceRow,
    read_csv,
    read_json,
    read_ndjson,
    reader_for,
)
from tutorials.transfer.sql import ExportFormat, OnConflict

IMPORT_FORMATS = tuple(READERS)

__all__ = [
    "DEFAULT_BATCH",
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "MEDIA_TYPES",
    "ON_CONFLICT_MODES",
    "ExportFormat",
    "ExportWriteError",
    "ImportSummary",
    "OnConflict",
    "RowError",
    "SourceRow",
    "export_rows",
    "export_to",
    "import_file",
    "import_rows",
    "iter_export",
    "read_csv",
    "read_json",
    "read_ndjson",
    "reader_for",
]
