#!/usr/bin/env bash
# FHIR server benchmark: starts a fresh hub on loopback and measures it from outside with the
# shared driver (../shared/bench/fhir_bench/bench.py): ingest resources/s, read latency, the six
# searches, 16-client read throughput, peak memory.
#
#   bench/fhir.sh [--db sqlite|postgres] [--workers N] [--preload-synthea | --store-from DIR]
#                 [-- extra bench.py args]
#
# --preload-synthea loads the whole Synthea corpus (92,000 resources) first, so that the searches
# run against a realistic store. --store-from DIR (SQLite) starts from a copy of the store in DIR
# instead (e.g. the data folder of an earlier `yilian load`), to iterate without reloading. The concurrent-read phase also runs with wrk (Debian package
# wrk, a C client: the Python client of the "load" phase saturates a core of this 2-core machine
# long before the hub does). Results go to bench/results/fhir-<db>-<time>.json.
# One hub process by default, as `yilian hub run` (docs/scaling.md "How many worker processes"):
# it keeps the tree near 210 MB; sustained audited reads are then bound to one core (serving and
# making AuditEvents). --workers 2 uses both cores for more reads/s at about 450 MB.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
shared="${YILIAN_SHARED:-$root/../shared}"
db=sqlite; workers=1; preload=0; store_from=""; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --db) db="$2"; shift 2;;
    --workers) workers="$2"; shift 2;;
    --preload-synthea) preload=1; shift;;
    --store-from) store_from="$2"; shift 2;;
    --) shift; extra=("$@"); break;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
command -v wrk >/dev/null || echo "note: wrk not installed (apt-get install wrk); its phase will be skipped" >&2
work="$(mktemp -d)"; port=$((20000 + RANDOM % 20000))
export YILIAN_DATA_DIR="$work/data" YILIAN_PORT="$port" YILIAN_LOG_LEVEL=WARNING
if [ "$db" = postgres ]; then
  name="yilian_bench_$$"
  psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $name" >/dev/null
  export YILIAN_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/$name"
fi
cleanup() {
  [ -n "${hub_pid:-}" ] && kill "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null || true
  [ "$db" = postgres ] && psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -n "$store_from" ]; then
  mkdir -p "$YILIAN_DATA_DIR"
  sqlite3_copy() { python -c "import sqlite3,sys; s=sqlite3.connect(sys.argv[1]); d=sqlite3.connect(sys.argv[2]); s.backup(d)" "$@"; }
  sqlite3_copy "$store_from/hub.db" "$YILIAN_DATA_DIR/hub.db"
fi
yilian hub migrate >/dev/null
if [ "$preload" = 1 ]; then
  yilian load "$shared/corpus/fhir/synthea"
fi
secret=$(yilian client add bench --scopes "system/*.cruds" | awk '/client_secret/ {print $2}')
yilian hub run --workers "$workers" >"$work/hub.log" 2>&1 &
hub_pid=$!
# ready once the database answers (a worker imports the application and opens the store first)
for _ in $(seq 1200); do
  curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break
  kill -0 "$hub_pid" 2>/dev/null || { echo "the hub exited; its log:" >&2; cat "$work/hub.log" >&2; exit 1; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null || { echo "the hub is not ready after 120 s" >&2; exit 1; }
mkdir -p "$here/results"
out="$here/results/fhir-$db-$(date +%Y%m%d-%H%M%S).json"
python "$shared/bench/fhir_bench/bench.py" "http://127.0.0.1:$port/fhir" \
  --token-url "http://127.0.0.1:$port/oauth2/token" --client-id bench --client-secret "$secret" \
  --pid "hub=$hub_pid" --label "yilian-$db" --out "$out" --phases ingest,read,search,load,wrk "${extra[@]}"
echo "results: $out"
