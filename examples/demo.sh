#!/usr/bin/env bash
# The demo: migrate the example service as the migration job would, then
# verify as every service pod would -- on the embedded SQLite default.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/dbinit ] || [ ! -x .venv/bin/uvicorn ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q -e '.[example]'
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

echo "== 5. the FastAPI service (dbinit lifespan) starts, verifies, serves its probes"
PORT=${DEMO_PORT:-8765}
DBINIT_READINESS_PATH=/readyz DBINIT_LIVENESS_PATH=/livez \
    ../../.venv/bin/uvicorn app:app --host 127.0.0.1 --port "$PORT" --workers 1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if ../../.venv/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/livez')" 2>/dev/null; then break; fi
    sleep 0.1
done
../../.venv/bin/python - "$PORT" <<'PY'
import json, sys, urllib.request
port = sys.argv[1]
for path in ("/readyz", "/livez", "/"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as response:
        body = json.loads(response.read())
        shown = {k: body[k] for k in ("action", "current_revision", "table_count") if k in body} or body
        print(f"   GET {path} -> {response.status} {shown}")
PY
kill $SERVER
wait $SERVER 2>/dev/null || true
echo "== done: the job migrated once; the service verified and served"
