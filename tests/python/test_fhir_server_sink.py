"""Every DocumentReference the FHIR server sink sends validates as R4.

A FHIR-like HTTP server (http.server in a thread) validates each POSTed resource
with `fhir.resources` (R4B models: structure, types, base64, required elements)
and checks the code bindings `fhir.resources` does not (status, docStatus,
attachment contentType). It answers like a FHIR server doing conditional create:
201 for a new identifier, 200 for an existing one, 422 with an OperationOutcome
for an invalid resource.

The Rust sink is driven by the integration test `send_to_external_server` in
`connectors/tests/fhir_server.rs`, which sends a few realistic completed jobs
(each twice) to `MMT_TEST_FHIR_URL`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from fhir.resources.R4B.documentreference import DocumentReference

REPO = Path(__file__).resolve().parents[2]
FHIR_JSON = "application/fhir+json"
JOB_SYSTEM = "urn:mmt:job"
N_JOBS = 4  # realistic_jobs() in connectors/tests/fhir_server.rs

DOCUMENT_STATUS = {"current", "superseded", "entered-in-error"}
COMPOSITION_STATUS = {"preliminary", "final", "amended", "entered-in-error"}


@dataclass
class Received:
    """What the server saw."""

    created: dict[str, dict] = field(default_factory=dict)  # job id -> resource
    duplicates: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    validated: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def check_document(doc: dict, if_none_exist: str | None) -> str:
    """Validates one POSTed resource; returns its job id or raises ValueError."""
    resource = DocumentReference.model_validate(doc)  # pydantic.ValidationError is a ValueError
    if "id" in doc:
        raise ValueError("a create must not carry an id")
    # Bindings fhir.resources does not check.
    if resource.status not in DOCUMENT_STATUS or resource.status != "current":
        raise ValueError(f"status {resource.status!r}")
    if resource.docStatus not in COMPOSITION_STATUS or resource.docStatus != "final":
        raise ValueError(f"docStatus {resource.docStatus!r}")
    if not resource.content:
        raise ValueError("no content")
    for content in resource.content:
        attachment = content.attachment
        if not (attachment.contentType or "").startswith("text/plain"):
            raise ValueError(f"contentType {attachment.contentType!r}")
        raw = doc["content"][0]["attachment"].get("data")
        text = base64.b64decode(raw, validate=True) if raw else b""
        text.decode("utf-8")
        if attachment.size != len(text):
            raise ValueError("attachment size does not match its data")
    ids = [i for i in resource.identifier or [] if i.system == JOB_SYSTEM]
    if len(ids) != 1 or not ids[0].value:
        raise ValueError("exactly one job identifier expected")
    job_id = ids[0].value
    if if_none_exist is None or unquote(if_none_exist) != f"identifier={JOB_SYSTEM}|{job_id}":
        raise ValueError(f"If-None-Exist {if_none_exist!r} does not name the job")
    for coding in resource.type.coding:
        if coding.system != "http://loinc.org" or not coding.code:
            raise ValueError("type is not a LOINC code")
    if resource.subject is not None and not resource.subject.reference.startswith("Patient/"):
        raise ValueError("subject is not a Patient reference")
    return job_id


def make_server(received: Received) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def answer(self, status: int, body: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if data:
                self.send_header("Content-Type", FHIR_JSON)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def outcome(self, status: int, code: str, diagnostics: str) -> None:
            self.answer(status, {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
            })

        def do_GET(self) -> None:
            if self.path == "/fhir/metadata":
                self.answer(200, {
                    "resourceType": "CapabilityStatement", "status": "active",
                    "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
                    "date": "2024-01-01",
                })
            else:
                self.outcome(404, "not-found", self.path)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/fhir/DocumentReference":
                with received.lock:
                    received.failures.append(f"POST to {self.path}")
                return self.outcome(404, "not-found", self.path)
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            accept = self.headers.get("Accept") or ""
            if content_type != FHIR_JSON or FHIR_JSON not in accept:
                with received.lock:
                    received.failures.append(f"media types {content_type!r} / {accept!r}")
                return self.outcome(415, "not-supported", content_type)
            try:
                doc = json.loads(body)
                job_id = check_document(doc, self.headers.get("If-None-Exist"))
            except ValueError as error:
                with received.lock:
                    received.failures.append(str(error))
                return self.outcome(422, "invalid", str(error))
            with received.lock:
                received.validated += 1
                if job_id in received.created:
                    received.duplicates.append(job_id)
                    existing = dict(received.created[job_id], id=job_id)
                    return self.answer(200, existing)
                received.created[job_id] = doc
            self.send_response(201)
            self.send_header("Location", f"/fhir/DocumentReference/{job_id}/_history/1")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def _cargo_command() -> list[str]:
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(cargo).is_file():
        message = "cargo not found: the Rust sink cannot be driven"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (required under CI=true)")
        pytest.skip(message)
    args = ["-p", "mmt-connectors", "--test", "fhir_server"]
    if shutil.which("cargo-nextest"):
        return [cargo, "nextest", "run", "--release", *args, "--no-capture",
                "send_to_external_server"]
    return [cargo, "test", "--release", *args, "--", "--exact", "send_to_external_server",
            "--nocapture"]


@pytest.fixture(scope="module")
def received() -> Received:
    """Starts the server, runs the Rust sink against it, returns what arrived."""
    received = Received()
    server = make_server(received)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = dict(os.environ, MMT_TEST_FHIR_URL=f"http://127.0.0.1:{server.server_port}/fhir")
        run = subprocess.run(_cargo_command(), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=3600)
        assert run.returncode == 0, f"Rust sink failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    finally:
        server.shutdown()
        server.server_close()
    return received


def test_every_sent_resource_validates_as_r4(received: Received) -> None:
    assert received.failures == []
    assert received.validated == 2 * N_JOBS  # each job sent twice


def test_each_job_is_created_once(received: Received) -> None:
    assert len(received.created) == N_JOBS
    assert sorted(received.duplicates) == sorted(received.created)


def test_documents_carry_transcripts_and_references(received: Received) -> None:
    docs = list(received.created.values())
    texts = [
        base64.b64decode(d["content"][0]["attachment"]["data"]).decode("utf-8")
        for d in docs if "data" in d["content"][0]["attachment"]
    ]
    assert any("chest pain" in t for t in texts)
    assert any("café" in t for t in texts), "non-ASCII survives base64"
    # The empty transcript has no data (FHIR strings are never empty) and size 0.
    empty = [d for d in docs if "data" not in d["content"][0]["attachment"]]
    assert len(empty) == 1 and empty[0]["content"][0]["attachment"]["size"] == 0
    with_subject = [d for d in docs if "subject" in d]
    assert len(with_subject) == 3
    with_encounter = [d for d in docs if "context" in d]
    assert all(e["reference"].startswith("Encounter/")
               for d in with_encounter for e in d["context"]["encounter"])


def test_the_checks_catch_bad_bindings() -> None:
    """The server's own checks reject what fhir.resources lets through."""
    good = {
        "resourceType": "DocumentReference", "status": "current", "docStatus": "final",
        "identifier": [{"system": JOB_SYSTEM, "value": "abc"}],
        "type": {"coding": [{"system": "http://loinc.org", "code": "34109-9"}]},
        "content": [{"attachment": {"contentType": "text/plain", "data": "aGk=", "size": 2}}],
    }
    header = f"identifier={JOB_SYSTEM}|abc"
    assert check_document(good, header) == "abc"
    for broken in (
        dict(good, status="bogus"),
        dict(good, docStatus="draft"),
        dict(good, id="abc"),
        dict(good, content=[{"attachment": {"contentType": "application/pdf"}}]),
        dict(good, content=[{"attachment": {"contentType": "text/plain", "data": "aGk=",
                                            "size": 5}}]),
        dict(good, unknown=1),
    ):
        with pytest.raises(ValueError):
            check_document(broken, header)
    with pytest.raises(ValueError):
        check_document(good, f"identifier={JOB_SYSTEM}|other")
