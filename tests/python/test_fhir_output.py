"""The FHIR output of `mmt run` validates as R4 DocumentReference resources.

`fhir.resources` (R4B models) checks structure: unknown fields, types, base64,
required elements. It does not check code bindings, so those are asserted here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fhir.resources.R4B.documentreference import DocumentReference

REPO = Path(__file__).resolve().parents[2]
MMT = REPO / "target" / "release" / "mmt"

DOCUMENT_STATUS = {"current", "superseded", "entered-in-error"}
COMPOSITION_STATUS = {"preliminary", "final", "amended", "entered-in-error"}


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs the pipeline over the shipped samples, one of them with references."""
    if not MMT.is_file():
        pytest.fail(f"{MMT} is missing: run `make setup` first")
    inbox = tmp_path_factory.mktemp("inbox")
    out = tmp_path_factory.mktemp("out")
    for clip in sorted((REPO / "samples").glob("*.wav")):
        shutil.copy(clip, inbox / clip.name)
    (inbox / "dict_005.wav.json").write_text(
        json.dumps({"tenant": "clinic-a", "patient": "Patient/123", "encounter": "Encounter/456"})
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "AUDIT_LOG_FILE")}
    subprocess.run(
        [str(MMT), "run", "--no-progress", "--input", str(inbox), "--out", str(out)],
        check=True, cwd=REPO, env=env, capture_output=True, timeout=600,
    )
    return out


def documents(out: Path) -> list[dict]:
    lines = (out / "fhir" / "DocumentReference.ndjson").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_every_document_validates_as_r4(run_output: Path) -> None:
    docs = documents(run_output)
    assert len(docs) == 5
    for doc in docs:
        resource = DocumentReference.model_validate(doc)
        assert resource.status in DOCUMENT_STATUS
        assert resource.docStatus in COMPOSITION_STATUS
        assert resource.identifier[0].value == doc["id"]
        attachment = resource.content[0].attachment
        assert attachment.contentType.startswith("text/plain")
        text = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode("utf-8")
        assert text.strip(), "a transcript for every sample"


def test_references_come_from_the_sidecar(run_output: Path) -> None:
    with_refs = [d for d in documents(run_output) if "subject" in d]
    assert len(with_refs) == 1
    assert with_refs[0]["subject"]["reference"] == "Patient/123"
    assert with_refs[0]["context"]["encounter"][0]["reference"] == "Encounter/456"


def test_audit_log_masks_phi(run_output: Path) -> None:
    audit = (run_output / "audit.jsonl").read_text()
    assert "Patient/123" not in audit and "Encounter/456" not in audit
    for doc in documents(run_output):
        text = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode("utf-8")
        assert text not in audit
    events = [json.loads(line) for line in audit.splitlines()]
    assert sum(e["action"] == "job_completed" for e in events) == 5
