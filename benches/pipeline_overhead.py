#!/usr/bin/env python3
"""Throughput of the dataflow (`mmt run`) beside `mmt transcribe` on the same audio.

Prints, for the long evaluation file and for a folder of short dictations:
x-realtime and WER of `mmt transcribe`, of `mmt run` (batched across jobs),
and of `mmt run --batch-size 1`; the dataflow's overhead in percent and the gain
from cross-job batching. Needs ../shared/eval (an extended benchmark: it says
so and exits 0 when the folder is absent).

    .venv/bin/python benches/pipeline_overhead.py [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benches"))
from wer import corpus_wer  # noqa: E402
from machine import cpu_model  # noqa: E402

SHARED_EVAL = Path(os.environ.get("MMT_SHARED_EVAL", REPO.parent / "shared" / "eval"))
TENANT = "default"


def job_id(tenant: str, audio: bytes) -> str:
    """The pipeline's job id: tenant and content hash (see operators/src/identity.rs)."""
    content = hashlib.sha256(audio).hexdigest()
    return hashlib.sha256(tenant.encode() + b"\0" + content.encode()).hexdigest()[:32]


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line]


def timed(command: list[str]) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "AUDIT_LOG_FILE")}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return wall, done.stdout


def transcribe_texts(mmt: str, files: list[Path], threads: int) -> tuple[float, dict[str, str]]:
    wall, out = timed([mmt, "transcribe", "--format", "json", "--threads", str(threads), *map(str, files)])
    texts = {}
    for line in out.splitlines():
        record = json.loads(line)
        texts[Path(record["file"]).name] = record["text"]
    return wall, texts


def run_texts(mmt: str, files: list[Path], threads: int, batch: int) -> tuple[float, dict[str, str]]:
    with tempfile.TemporaryDirectory() as inbox, tempfile.TemporaryDirectory() as out:
        for file in files:
            shutil.copy(file, Path(inbox) / file.name)
        wall, _ = timed([mmt, "run", "--no-progress", "--workers", "1", "--threads", str(threads),
                         "--batch-size", str(batch), "--input", inbox, "--out", out])
        documents = {}
        for line in (Path(out) / "fhir" / "DocumentReference.ndjson").read_text().splitlines():
            doc = json.loads(line)
            data = doc["content"][0]["attachment"].get("data", "")
            documents[doc["id"]] = base64.b64decode(data).decode("utf-8") if data else ""
    by_name = {f.name: documents.get(job_id(TENANT, f.read_bytes()), "") for f in files}
    return wall, by_name


def measure(label: str, files: list[Path], references: dict[str, str], audio_seconds: float,
            args: argparse.Namespace) -> None:
    rows = []
    runs = [
        ("mmt transcribe", lambda: transcribe_texts(args.mmt, files, args.threads)),
        (f"mmt run (batch {args.batch_size})", lambda: run_texts(args.mmt, files, args.threads, args.batch_size)),
        ("mmt run (batch 1)", lambda: run_texts(args.mmt, files, args.threads, 1)),
    ]
    for name, run in runs:
        walls = []
        for _ in range(args.repeats):
            wall, texts = run()
            walls.append(wall)
        wall = sorted(walls)[len(walls) // 2]
        names = sorted(references)
        wer = corpus_wer((references[n], texts.get(n, "")) for n in names).rate
        rows.append((name, wall, audio_seconds / wall, 100 * wer))
    print(f"\n== {label}: {len(files)} file(s), {audio_seconds:.1f} s of audio ==")
    print(f"{'engine':28} {'wall s':>8} {'x-realtime':>11} {'WER %':>7}")
    for name, wall, xrt, wer in rows:
        print(f"{name:28} {wall:8.2f} {xrt:10.2f}x {wer:7.2f}")
    base, batched, single = rows
    print(f"dataflow overhead vs transcribe: {100 * (batched[1] - base[1]) / base[1]:+.1f}% wall time")
    print(f"cross-job batching gain (batch {args.batch_size} vs 1): {single[1] / batched[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mmt", default=str(REPO / "target" / "release" / "mmt"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if not SHARED_EVAL.is_dir():
        print(f"{SHARED_EVAL} is absent: this benchmark needs the shared evaluation data; skipping.")
        return
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}; threads {args.threads}")

    long_dir = SHARED_EVAL / "long"
    long_entry = manifest(long_dir)[0]
    long_file = long_dir / long_entry["audio"]
    measure("long", [long_file], {long_file.name: long_entry["text"]}, float(long_entry["seconds"]), args)

    short_dir = SHARED_EVAL / "dictation"
    entries = manifest(short_dir)
    files = [short_dir / e["audio"] for e in entries]
    measure("short dictations", files, {e["audio"]: e["text"] for e in entries},
            sum(float(e["seconds"]) for e in entries), args)


if __name__ == "__main__":
    main()
