#!/bin/bash
# What the bounded HTTP parser costs: server CPU per request of `tutorials serve` with
# TUTORIALS_HTTP_PARSER=h11 (the default: bounds the request head while reading it) and
# httptools (faster, unbounded heads). wrk, 32 connections, 8 s, GET /tutorials/1, on the
# PostgreSQL at 127.0.0.1:5432 (a scratch database, dropped afterwards); CPU from /proc.
#     bash benchmarks/http_parsers.sh
set -e
cd "$(dirname "$0")/.."
DB=bounds_parser_bench
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$DB
.venv/bin/tutorials db upgrade >/dev/null
psql -h 127.0.0.1 -U postgres -d $DB -qc "INSERT INTO tutorials (name) SELECT 'row ' || n FROM generate_series(1, 1000) n"
for round in 1 2; do
for parser in h11 httptools; do
  TUTORIALS_HTTP_PARSER=$parser .venv/bin/tutorials serve --port 8765 --log-level warning >/tmp/parser-$parser.log 2>&1 &
  pid=$!
  for i in $(seq 100); do curl -sf http://127.0.0.1:8765/healthz >/dev/null && break; sleep 0.1; done
  wrk -t2 -c32 -d2s http://127.0.0.1:8765/tutorials/1 >/dev/null  # warm-up
  before=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$(wrk -t2 -c32 -d8s http://127.0.0.1:8765/tutorials/1)
  after=$(awk '{print $14+$15}' /proc/$pid/stat)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  tick=$(getconf CLK_TCK)
  echo "round $round $parser: $rate req/s, $(( (after-before) * 1000000 / tick / reqs )) us CPU/request ($reqs requests)"
  kill $pid; wait $pid 2>/dev/null || true
done
done
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE $DB"
