"""Synthetic catalog rows, made inside PostgreSQL (INSERT ... SELECT generate_series) so that a
million rows take seconds, not minutes of client round trips.

Text is drawn from a fixed vocabulary with a skewed (power-law-like) distribution: word k of V
is picked with probability ~ 1/sqrt(k*V), so a few words are in a third of the rows and most
are rare, as in real text. Search queries are chosen by how many rows they match (see
`pick_queries`), so a figure always says what kind of query it is for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

#: Real words first (the common end of the distribution), then made-up ones for the long tail.
_REAL = [
    "python",
    "postgres",
    "async",
    "database",
    "tutorial",
    "guide",
    "sql",
    "index",
    "query",
    "performance",
    "web",
    "api",
    "http",
    "server",
    "client",
    "rust",
    "go",
    "java",
    "javascript",
    "typescript",
    "docker",
    "kubernetes",
    "cloud",
    "linux",
    "testing",
    "security",
    "cache",
    "redis",
    "queue",
    "stream",
    "event",
    "design",
    "pattern",
    "data",
    "model",
    "schema",
    "migration",
    "deploy",
    "monitoring",
    "logging",
    "metrics",
    "tracing",
    "network",
    "socket",
    "thread",
    "process",
    "memory",
    "storage",
    "search",
    "text",
    "vector",
    "graph",
    "machine",
    "learning",
    "training",
    "inference",
    "cluster",
    "replica",
    "backup",
    "transaction",
    "lock",
    "isolation",
    "orm",
    "session",
    "pool",
    "connection",
    "driver",
    "protocol",
    "json",
    "csv",
    "parser",
    "compiler",
    "runtime",
    "benchmark",
    "profiling",
    "debugging",
    "refactoring",
    "review",
    "library",
    "framework",
]
_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "pe",
    "zu",
    "ba",
    "di",
    "fo",
    "gu",
    "ha",
    "je",
    "ko",
    "la",
    "mu",
    "no",
]
VOCABULARY_SIZE = 5000


def word(k: int) -> str:
    """Word number k (0 = most frequent) of the vocabulary; `_WORD_SQL` computes the same."""
    if k < len(_REAL):
        return _REAL[k]
    s = _SYLLABLES
    return s[k % 20] + s[(k // 20) % 20] + s[(k // 400) % 20] + "x"


def vocabulary() -> list[str]:
    return [word(k) for k in range(VOCABULARY_SIZE)]


TAGS = [f"tag{index:02d}" for index in range(40)]

# A word drawn with P(k) ~ 1/sqrt(k * V): floor(V * random()^2). Small arrays only: indexing a
# long text[] walks it from the start, which made the first version of this 30x slower.
_K = f"floor({VOCABULARY_SIZE} * random() ^ 2)::int"
_WORD_SQL = (
    f"(SELECT CASE WHEN k < cardinality(r) THEN r[k + 1] "
    f"ELSE s[1 + k % 20] || s[1 + (k / 20) % 20] || s[1 + (k / 400) % 20] || 'x' END "
    f"FROM (SELECT {_K} + 0 * g AS k) AS pick)"
)

_INSERT = f"""
INSERT INTO tutorials (name, url, description, tags)
SELECT
    initcap(w[1]) || ' ' || w[2] || ' ' || w[3] || ' ' || i,
    'https://example.com/' || $3 || '/' || i,
    array_to_string(w[4:], ' '),
    (SELECT array_agg(DISTINCT 'tag' || lpad(floor(40 * random() ^ 2)::int::text, 2, '0'))
       FROM generate_series(1, 1 + (i % 3) + 0 * i) AS g2
      WHERE g2 > 0)
FROM (SELECT $4::text[] AS r, $5::text[] AS s) AS consts,
     generate_series($1::bigint, $2::bigint) AS i,
     LATERAL (SELECT array_agg({_WORD_SQL}) AS w
                FROM generate_series(1, 15 + (i % 17)) AS g) AS words
"""


@dataclass
class Seeded:
    rows: int
    seconds: float


async def seed(dsn: str, rows: int, *, label: str = "seed", workers: int = 2) -> Seeded:
    """Insert `rows` synthetic tutorials (urls `https://example.com/<label>/<i>`), in parallel
    batches, then ANALYZE; returns how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    batch = 25_000
    ranges = [(start, min(start + batch - 1, rows)) for start in range(1, rows + 1, batch)]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for item in ranges:
        queue.put_nowait(item)

    async def work() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("SET synchronous_commit = off")
            while not queue.empty():
                start, end = queue.get_nowait()
                await connection.execute(_INSERT, start, end, label, list(_REAL), _SYLLABLES)
        finally:
            await connection.close()

    await asyncio.gather(*(work() for _ in range(workers)))
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("VACUUM (ANALYZE) tutorials")
    finally:
        await connection.close()
    return Seeded(rows, loop.time() - started)


@dataclass(frozen=True)
class Query:
    text: str
    matches: int
    band: str


#: Vocabulary positions queried: from the most frequent words to the rarest.
QUERY_WORDS = (0, 1, 4, 8, 12, 20, 30, 45, 60, 100, 200, 300, 600, 1000, 2000, 3000, 4900)
BANDS = ((0.005, "rare <=0.5%"), (0.02, "medium 0.5-2%"), (0.10, "common 2-10%"))
VERY_COMMON = "very common >10%"


def band(matches: int, rows: int) -> str:
    """The band of a query by the share of rows it matches."""
    share = matches / rows if rows else 0.0
    for limit, name in BANDS:
        if share <= limit:
            return name
    return VERY_COMMON


async def pick_queries(dsn: str, rows: int) -> list[Query]:
    """Single-word queries spread over the vocabulary, each with its exact match count and
    band (counted once, up front), rarest first."""
    connection = await asyncpg.connect(dsn)
    picked: list[Query] = []
    try:
        for k in QUERY_WORDS:
            count = await connection.fetchval(
                "SELECT count(*) FROM tutorials "
                "WHERE search @@ websearch_to_tsquery('english', $1)",
                word(k),
            )
            picked.append(Query(word(k), int(count), band(int(count), rows)))
    finally:
        await connection.close()
    return sorted(picked, key=lambda q: q.matches)
