"""Bulk import and export at COPY speed: the library face of `tutorials import` / `export`.

    from tutorials.transfer import import_file, import_rows, export_rows

    with open("tutorials.csv", "rb") as source:
        summary = await import_file(database, source, format="csv")
    print(summary.inserted, summary.updated, summary.rejected)

    with open("backup.ndjson", "wb") as out:
        await export_rows(database, out, format="ndjson", tags=["python"])

    with open("backup.csv", "wb") as out:  # two COPY streams, for a server with idle cores
        await export_rows(database, out, jobs=2)

    with open("catalog.backup", "wb") as out:  # ids, timestamps and versions too
        await export_rows(database, out, format="backup")
    with open("catalog.backup", "rb") as source:  # into an empty catalog: exactly as it was
        restored = await restore_file(database, source)

Every function takes a `tutorials.Database`. The rules
(validation, batches, idempotence, what happens to rows without a url) are in `importer`; the
SQL in `sql`; the file formats in `readers` and `exporter`.
"""

from tutorials.limits import DEFAULT_BATCH
from tutorials.transfer.exporter import (
    EXPORT_FORMATS,
    MEDIA_TYPES,
    ExportStalled,
    ExportWriteError,
    export_rows,
    export_to,
    iter_export,
)
from tutorials.transfer.importer import (
    DEFAULT_BATCH_BYTES,
    ON_CONFLICT_MODES,
    ImportSummary,
    import_file,
    import_rows,
    restore_file,
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
    "DEFAULT_BATCH_BYTES",
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "MEDIA_TYPES",
    "ON_CONFLICT_MODES",
    "ExportFormat",
    "ExportStalled",
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
    "restore_file",
]
