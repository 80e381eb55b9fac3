"""Reading and writing files without following links someone else may have planted.

As root, the service account owns ``data/``, ``log/`` and ``run/``, so it can put a symbolic
link (or, where ``fs.protected_hardlinks`` is off, a hard link) in place of any file there.
Opening such a name as root would read or truncate whatever it points at (``/etc/shadow``),
and a read can end up in an error message. So every file root touches is opened here:

* reads use ``O_NOFOLLOW`` and accept only a regular file with one link;
* writes go to a new file made with ``O_CREAT | O_EXCL`` (which never follows a link, not even
  a dangling one) and are renamed over the name: a rename replaces a link, it does not follow it;
* a log root writes into a service-owned directory is unlinked first and created afresh the
  same way (:func:`create_fresh`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from tutorials.db.embedded.errors import EmbeddedPostgresError

__all__ = [
    "create_fresh",
    "make_dirs_0755",
    "read_text",
    "read_text_from",
    "write_atomic",
]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _is_plain(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def read_text(path: Path) -> str | None:
    """The file's text; None if it does not exist.

    A link, a FIFO, a device or a file with several names is refused with
    :class:`EmbeddedPostgresError`: its content is not ours to read or show.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if os.path.islink(path):
            raise EmbeddedPostgresError(
                f"{path} is a symbolic link; remove it (links are never followed here)"
            ) from None
        raise EmbeddedPostgresError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not _is_plain(os.fstat(f.fileno())):
            raise EmbeddedPostgresError(f"{path} is not a plain file; remove it")
        return f.read().decode("utf-8", "replace")


def read_text_from(path: Path, offset: int = 0) -> str:
    """A log's text from ``offset`` on, for an error message; a placeholder if it is unsafe."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return "(no log)"
    with os.fdopen(fd, "rb") as f:
        if not _is_plain(os.fstat(f.fileno())):
            return "(log is not a plain file)"
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def write_atomic(
    path: Path, text: str, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with a new file holding ``text`` (made with O_EXCL, then renamed).

    ``mode`` and ``owner`` are set on the new file before it gets its name, so a secret is
    never readable by anyone else, not even for a moment.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_fresh(path: Path, mode: int = 0o644) -> int:
    """A new empty file at ``path`` to write and read back, whatever was there (a link is
    removed, not followed). Returns the descriptor (close-on-exec; the caller closes it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot create {path}: {exc.strerror}") from None


def make_dirs_0755(path: Path) -> None:
    """Create ``path`` and missing parents 0755 (umask-proof); existing ones are left alone."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            continue
        os.chmod(d, 0o755)
