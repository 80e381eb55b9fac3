"""The hostile-input corpus every face is fed: one list, so the faces are judged alike.

Each entry names what it is, so a failure says which input broke which face. Strings that are
perfectly storable text (SQL injection payloads, quotes, percent signs) are not refused: they
must be stored *literally* and change nothing else. Everything else must be refused before
the database with a precise message (a 4xx problem over HTTP, exit 2 on the command line,
`InvalidInput` in the library), and a fingerprint of the table taken before and after proves
nothing changed.
"""

from __future__ import annotations

import base64
import json

import asyncpg

MAX_ID = 2**63 - 1

#: Values no text field can hold, with a fragment the refusal must mention.
BAD_TEXT: dict[str, tuple[str, str]] = {
    "nul": ("bad\x00name", "NUL"),
    "lone surrogate": ("bad\ud800name", "surrogate|unicode|Unicode"),
    "escaped invalid utf-8": ("bad\udcffname", "surrogate|unicode|Unicode"),
}

#: Over-long values per field, with their limits.
OVER_LONG: dict[str, tuple[str, object]] = {
    "name 256": ("name", "n" * 256),
    "name 1 MB": ("name", "n" * 1_000_000),
    "url 2049": ("url", "https://example.com/" + "u" * 2030),
    "description 20001": ("description", "d" * 20_001),
    "tag 65": ("tags", ["t" * 65]),
    "51 tags": ("tags", [f"t{i}" for i in range(51)]),
}

#: Classic SQL injection payloads: storable text that must be stored verbatim and do nothing.
INJECTION = [
    "'; DROP TABLE tutorials; --",
    "' OR '1'='1",
    "1 OR 1=1",
    '" OR ""="',
    "'); DELETE FROM tutorials WHERE ('1'='1",
    "1; UPDATE tutorials SET name = 'pwned'",
    "$$; DROP TABLE tutorials; $$",
    "' UNION SELECT version(), NULL, NULL --",
    "\\'; SELECT pg_sleep(10); --",
    "%' AND 1=0 --",
    "_%",
    "E'\\x27'",
    "tutorials\\",
]

#: Ids that no tutorial can have, as the faces receive them (text), with the expected kind.
BAD_IDS = ["0", "-1", str(2**63), str(2**64), "abc", "1.5", "1e3", "0x10", "", " ", "1 OR 1=1"]


def _cursor(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


#: Cursors nobody issued: garbage, well-formed but forged, out of range, other kinds, injection.
FORGED_CURSORS = {
    "garbage": "not-a-cursor",
    "bad base64": "eyJ",
    "not json": base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
    "unknown kind": _cursor(["x", 1]),
    "negative id": _cursor(["i", -1]),
    "id past bigint": _cursor(["i", 2**64]),
    "bool id": _cursor(["i", True]),
    "string id": _cursor(["i", "1 OR 1=1"]),
    "object": _cursor({"i": 1}),
    "extra values": _cursor(["i", 1, 2]),
    "injection": _cursor(["i", "1; DROP TABLE tutorials"]),
    "deep": _cursor([[[[[[[[[[["i"]]]]]]]]]]]),
}


async def fingerprint(dsn: str) -> tuple[int, str, bool]:
    """(rows, md5 of every row in id order, table still there) — what "nothing changed" means."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        exists = await connection.fetchval("SELECT to_regclass('public.tutorials') IS NOT NULL")
        if not exists:
            return (-1, "", False)
        row = await connection.fetchrow(
            "SELECT count(*) AS rows, "
            "coalesce(md5(string_agg(t::text, '|' ORDER BY tutorial_id)), '') AS digest "
            "FROM tutorials t"
        )
    finally:
        await connection.close()
    assert row is not None
    return (int(row["rows"]), str(row["digest"]), True)


async def seed(dsn: str, rows: int = 3) -> None:
    """A few ordinary rows, so "nothing changed" also covers rows an injection would touch."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.executemany(
            "INSERT INTO tutorials (name, url, tags) VALUES ($1, $2, $3)",
            [(f"seed {i}", f"https://seed.example/{i}", ["seed"]) for i in range(rows)],
        )
    finally:
        await connection.close()


async def matching_ids(dsn: str, text: str, tag: str | None = None) -> list[int]:
    """The ids a search for `text` must find, asked of PostgreSQL directly (not through the
    service): every row whose document matches `text` read as web-search words."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT tutorial_id FROM tutorials "
            "WHERE search @@ websearch_to_tsquery('english', $1) "
            "AND ($2::text IS NULL OR tags @> ARRAY[$2::text]) ORDER BY tutorial_id",
            text.strip(),
            tag,
        )
    finally:
        await connection.close()
    return [row[0] for row in rows]


def is_tag(text: str) -> bool:
    """Whether `text` is a tag every face accepts (`schemas`' rule)."""
    from tutorials.schemas import normalise_tag

    try:
        normalise_tag(text)
    except ValueError:
        return False
    return True
