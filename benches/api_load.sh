#!/usr/bin/env bash
# Load benchmark of the job API (a measurement, not a test): requests/s and
# latency percentiles of
#   1. GET  /v1/jobs/{id}      one existing, completed job
#   2. POST /v1/jobs (same)     multipart upload of the same clip every time:
#                               after the first, the job exists (200), so this
#                               is the idempotent path (hash, store lookup)
#   3. POST /v1/jobs (distinct) the same clip with 16 PCM bytes changed per
#                               request: every upload is a new job (202),
#                               written to disk and queued; the in-process
#                               transcription starts on them during the run
# measured by wrk (a second process, on loopback) with --latency against
# `mmt serve` on a fresh temporary folder, tenant rate limit raised.
#
# Usage: benches/api_load.sh            (make bench-api)
# Environment:
#   API_LOAD_DURATION            seconds per endpoint (default 30)
#   API_LOAD_GET_CONNECTIONS     connections for the GET (default 8)
#   API_LOAD_UPLOAD_CONNECTIONS  connections for the uploads (default 4)
#   API_LOAD_THREADS             wrk threads (default 2, at most the connections)
#   API_LOAD_CLIP                clip to upload (default samples/librispeech_61-70968-0002.wav)
#   API_LOAD_SKIP_DISTINCT=1     leave out the distinct uploads (no transcription load)
#   API_LOAD_KEEP=1              keep the temporary folder (server log, wrk output)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serve_for_tests.sh

DURATION=${API_LOAD_DURATION:-30}
GET_CONNECTIONS=${API_LOAD_GET_CONNECTIONS:-8}
UPLOAD_CONNECTIONS=${API_LOAD_UPLOAD_CONNECTIONS:-4}
THREADS=${API_LOAD_THREADS:-2}
CLIP=${API_LOAD_CLIP:-samples/librispeech_61-70968-0002.wav}
LUA=benches/api_load_upload.lua
json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

command -v wrk >/dev/null || { echo "error: wrk is not installed (scripts/setup.sh --dev installs it)" >&2; exit 1; }
if ! mmt_serve_available; then
  echo "error: $MMT_BIN with 'serve' is not built (make setup-dev)" >&2
  exit 1
fi
[[ -f $CLIP ]] || { echo "error: no clip $CLIP" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/mmt-api-load.XXXXXX")
cleanup() {
  local status=$? stop_started=$SECONDS stopped=0
  if [[ -n ${MMT_PID:-} ]]; then
    MMT_SERVE_STOP_TIMEOUT=${MMT_SERVE_STOP_TIMEOUT:-30} mmt_serve_stop || stopped=$?
    echo "api-load: mmt serve stopped in $((SECONDS - stop_started)) s (exit status $stopped)" >&2
  fi
  if [[ ${API_LOAD_KEEP:-0} == 1 || $status != 0 ]]; then
    echo "api-load: server log and wrk output kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mmt_serve_start "$work" --tenant-rate 1000000 --tenant-burst 1000000
auth="Authorization: Bearer $MMT_TOKEN"
job=$(mmt_serve_submit "$CLIP")

# Let the job finish first, so the GET and idempotent runs measure the API
# alone rather than the API next to a transcription.
deadline=$((SECONDS + 180))
while :; do
  status=$(curl -fsS -H "$auth" "$MMT_URL/v1/jobs/$job" | json_field status)
  [[ $status == completed ]] && break
  if [[ $status == failed || $status == dead_lettered ]] || ((SECONDS > deadline)); then
    echo "error: job $job is $status; log:" >&2
    tail -n 30 "$MMT_LOG" >&2
    exit 1
  fi
  sleep 1
done

clip_bytes=$(stat -c %s "$CLIP")
printf '\n== MMT API load benchmark ==\n'
printf 'date        %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf 'machine     nproc=%s, %s, %s GiB RAM\n' "$(nproc)" \
  "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)" \
  "$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
printf 'load        %s (1/5/15 min, before the runs)\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'mmt         %s (git %s)\n' "$MMT_BIN" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
printf 'wrk         %s, %s threads, %s s per endpoint, on loopback\n' \
  "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f2)" "$THREADS" "$DURATION"
printf 'clip        %s (%s bytes)\n' "$CLIP" "$clip_bytes"

results=()
# run_wrk LABEL CONNECTIONS URL MODE [CLIP]
run_wrk() {
  local label=$1 connections=$2 url=$3 out
  shift 3
  local threads=$((THREADS < connections ? THREADS : connections))
  out="$work/wrk-${label//[^A-Za-z0-9]/_}.txt"
  printf '\n-- %s: wrk -t%s -c%s -d%ss --latency %s -- %s\n' "$label" "$threads" "$connections" "$DURATION" "$url" "$*"
  wrk -t"$threads" -c"$connections" -d"${DURATION}s" --latency --timeout 10s \
    -H "$auth" -s "$LUA" "$url" -- "$@" | tee "$out"
  local line
  line=$(grep '^MMT_RESULT ' "$out" | tail -n1)
  [[ -n $line ]] || { echo "error: wrk printed no result line" >&2; exit 1; }
  results+=("$label|$connections|$line")
}

run_wrk "GET /v1/jobs/{id}" "$GET_CONNECTIONS" "$MMT_URL/v1/jobs/$job" get
run_wrk "POST /v1/jobs same clip" "$UPLOAD_CONNECTIONS" "$MMT_URL/v1/jobs" same "$CLIP"
if [[ ${API_LOAD_SKIP_DISTINCT:-0} != 1 ]]; then
  run_wrk "POST /v1/jobs distinct" "$UPLOAD_CONNECTIONS" "$MMT_URL/v1/jobs" distinct "$CLIP"
  overview=$(curl -fsS -H "$auth" "$MMT_URL/v1/status")
  backlog=$(json_field queue_depth <<<"$overview")
fi

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
printf '\n== results (nproc=%s, %s s per endpoint, wrk %s threads) ==\n' "$(nproc)" "$DURATION" "$THREADS"
printf '%-26s %5s %10s %9s %9s %9s %8s %s\n' endpoint conns 'req/s' 'p50 ms' 'p90 ms' 'p99 ms' errors 'answers'
for row in "${results[@]}"; do
  IFS='|' read -r label connections line <<<"$row"
  errors=$(( $(field socket_errors "$line") + $(field status_errors "$line") ))
  answers="-"
  if [[ $(field mode "$line") != get ]]; then
    answers="202=$(field created "$line") 200=$(field existing "$line") other=$(field other "$line")"
  fi
  printf '%-26s %5s %10s %9s %9s %9s %8s %s\n' "$label" "$connections" "$(field rps "$line")" \
    "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$errors" "$answers"
done
printf '(errors = socket errors + answers >= 400; latency percentiles are as wrk reports them)\n'
if [[ -n ${backlog:-} ]]; then
  printf 'after the distinct uploads: %s job(s) waiting for transcription (stopping drains what is in flight, up to %s s)\n' \
    "$backlog" "${MMT_SERVE_STOP_TIMEOUT:-30}"
fi
