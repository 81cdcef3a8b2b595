# The targets the README and .ci/run use. Set-up is idempotent: a second run
# only checks stamps and rebuilds what changed.
SHELL := /bin/bash
MMT := target/release/mmt
# scripts/setup.sh --dev unpacks promtool into .tools/bin unless one is on PATH.
PROMTOOL ?= $(shell command -v promtool || echo .tools/bin/promtool)
CARGO_TEST := $(shell command -v cargo-nextest >/dev/null && echo "cargo nextest run --no-fail-fast" || echo "cargo test")

.PHONY: setup setup-dev services demo test lint fmt rust-test python-test api-contract alerts-test bench bench-pipeline bench-api clean-model deploy-test deny chart-alerts

setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh --dev

## Run the dataflow over the sample clips; show a FHIR document and the audit trail.
demo: setup
	rm -rf demo-out
	$(MMT) run --input samples --out demo-out
	@echo; echo "== first FHIR DocumentReference (demo-out/fhir/DocumentReference.ndjson) =="
	@head -n 1 demo-out/fhir/DocumentReference.ndjson
	@echo; echo "== audit trail (demo-out/audit.jsonl) =="
	@cat demo-out/audit.jsonl

## Everything CI checks: formatting, lints, Rust and Python tests (the
## integration tests use PostgreSQL, MariaDB, Redis and RabbitMQ on 127.0.0.1,
## started here if down; Kafka is tansu from the dev virtualenv), and the
## API contract check, the alert rules' promtool tests and the deployment
## checks (deploy-test).
test: setup-dev services lint alerts-test rust-test python-test api-contract deploy-test

services:
	scripts/services.sh

lint:
	cargo fmt --all --check
	cargo clippy --release --locked --all-targets -- -D warnings

rust-test:
	$(CARGO_TEST) --release --locked --workspace

python-test:
	MMT_MODEL_DIR=$(CURDIR)/models/tiny.en .venv/bin/python -m pytest -q tests/python

## The alert rules and the dashboard's queries parse, and each alert's firing
## and non-firing unit tests (alerts/tests) pass; tests/alert_metrics.rs
## (rust-test) checks the metric names of both against the code.
alerts-test:
	$(PROMTOOL) check rules alerts/alerts_prometheus.yml
	$(PROMTOOL) test rules alerts/tests/*.yml
	@rules=$$(mktemp --suffix=.yml) && trap 'rm -f "$$rules"' EXIT && \
	  python3 alerts/dashboard_rules.py >"$$rules" && $(PROMTOOL) check rules "$$rules"

## schemathesis against `mmt serve`'s /openapi.json: no request may get a 5xx.
api-contract:
	scripts/api_contract.sh

## Side-by-side benchmark against faster-whisper (needs ../shared/eval).
bench: setup-dev
	.venv/bin/python benches/compare_peer.py

## The full pipeline (mmt run) against faster-whisper, sequential and batched, in one run.
bench-pipeline: setup-dev
	.venv/bin/python benches/peer_pipeline.py --repeats 2

## Load benchmark of the job API with wrk (GET a job, idempotent and new uploads).
bench-api:
	benches/api_load.sh

fmt:
	cargo fmt --all

clean-model:
	rm -rf models

## The deployment: the Helm chart rendered by Helm's engine and every manifest
## validated against the Kubernetes, KEDA and Prometheus Operator schemas, each
## flag of the guide's `helm upgrade --install` command, `ENV=prod mmt check` on
## the chart's environment; actionlint on .github/workflows; hadolint on the
## Dockerfile; cargo deny. (DEV_VENV: a virtualenv with requirements-dev.txt.)
DEV_VENV ?= .venv
deploy-test: deny
	$(DEV_VENV)/bin/python -m pytest -q deploy/tests
	$(DEV_VENV)/bin/actionlint
	$(DEV_VENV)/bin/hadolint Dockerfile
	@echo "deploy-test: chart, workflow and Dockerfile checks passed"

## Licences, bans and sources of the Cargo.lock tree (deny.toml). Advisories
## need the RustSec database from GitHub: CI runs them, this machine cannot.
deny:
	cargo deny check licenses bans sources

## Copies the alert rules into the chart, where Helm can read them (a chart
## cannot read files outside its folder); deploy/tests checks that they match.
chart-alerts:
	mkdir -p deploy/helm/mmt/files
	cp alerts/alerts_prometheus.yml deploy/helm/mmt/files/alerts_prometheus.yml
