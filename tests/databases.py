"""A database of its own for every test, without paying `CREATE DATABASE` for each.

A copy of the migrated template costs ~0.3 s to create and ~0.1 s to drop on a server with
`fsync=on` (the system PostgreSQL 15 here): about 3 minutes of a 500-test run. So a test's
database is given back rather than dropped, and handed to a later test only once it is the
template again:

- no other session may still be connected to it;
- its schema must be the template's: the fingerprint below compares relations, columns,
  defaults, constraints, indexes, triggers, functions, sequences' parameters, views, types,
  extensions, schemas, privileges, the database's own settings, prepared transactions and the
  `alembic_version` row;
- then every table but `alembic_version` is emptied (`TRUNCATE ... RESTART IDENTITY`) and
  every sequence restarted, which is exactly the template's state (its tables are empty,
  checked once).

Anything else, including a fingerprint query that fails (a test dropped `alembic_version`),
drops the copy as before. A test never sees a row, a setting or an object another test left.

Every copy (and the template) has `synchronous_commit = off`, as the embedded server the other
pass uses has: a commit still returns only once it is visible to every later query, it just
does not wait for the disk. What a crash keeps is tested on private clusters
(`tests/reliability`), never on these databases.
"""

from __future__ import annotations

import uuid

import asyncpg
from sqlalchemy.engine import URL
from tests.support import admin_execute, asyncpg_dsn, run_async

_USER_NAMESPACES = """
    SELECT oid FROM pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema')
       AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%'
"""

#: One line per object the tests could change, hashed (see the module's docstring).
FINGERPRINT = f"""
WITH ns AS ({_USER_NAMESPACES}),
lines(line) AS (
    SELECT format('ns %s %s', nspname, nspacl) FROM pg_namespace WHERE oid IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('rel %s %s %s %s %s %s %s', c.oid::regclass, c.relkind, c.relpersistence,
                  c.reloptions, c.relacl, c.relrowsecurity, c.relreplident)
      FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('col %s.%s %s %s %s %s %s %s', a.attrelid::regclass, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid), a.attgenerated, a.attidentity, a.attnum)
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace IN (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('con %s %s %s %s', conrelid::regclass, conname, convalidated,
                  pg_get_constraintdef(oid))
      FROM pg_constraint WHERE connamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('idx %s %s', i.indexrelid::regclass, pg_get_indexdef(i.indexrelid))
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE c.relnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('trg %s %s', pg_get_triggerdef(oid), tgenabled)
      FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT format('fn %s %s %s', p.oid::regprocedure, p.prokind, md5(p.prosrc))
      FROM pg_proc p WHERE p.pronamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('seq %s %s %s %s %s %s', seqrelid::regclass, seqtypid, seqstart, seqincrement,
                  seqmax, seqmin)
      FROM pg_sequence
    UNION ALL
    SELECT format('view %s %s', c.oid::regclass, md5(pg_get_viewdef(c.oid)))
      FROM pg_class c WHERE c.relkind IN ('v', 'm') AND c.relnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('type %s %s', t.oid::regtype, t.typtype)
      FROM pg_type t WHERE t.typnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('ext %s %s', extname, extversion) FROM pg_extension
    UNION ALL
    SELECT format('rule %s %s', ev_class::regclass, rulename) FROM pg_rewrite r
      JOIN pg_class c ON c.oid = r.ev_class
     WHERE c.relnamespace IN (SELECT oid FROM ns) AND rulename <> '_RETURN'
    UNION ALL
    SELECT format('policy %s %s', polrelid::regclass, polname) FROM pg_policy
    UNION ALL
    SELECT format('evt %s', evtname) FROM pg_event_trigger
    UNION ALL
    SELECT format('pub %s', pubname) FROM pg_publication
    UNION ALL
    SELECT format('lo %s', count(*)) FROM pg_largeobject_metadata
    UNION ALL
    SELECT format('setting %s %s', setrole, setconfig) FROM pg_db_role_setting
     WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL
    SELECT format('db %s %s %s', datconnlimit, datallowconn, datacl)
      FROM pg_database WHERE datname = current_database()
    UNION ALL
    SELECT format('prepared %s', gid) FROM pg_prepared_xacts WHERE database = current_database()
    UNION ALL
    SELECT format('alembic %s', version_num) FROM alembic_version
)
SELECT md5(string_agg(line, E'\\n' ORDER BY line)) FROM lines
"""

_TABLES = f"""
SELECT c.oid::regclass::text FROM pg_class c
 WHERE c.relkind IN ('r', 'p') AND c.relnamespace IN ({_USER_NAMESPACES})
   AND c.oid <> 'alembic_version'::regclass
"""
_SEQUENCES = f"""
SELECT c.oid::regclass::text FROM pg_class c
 WHERE c.relkind = 'S' AND c.relnamespace IN ({_USER_NAMESPACES})
"""


#: Set on the template and on each copy (`ALTER DATABASE ... SET`; copies do not inherit it).
COPY_SETTINGS = "SET synchronous_commit = off"


class TemplateCopies:
    """Copies of the migrated template `template` on the server at `server_url`: `take` one,
    `give_back` it (see the module's docstring), `close` drops the copies left."""

    def __init__(self, server_url: URL, template: str) -> None:
        self._server_url = server_url
        self._template = template
        self._free: list[str] = []
        run_async(lambda: admin_execute(server_url, f'ALTER DATABASE "{template}" {COPY_SETTINGS}'))
        self._fingerprint, self._recyclable = run_async(self._inspect_template)

    async def _inspect_template(self) -> tuple[str, bool]:
        connection = await asyncpg.connect(self._dsn(self._template))
        try:
            fingerprint = await connection.fetchval(FINGERPRINT)
            tables = [row[0] for row in await connection.fetch(_TABLES)]
            empty = True
            for table in tables:
                empty = empty and await connection.fetchval(
                    f"SELECT NOT EXISTS (SELECT FROM {table})"
                )
        finally:
            await connection.close()
        return fingerprint, empty

    def _dsn(self, database: str) -> str:
        return asyncpg_dsn(self._server_url.set(database=database))

    def take(self) -> str:
        if self._free:
            return self._free.pop()
        name = f"tutorials_test_{uuid.uuid4().hex[:12]}"
        run_async(
            lambda: admin_execute(
                self._server_url,
                f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"',
                f'ALTER DATABASE "{name}" {COPY_SETTINGS}',
            )
        )
        return name

    def give_back(self, name: str) -> None:
        if self._recyclable and run_async(lambda: self._reset(name)):
            self._free.append(name)
        else:
            self._drop(name)

    async def _reset(self, name: str) -> bool:
        """Whether `name` is the template again (emptied, if its schema is unchanged)."""
        try:
            connection = await asyncpg.connect(self._dsn(name))
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            others = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if others or await connection.fetchval(FINGERPRINT) != self._fingerprint:
                return False
            tables = [row[0] for row in await connection.fetch(_TABLES)]
            sequences = [row[0] for row in await connection.fetch(_SEQUENCES)]
            async with connection.transaction():
                if tables:
                    await connection.execute(
                        f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"
                    )
                for sequence in sequences:
                    await connection.execute(f"ALTER SEQUENCE {sequence} RESTART")
            return True
        except asyncpg.PostgresError:
            return False
        finally:
            await connection.close()

    def _drop(self, name: str) -> None:
        run_async(
            lambda: admin_execute(
                self._server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            )
        )

    def close(self) -> None:
        while self._free:
            self._drop(self._free.pop())
