"""The data directory: whose it is, which major version made it, and making it (initdb).

* A data directory made by another PostgreSQL major version cannot be opened:
  :func:`check_version` compares ``data/PG_VERSION`` with the binaries' major and raises, never
  deleting data.
* ``initdb --locale=C.UTF-8 -E UTF8``: with locale C, pg_trgm drops accented letters.
* ``initdb --auth=scram-sha-256 --pwfile=...``: every connection authenticates from the first
  start on (see ``auth.py``).
* initdb runs into ``data.initdb/`` which is renamed to ``data/`` only on success, so a killed
  initdb never leaves a half-initialized data directory that would be mistaken for a good one.
* As root, ``log/`` belongs to the service account: ``initdb.log`` is created afresh without
  following links (``files.create_fresh``), and initdb's output is read back through the same
  descriptor for the error message, never by name.
"""

from __future__ import annotations

import os
import pwd
import shutil

from tutorials.db.embedded import account, auth, files
from tutorials.db.embedded.binaries import Binaries
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import SUPERUSER, Layout

__all__ = ["check_owner", "check_version", "initdb", "is_initialized"]


def is_initialized(layout: Layout) -> bool:
    return os.path.lexists(layout.data / "PG_VERSION")


def check_version(layout: Layout, binaries: Binaries) -> None:
    version_file = layout.data / "PG_VERSION"
    try:
        found = files.read_text(version_file)
    except EmbeddedPostgresError:
        if not os.access(layout.data, os.X_OK):
            raise EmbeddedPostgresError(
                f"cannot read {version_file} as uid {os.geteuid()}: "
                "the data dir belongs to another user"
            ) from None
        raise
    if found is None:
        if layout.data.exists() and any(layout.data.iterdir()):
            raise EmbeddedPostgresError(
                f"{layout.data} is not empty but has no PG_VERSION: not a PostgreSQL "
                "data dir; move it away"
            )
        return
    found = found.strip()
    if found != binaries.major:
        raise EmbeddedPostgresError(
            f"data dir {layout.data} was made by PostgreSQL {found} but the binaries are "
            f"PostgreSQL {binaries.version}; dump it with a PostgreSQL {found} pg_dump or "
            "move it away (nothing was deleted)"
        )


def check_owner(layout: Layout, owner: account.Owner | None) -> None:
    uid = owner[0] if owner is not None else os.geteuid()
    st = os.lstat(layout.data)
    if st.st_uid != uid:
        try:
            name = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            name = str(st.st_uid)
        raise EmbeddedPostgresError(
            f"data dir {layout.data} belongs to {name}, but the server would run as uid "
            f"{uid}; use another root or chown it yourself"
        )


def initdb(layout: Layout, binaries: Binaries, owner: account.Owner | None) -> None:
    """initdb into data.initdb/, renamed to data/ only once complete; the password goes to
    ``pgpass`` (see ``auth.initdb_pwfile``)."""
    init_dir = layout.init_dir
    if init_dir.exists():
        shutil.rmtree(init_dir)  # left by a killed initdb; we hold the lock
    account.ensure_private_dir(init_dir, owner)
    if layout.data.exists():
        layout.data.rmdir()  # empty (checked by check_version)
    fd = files.create_fresh(layout.initdb_log)
    with os.fdopen(fd, "w+b") as log, auth.initdb_pwfile(layout, owner) as pwfile:
        rc = account.run_as_service(
            [
                binaries["initdb"],
                "-D",
                str(init_dir),
                "--locale=C.UTF-8",
                "-E",
                "UTF8",
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-sync",
                "--no-instructions",
            ],
            log,
            cwd=layout.root,
            timeout=300,
            log_hint=layout.initdb_log,
        )
        if rc != 0:
            log.seek(0)
            output = log.read().decode("utf-8", "replace")
            shutil.rmtree(init_dir, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"initdb failed (exit {rc}): {account.tail(output)}; see {layout.initdb_log}"
            )
    os.rename(init_dir, layout.data)
