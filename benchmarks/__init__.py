"""Reproducible performance runs for `tutorials` (not part of the test suite).

`python -m benchmarks.run --short|--full` runs every suite against a scratch database on the
local PostgreSQL, with the baselines (raw asyncpg, a bare Starlette handler, psql \\copy) in the
same invocation, and prints ratio tables. See benchmarks/README.md.
"""
