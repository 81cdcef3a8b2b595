#!/usr/bin/env bash
# Helpers to run `mmt serve` for a test or benchmark; source this file.
#
#   source scripts/serve_for_tests.sh
#   mmt_serve_start "$workdir" --tenant-rate 100000 --tenant-burst 100000
#   curl -H "Authorization: Bearer $MMT_TOKEN" "$MMT_URL/v1/status"
#   mmt_serve_submit samples/librispeech_61-70968-0002.wav   # prints the job id
#   mmt_serve_stop                                           # also from a trap
#
# mmt_serve_start sets MMT_URL (http://127.0.0.1:PORT), MMT_PORT, MMT_PID,
# MMT_LOG (the server's stderr) and MMT_TOKEN (all roles, tenant
# $MMT_TEST_TENANT, default clinic-a). It exports a fresh random
# INTERNAL_JWT_SECRET unless one is set. Run from the repository root (the
# model and ONNX Runtime come from the set-up's default paths).

MMT_BIN=${MMT_BIN:-target/release/mmt}
MMT_TEST_TENANT=${MMT_TEST_TENANT:-clinic-a}

mmt_serve_say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# True when the binary exists and has the serve subcommand. Under CI=true a
# missing binary is an error (exit 1); otherwise the caller decides (status 1).
mmt_serve_available() {
  if [[ -x $MMT_BIN ]] && "$MMT_BIN" serve --help >/dev/null 2>&1; then
    return 0
  fi
  if [[ ${CI:-} == true ]]; then
    echo "error: $MMT_BIN with 'serve' is missing (CI=true: build it with 'make setup-dev')" >&2
    exit 1
  fi
  return 1
}

# mmt_serve_start WORKDIR [extra `mmt serve` arguments...]
mmt_serve_start() {
  local workdir=$1
  shift
  mkdir -p "$workdir"
  if [[ -z ${INTERNAL_JWT_SECRET:-} ]]; then
    INTERNAL_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)
    export INTERNAL_JWT_SECRET
  fi
  MMT_LOG=$workdir/serve.log
  "$MMT_BIN" serve --listen 127.0.0.1:0 --out "$workdir/data" "$@" 2>"$MMT_LOG" &
  MMT_PID=$!
  local deadline=$((SECONDS + ${MMT_SERVE_START_TIMEOUT:-120})) line=
  while :; do
    line=$(grep -m1 -o 'serving the job API on http://[0-9.]*:[0-9]*' "$MMT_LOG" 2>/dev/null || true)
    [[ -n $line ]] && break
    if ! kill -0 "$MMT_PID" 2>/dev/null; then
      echo "error: mmt serve exited before listening; its log:" >&2
      tail -n 40 "$MMT_LOG" >&2
      MMT_PID=
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "error: mmt serve did not report its address; its log:" >&2
      tail -n 40 "$MMT_LOG" >&2
      mmt_serve_stop
      return 1
    fi
    sleep 0.2
  done
  MMT_URL=${line#serving the job API on }
  MMT_PORT=${MMT_URL##*:}
  MMT_TOKEN=$("$MMT_BIN" token --tenant "$MMT_TEST_TENANT" \
    --role submitter --role reader --role admin --ttl 7200)
  # /readyz: the job store and intake are up.
  deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$MMT_URL/readyz"; do
    if ((SECONDS > deadline)); then
      echo "error: $MMT_URL/readyz never answered 2xx; log:" >&2
      tail -n 40 "$MMT_LOG" >&2
      mmt_serve_stop
      return 1
    fi
    sleep 0.5
  done
  mmt_serve_say "mmt serve (pid $MMT_PID) at $MMT_URL, log $MMT_LOG"
}

# mmt_serve_submit FILE: uploads FILE, prints the job id.
mmt_serve_submit() {
  local file=$1 body code
  body=$(mktemp)
  code=$(curl -sS -o "$body" -w '%{http_code}' \
    -H "Authorization: Bearer $MMT_TOKEN" \
    -F "audio=@$file;type=audio/wav" -F "patient_reference=Patient/test-1" \
    "$MMT_URL/v1/jobs")
  if [[ $code != 200 && $code != 202 ]]; then
    echo "error: POST /v1/jobs answered $code: $(cat "$body")" >&2
    rm -f "$body"
    return 1
  fi
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$body"
  rm -f "$body"
}

# mmt_serve_stop: SIGTERM, wait for the drain (MMT_SERVE_STOP_TIMEOUT s,
# default 60), then SIGKILL. Returns the server's exit status (137 if killed).
mmt_serve_stop() {
  local pid=${MMT_PID:-} status=0
  MMT_PID=
  [[ -n $pid ]] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || status=$?; return $status; }
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + ${MMT_SERVE_STOP_TIMEOUT:-60}))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "warning: mmt serve (pid $pid) still draining after ${MMT_SERVE_STOP_TIMEOUT:-60} s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  wait "$pid" 2>/dev/null || status=$?
  return $status
}
