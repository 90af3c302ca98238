#!/usr/bin/env bash
# The demo: migrate the example service as the migration job would, then
# verify as every service pod would -- on the embedded SQLite default.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/dbinit ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -e .
fi
DBINIT=$PWD/.venv/bin/dbinit
cd examples/bakery
rm -f db.sqlite3
export DBINIT_LOG_FORMAT=${DBINIT_LOG_FORMAT:-console}

echo "== 1. a service pod starts before the migration job: it refuses to start (exit 4)"
"$DBINIT" verify && exit 1 || echo "   -> exit $? (not ready), as it should"

echo "== 2. the migration job: dbinit migrate"
"$DBINIT" migrate

echo "== 3. a service pod starts: dbinit verify"
"$DBINIT" verify

echo "== 4. where the database stands: dbinit showmigrations"
"$DBINIT" showmigrations
