"""The status page in a real browser: `mmt serve`, one transcribed job, and
Debian's headless Chromium rendering `/` with the token in the URL fragment.

Needs target/release/mmt (with `serve`) and `chromium` (scripts/setup.sh
--dev installs it). Without them the tests skip, except under CI=true, where
they fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MMT = Path(os.environ.get("MMT_BIN", REPO / "target" / "release" / "mmt"))
CHROMIUM = os.environ.get("MMT_CHROMIUM", "chromium")
SAMPLE = REPO / "samples" / "librispeech_61-70968-0002.wav"
WINDOW = (1280, 900)
JOB_TIMEOUT_S = 120
START_TIMEOUT_S = 120
LISTENING = re.compile(r"serving the job API on (http://[0-9.]+:[0-9]+)")
FAILED_STATUSES = {"failed", "dead_lettered", "deleted", "cancelled"}


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def _mmt_serve_available() -> bool:
    if not MMT.is_file():
        return False
    probe = subprocess.run(
        [str(MMT), "serve", "--help"], capture_output=True, cwd=REPO, check=False
    )
    return probe.returncode == 0


@dataclass
class Server:
    url: str
    token: str
    log: Path
    process: subprocess.Popen

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict | bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                status, raw, kind = response.status, response.read(), response.headers.get_content_type()
        except urllib.error.HTTPError as err:
            status, raw, kind = err.code, err.read(), err.headers.get_content_type()
        if kind.endswith("json"):
            return status, json.loads(raw)
        return status, raw

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`mmt serve` on a fresh folder and an ephemeral port; stopped with SIGTERM."""
    if not _mmt_serve_available():
        _missing(f"{MMT} with the 'serve' subcommand is not built (make setup-dev)")
    if shutil.which(CHROMIUM) is None:
        _missing(f"{CHROMIUM!r} is not installed (scripts/setup.sh --dev installs Debian's chromium)")
    work = tmp_path_factory.mktemp("serve")
    env = dict(os.environ)
    env["INTERNAL_JWT_SECRET"] = secrets.token_urlsafe(32)
    log = work / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(MMT), "serve", "--listen", "127.0.0.1:0", "--out", str(work / "data"),
             "--tenant-rate", "1000", "--tenant-burst", "1000"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        url = None
        while url is None:
            found = LISTENING.search(log.read_text(errors="replace"))
            if found:
                url = found.group(1)
            elif process.poll() is not None:
                pytest.fail(f"mmt serve exited with {process.returncode} before listening:\n"
                            + log.read_text(errors="replace")[-3000:])
            elif time.monotonic() > deadline:
                pytest.fail("mmt serve did not report its address:\n"
                            + log.read_text(errors="replace")[-3000:])
            else:
                time.sleep(0.2)
        token = subprocess.run(
            [str(MMT), "token", "--tenant", "clinic-a", "--role", "submitter",
             "--role", "reader", "--role", "admin", "--ttl", "3600"],
            cwd=REPO, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        yield Server(url=url, token=token, log=log, process=process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _multipart(fields: dict[str, str], file_field: str, path: Path) -> tuple[bytes, str]:
    boundary = "mmt-" + uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    parts.append(
        (f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
         f'filename="{path.name}"\r\nContent-Type: audio/wav\r\n\r\n').encode()
        + path.read_bytes() + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def completed_job(server: Server) -> dict:
    """One sample clip, submitted and transcribed."""
    body, content_type = _multipart({"patient_reference": "Patient/status-page-1"}, "audio", SAMPLE)
    status, job = server.request("POST", "/v1/jobs", body, {"Content-Type": content_type})
    assert status in (200, 202), f"POST /v1/jobs answered {status}: {job!r}"
    assert isinstance(job, dict) and job.get("id"), job
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        status, job = server.request("GET", f"/v1/jobs/{job['id']}")
        assert status == 200, f"GET /v1/jobs/{{id}} answered {status}: {job!r}"
        if job["status"] == "completed":
            return job
        assert job["status"] not in FAILED_STATUSES, (
            f"the job ended {job['status']}: {job}\n{server.log_tail()}")
        assert time.monotonic() < deadline, (
            f"the job is still {job['status']} after {JOB_TIMEOUT_S} s\n{server.log_tail()}")
        time.sleep(1)


def _chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=8000",
        "--hide-scrollbars", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", *mode, url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (
        f"chromium exited with {result.returncode}: {result.stderr[-2000:]}")
    return result


class _Dom(HTMLParser):
    """What the assertions need from the dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self.job_rows = 0
        self.badges: list[tuple[str, str]] = []
        self._open: list[tuple[str, str | None]] = []   # (tag, id)
        self._badge: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        ident = attributes.get("id")
        if ident:
            self.elements[ident] = attributes
            self.text.setdefault(ident, "")
        classes = (attributes.get("class") or "").split()
        if tag == "tr" and "job" in classes:
            self.job_rows += 1
        if tag == "span" and "status" in classes:
            self._badge = " ".join(classes)
            self.badges.append((self._badge, ""))
        self._open.append((tag, ident))

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                break
        if tag == "span":
            self._badge = None

    def handle_data(self, data):
        for _, ident in self._open:
            if ident:
                self.text[ident] += data
        if self._badge is not None:
            classes, text = self.badges[-1]
            self.badges[-1] = (classes, text + data)


def _dom(html: str) -> _Dom:
    dom = _Dom()
    dom.feed(html)
    return dom


def _png_pixels(path: Path) -> np.ndarray:
    """Decodes an 8-bit, non-interlaced PNG (what Chromium writes) to H×W×C."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + chunk) == crc, f"bad CRC in the {kind!r} chunk"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header is not None, "no IHDR chunk"
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    assert depth == 8 and channels and interlace == 0, f"unsupported PNG layout {header}"
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    assert raw.size == height * (stride + 1), "truncated image data"
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:                                  # None
            current = line.copy()
        elif kind == 1:                                # Sub: running sum per channel
            current = np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:                                # Up
            current = line + previous
        elif kind in (3, 4):                           # Average, Paeth: sequential
            current = bytearray(stride)
            up = previous.tolist()
            filt = line.tolist()
            for x in range(stride):
                left = current[x - channels] if x >= channels else 0
                if kind == 3:
                    current[x] = (filt[x] + ((left + up[x]) >> 1)) & 0xFF
                else:
                    upper_left = up[x - channels] if x >= channels else 0
                    p = left + up[x] - upper_left
                    pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - upper_left)
                    pred = left if pa <= pb and pa <= pc else (up[x] if pb <= pc else upper_left)
                    current[x] = (filt[x] + pred) & 0xFF
            current = np.frombuffer(bytes(current), dtype=np.uint8)
        else:
            raise AssertionError(f"unknown PNG filter {kind} in row {y}")
        out[y] = current
        previous = current
    return out.reshape(height, width, channels)


def test_status_page_renders_the_completed_job(server: Server, completed_job: dict, tmp_path: Path):
    url = f"{server.url}/#token={server.token}"

    html = _chromium(url, tmp_path / "profile-dom", "--dump-dom").stdout
    dom = _dom(html)
    assert "dashboard" in dom.elements, html[:2000]
    assert "hidden" not in dom.elements["dashboard"], (
        f"the dashboard stayed hidden (login error: {dom.text.get('login-error')!r}, "
        f"refresh error: {dom.text.get('error')!r})")
    assert dom.job_rows >= 1, f"no <tr class=\"job\"> rows in the DOM:\n{html[-3000:]}"
    completed = [text for classes, text in dom.badges
                 if classes.split() == ["status", "completed"]]
    assert completed and completed[0].strip() == "completed", dom.badges
    assert completed_job["id"][:16] in html, "the submitted job is not listed"
    for card in ("queue-depth", "completed", "throughput", "failed"):
        value = dom.text.get(card, "").strip()
        assert value and value != "–", f"card #{card} is not filled: {value!r}"
        assert re.fullmatch(r"\d+(\.\d+)?", value), f"card #{card} is not a number: {value!r}"
    assert int(dom.text["completed"]) >= 1
    assert dom.text.get("error", "").strip() == "", dom.text["error"]

    screenshot = tmp_path / "status-page.png"
    _chromium(url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    print(f"\nstatus page screenshot: {screenshot}")
    assert screenshot.is_file() and screenshot.stat().st_size > 0
    pixels = _png_pixels(screenshot)
    height, width, channels = pixels.shape
    assert (width, height) == WINDOW, f"screenshot is {width}x{height}, expected {WINDOW}"
    colours = np.unique(pixels.reshape(-1, channels), axis=0)
    assert len(colours) > 16, f"the screenshot has only {len(colours)} colour(s): not a render"
    # The header bar (#1d3557) across the top, the page (#f5f6f8) below it.
    header = pixels[5, width // 2, :3].astype(int)
    assert np.abs(header - (0x1D, 0x35, 0x57)).max() <= 8, f"no header bar: {header}"
    page = pixels[height - 5, width - 5, :3].astype(int)
    assert np.abs(page - (0xF5, 0xF6, 0xF8)).max() <= 8, f"no page background: {page}"
    # Text, badges and the table: many more than the two flat colours.
    rendered_rows = sum(1 for y in range(60, height) if len(np.unique(pixels[y].reshape(-1, channels), axis=0)) > 2)
    assert rendered_rows > 40, f"only {rendered_rows} rows below the header have content"


def test_status_page_without_a_token_shows_the_login_form(server: Server, tmp_path: Path):
    html = _chromium(server.url + "/", tmp_path / "profile", "--dump-dom").stdout
    dom = _dom(html)
    assert "login" in dom.elements, html[:2000]
    assert "hidden" not in dom.elements["login"], "the login form is hidden"
    assert "hidden" in dom.elements.get("dashboard", {"hidden": ""}), "the dashboard is shown"
    assert dom.job_rows == 0, "job rows shown without a token"
    assert "token" in dom.elements, "no token input"
