#!/usr/bin/env python3
"""Peak and spread of `mmt serve`'s RSS while clients upload long recordings.

A measurement, not a test (issue 14's "bounded intake" check): it starts
`mmt serve` on a fresh folder with a small queue, uploads the same long
recording UPLOADS times (each copy made distinct by changing a few PCM bytes,
alternating two tenants), samples the server's VmRSS from /proc every 0.25 s,
then stops the server and starts it again on the same folder to sample the
restart with its backlog.

It reports the status codes (202 accepted, 429 over a tenant's share, 503 queue
full, each checked for Retry-After), and RSS median / p5 / p95 / max during the
uploads and after the restart. The recording keeps transcribing in the
background during the uploads, as it would in service.

Usage (from the repository root, after `make setup-dev`):
    benches/serve_intake_rss.py [--minutes 50] [--uploads 200] [--max-queued 50]
                                [--keyring] [--keep] [--binary target/release/mmt]
The recording is built from ../shared/eval/long/dictation_10min.wav repeated,
or from samples/ when ../shared/eval is absent (the script says which).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import pathlib
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave

ROOT = pathlib.Path(__file__).resolve().parent.parent
EVAL_LONG = ROOT.parent / "shared" / "eval" / "long" / "dictation_10min.wav"
SAMPLE = ROOT / "samples" / "librispeech_61-70968-0002.wav"


def build_recording(minutes: float) -> tuple[bytes, int, str]:
    """A 16 kHz mono WAV of about `minutes`, and the byte offset of its PCM."""
    source = EVAL_LONG if EVAL_LONG.exists() else SAMPLE
    with wave.open(str(source)) as clip:
        params = clip.getparams()
        pcm = clip.readframes(clip.getnframes())
    seconds_per_copy = len(pcm) / (params.framerate * params.sampwidth * params.nchannels)
    copies = max(1, round(minutes * 60 / seconds_per_copy))
    out = io.BytesIO()
    with wave.open(out, "wb") as joined:
        joined.setparams(params)
        joined.writeframes(pcm * copies)
    data = out.getvalue()
    return data, data.index(b"data") + 8, f"{source.name} x{copies}"


class RssSampler(threading.Thread):
    """VmRSS of one process, in MiB, every `interval` seconds, with phase labels."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.phase = "start"
        self.samples: list[tuple[str, float]] = []
        self.running = True

    def run(self) -> None:
        status = pathlib.Path(f"/proc/{self.pid}/status")
        while self.running:
            try:
                match = re.search(r"VmRSS:\s+(\d+) kB", status.read_text())
            except OSError:
                return
            if match:
                self.samples.append((self.phase, int(match.group(1)) / 1024))
            time.sleep(self.interval)

    def of(self, phase: str) -> list[float]:
        return [rss for p, rss in self.samples if p == phase]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    median = statistics.median(ordered)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return (
        f"n={len(ordered)} median {median:.0f} MiB, p5 {pick(0.05):.0f}, p95 {pick(0.95):.0f}, "
        f"min {ordered[0]:.0f} ({(ordered[0] / median - 1) * 100:+.1f} %), "
        f"max {ordered[-1]:.0f} ({(ordered[-1] / median - 1) * 100:+.1f} %)"
    )


class Server:
    def __init__(self, binary: str, folder: pathlib.Path, env: dict[str, str], name: str) -> None:
        log = folder / f"{name}.log"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--out", str(folder / "data"),
             "--tenant-rate", "100000", "--tenant-burst", "100000"],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env, cwd=ROOT)
        self.port = self._wait_for_port(log)

    def _wait_for_port(self, log: pathlib.Path) -> int:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = re.findall(rb"serving the job API on http://127\.0\.0\.1:(\d+)", log.read_bytes())
            if found:
                return int(found[-1])
            if self.proc.poll() is not None:
                sys.exit(f"mmt serve exited with {self.proc.returncode}; see {log}")
            time.sleep(0.2)
        sys.exit("mmt serve did not start listening within 180 s")

    def request(self, method: str, path: str, token: str, body: bytes = b"",
                content_type: str | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        headers = {"Authorization": f"Bearer {token}"}
        if content_type:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def multipart(audio: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"patient_reference\"\r\n\r\n"
            f"Patient/bench-1\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; "
            f"filename=\"dictation.wav\"\r\nContent-Type: audio/wav\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + audio + tail, f"multipart/form-data; boundary={boundary}"


def token(binary: str, env: dict[str, str], tenant: str) -> str:
    return subprocess.run(
        [binary, "token", "--tenant", tenant, "--role", "submitter", "--role", "reader",
         "--ttl", "7200"], env=env, cwd=ROOT, check=True, capture_output=True,
        text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=50)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--max-queued", type=int, default=50)
    parser.add_argument("--restart-seconds", type=float, default=30)
    parser.add_argument("--settle-seconds", type=float, default=30,
                        help="also report the upload window without its first seconds")
    parser.add_argument("--keyring", action="store_true", help="seal uploads (MMT_ENCRYPTION_KEYS)")
    parser.add_argument("--keep", action="store_true", help="keep the folder (uploads, logs, rss.json)")
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "mmt"))
    args = parser.parse_args()

    audio, pcm_at, made_from = build_recording(args.minutes)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="mmt-intake-rss."))
    env = dict(os.environ, INTERNAL_JWT_SECRET=secrets.token_hex(24),
               MMT_API_MAX_QUEUED_JOBS=str(args.max_queued))
    env.pop("RUST_LOG", None)
    if args.keyring:
        env["MMT_ENCRYPTION_KEYS"] = str(folder / "keyring.json")
        subprocess.run([args.binary, "keys", "rotate"], env=env, cwd=ROOT, check=True,
                       capture_output=True)
    print(f"recording: {made_from}, {len(audio) / 2**20:.1f} MiB; folder {folder}")
    tokens = [token(args.binary, env, t) for t in ("clinic-a", "clinic-b")]

    server = Server(args.binary, folder, env, "serve")
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    sampler.phase = "idle"
    time.sleep(5)
    sampler.phase = "uploads"
    codes: dict[int, int] = {}
    missing_retry_after = 0
    started = time.monotonic()
    for index in range(args.uploads):
        distinct = bytearray(audio)
        distinct[pcm_at:pcm_at + 16] = index.to_bytes(16, "little")
        body, content_type = multipart(bytes(distinct))
        del distinct
        status, headers, _ = server.request("POST", "/v1/jobs", tokens[index % 2], body, content_type)
        codes[status] = codes.get(status, 0) + 1
        if status in (429, 503) and "retry-after" not in headers:
            missing_retry_after += 1
    upload_seconds = time.monotonic() - started
    sampler.phase = "drain"
    exit_status = server.stop()
    sampler.running = False
    sampler.join()

    restarted = Server(args.binary, folder, env, "serve-restart")
    second = RssSampler(restarted.proc.pid)
    second.phase = "restart"
    second.start()
    time.sleep(args.restart_seconds)
    status, _, payload = restarted.request("GET", "/v1/status", tokens[0])
    second.running = False
    restarted.stop()

    print(f"uploads: {args.uploads} in {upload_seconds:.0f} s; status codes {dict(sorted(codes.items()))}; "
          f"refusals without Retry-After: {missing_retry_after}")
    print(f"first server stopped with exit status {exit_status}")
    print(f"RSS idle (model loaded): {summary(sampler.of('idle'))}")
    uploads = sampler.of("uploads")
    settled = uploads[int(args.settle_seconds / sampler.interval):]
    print(f"RSS during uploads:      {summary(uploads)}")
    print(f"  from {args.settle_seconds:.0f} s on:        {summary(settled)}")
    tenths = [statistics.median(uploads[i:i + max(1, len(uploads) // 10)])
              for i in range(0, len(uploads), max(1, len(uploads) // 10))]
    print("  median of each tenth of the window (MiB): " + ", ".join(f"{m:.0f}" for m in tenths))
    print(f"RSS after the restart:   {summary(second.of('restart'))}")
    print(f"status after the restart ({status}): {payload.decode(errors='replace')[:400]}")
    (folder / "rss.json").write_text(json.dumps({"first": sampler.samples, "restart": second.samples}))
    if args.keep:
        print(f"kept {folder}")
    else:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
