#!/usr/bin/env bash
# DICOM / DICOMweb benchmark: the hub and Orthanc side by side, measured by the same client
# (shared/bench/dicom_bench/bench.sh: dcmtk's tools + curl) on the same data, one after the other.
#
#   bash bench/dicom.sh [--quick] [--runs N] [--engine sqlite|postgres] [--no-orthanc]
#
# Prints a table "metric hub orthanc unit orthanc/hub" and keeps the raw runs in
# ${TMPDIR:-/tmp}/yilian-dicom-bench/. Needs the Debian packages dcmtk, orthanc,
# orthanc-dicomweb, jq, curl (.ci/run installs the first three). Loopback only.
#
# The hub runs as `yilian hub run` with its DICOM SCP enabled, a fresh data folder, and the
# benchmark's C-MOVE destination BENCHSCU=127.0.0.1:11113 configured. DICOMweb needs a bearer
# token: curl reads it from a generated .curlrc (CURL_HOME), so the shared driver runs unchanged.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DRIVER="${DICOM_BENCH_DRIVER:-$ROOT/../shared/bench/dicom_bench}"
WORK="${TMPDIR:-/tmp}/yilian-dicom-bench"
DATA="$WORK/data"
QUICK="" RUNS=1 ENGINE=sqlite ORTHANC=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=--quick; shift ;;
    --runs) RUNS=$2; shift 2 ;;
    --engine) ENGINE=$2; shift 2 ;;
    --no-orthanc) ORTHANC=0; shift ;;
    *) echo "unknown arg $1" >&2; exit 2 ;;
  esac
done
# dcmtk's clients, not pynetdicom's apps of the same names in the virtualenv
export PATH="/usr/bin:/bin:$PATH"
PY="$ROOT/.venv/bin/python"
YILIAN="$ROOT/.venv/bin/yilian"
mkdir -p "$WORK/results"
[[ -f "$DATA/manifest.env" ]] || "$PY" "$DRIVER/make_dataset.py" --out "$DATA" >&2

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_hub() {  # run_hub I -> results/hub_runI.txt
  local i=$1 dir="$WORK/hub$i" http dicom pid db
  rm -rf "$dir"; mkdir -p "$dir"
  http=$(free_port); dicom=$(free_port)
  db="sqlite:///$dir/hub.db"
  if [[ $ENGINE == postgres ]]; then
    db="postgresql+psycopg://postgres@127.0.0.1:5432/yilian_dicom_bench"
    psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS yilian_dicom_bench WITH (FORCE)" \
         -c "CREATE DATABASE yilian_dicom_bench" >&2
  fi
  export YILIAN_DATA_DIR="$dir" YILIAN_DATABASE_URL="$db" YILIAN_PORT="$http" YILIAN_LOG_LEVEL=WARNING \
         YILIAN_TOKEN_SECRET="bench-only-secret-$(date +%s%N)" YILIAN_DICOM_ENABLED=true \
         YILIAN_DICOM_PORT="$dicom" YILIAN_DICOM_AE_TITLE=YILIAN YILIAN_DICOM_AES='{"BENCHSCU":"127.0.0.1:11113"}'
  "$YILIAN" hub run > "$dir/hub.log" 2>&1 &
  pid=$!
  for _ in $(seq 150); do curl -sf "http://127.0.0.1:$http/health" >/dev/null && break; sleep 0.2; done
  mkdir -p "$dir/curl"
  printf 'header = "Authorization: Bearer %s"\n' \
    "$("$YILIAN" token --scopes system/ImagingStudy.cruds --subject bench)" > "$dir/curl/.curlrc"
  echo "== hub run $i (PID $pid, $ENGINE, DICOM $dicom, HTTP $http)" >&2
  CURL_HOME="$dir/curl" "$DRIVER/bench.sh" --host 127.0.0.1 --port "$dicom" --aec YILIAN --aet BENCHSCU \
    --url "http://127.0.0.1:$http/dicom-web" --pid "$pid" --storage "$dir/dicom" --data "$DATA" \
    --work "$WORK/w" --out "$WORK/results/hub_run$i.txt" $QUICK > /dev/null 2> "$WORK/results/hub_run$i.log"
  echo "   rc=$? failures=$(awk '$1=="failures"{print $2}' "$WORK/results/hub_run$i.txt")" >&2
  kill "$pid"; wait "$pid" 2>/dev/null
  unset YILIAN_DATA_DIR YILIAN_DATABASE_URL YILIAN_PORT YILIAN_TOKEN_SECRET YILIAN_DICOM_ENABLED YILIAN_DICOM_PORT \
        YILIAN_DICOM_AE_TITLE YILIAN_DICOM_AES YILIAN_LOG_LEVEL
}

run_orthanc() {  # run_orthanc I -> results/orthanc_runI.txt (Orthanc with TCP_NODELAY=1, the fair setting)
  local i=$1 base="$WORK/orthanc" pid
  pid=$(ORTHANC_ENV="TCP_NODELAY=1" "$DRIVER/orthanc_ctl.sh" start "$base") || return 1
  echo "== orthanc run $i (PID $pid)" >&2
  "$DRIVER/bench.sh" --host 127.0.0.1 --port 4242 --aec ORTHANC --aet BENCHSCU \
    --url http://127.0.0.1:8042/dicom-web --pid "$pid" --storage "$base/storage" --data "$DATA" \
    --work "$WORK/w" --out "$WORK/results/orthanc_run$i.txt" $QUICK > /dev/null 2> "$WORK/results/orthanc_run$i.log"
  echo "   rc=$? failures=$(awk '$1=="failures"{print $2}' "$WORK/results/orthanc_run$i.txt")" >&2
  "$DRIVER/orthanc_ctl.sh" stop "$base"
}

hub_files=() orthanc_files=()
for i in $(seq "$RUNS"); do
  run_hub "$i"; hub_files+=("$WORK/results/hub_run$i.txt")
  if [[ $ORTHANC == 1 ]]; then run_orthanc "$i"; orthanc_files+=("$WORK/results/orthanc_run$i.txt"); fi
done
"$DRIVER/summarize.sh" median "${hub_files[@]}" | awk '{print $1, $2, $3}' > "$WORK/results/hub_median.txt"
if [[ $ORTHANC == 1 ]]; then
  "$DRIVER/summarize.sh" median "${orthanc_files[@]}" | awk '{print $1, $2, $3}' > "$WORK/results/orthanc_median.txt"
  echo "metric hub orthanc unit orthanc/hub"
  "$DRIVER/summarize.sh" ratio "$WORK/results/hub_median.txt" "$WORK/results/orthanc_median.txt" | column -t
else
  column -t "$WORK/results/hub_median.txt"
fi
