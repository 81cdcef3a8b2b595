"""Unit tests for the pure parts of benches/peer_pipeline.py.

No model, no mmt binary and no ../shared/eval needed: the job store is a
temporary SQLite file with the columns the script reads.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))

import peer_pipeline as pp  # noqa: E402
from machine import vector_extensions  # noqa: E402

SUMMARY = """\
50 files: 50 transcribed, 0 dead-lettered, 0 duplicates, 0 already done
0.111 h of audio in 21.3 s: 18.8x realtime
documents:     /tmp/out/fhir/DocumentReference.ndjson
audit log:     /tmp/out/audit.jsonl
dead letters:  /tmp/out/dlq.jsonl
job store:     sqlite:///tmp/out/mmt.db
"""


# --------------------------------------------------------------------------
# mmt's summary line
# --------------------------------------------------------------------------


def test_parse_summary() -> None:
    summary = pp.parse_mmt_summary(SUMMARY)
    assert summary == pp.MmtSummary(
        files=50, transcribed=50, dead_lettered=0, duplicates=0, already_done=0,
        audio_hours=0.111, wall_seconds=21.3, x_realtime=18.8,
    )


def test_parse_summary_with_dead_letters_and_surrounding_noise() -> None:
    stdout = ("some log line\n"
              "  5 files: 3 transcribed, 2 dead-lettered, 1 duplicates, 4 already done  \n"
              "0.011 h of audio in 5.0 s: 8.1x realtime\n")
    summary = pp.parse_mmt_summary(stdout)
    assert summary is not None
    assert (summary.files, summary.transcribed, summary.dead_lettered) == (5, 3, 2)
    assert (summary.duplicates, summary.already_done) == (1, 4)
    assert summary.wall_seconds == 5.0 and summary.x_realtime == 8.1


def test_parse_summary_infinite_speed() -> None:
    stdout = "0 files: 0 transcribed, 0 dead-lettered, 0 duplicates, 0 already done\n" \
             "0.000 h of audio in 0.0 s: NaNx realtime\n"
    summary = pp.parse_mmt_summary(stdout)
    assert summary is not None and math.isnan(summary.x_realtime)


@pytest.mark.parametrize("stdout", [
    "",
    "0.011 h of audio in 5.0 s: 8.1x realtime\n",  # counts line missing
    "5 files: 5 transcribed, 0 dead-lettered, 0 duplicates, 0 already done\n",  # speed missing
    "5 files: 5 transcribed, 0 dead-lettered, 0 duplicates, 0 already done\n"
    "0.011 h of audio in 5.0 s: fast realtime\n",
])
def test_parse_summary_missing_or_malformed(stdout: str) -> None:
    assert pp.parse_mmt_summary(stdout) is None


# --------------------------------------------------------------------------
# WER from a job store
# --------------------------------------------------------------------------


def make_store(path: Path, rows: list[tuple[str, str, object]]) -> Path:
    """A minimal ``jobs`` table: (source, status, transcript_json or dict or None)."""
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, source TEXT NOT NULL, status TEXT NOT NULL, "
        "transcript_json TEXT)"
    )
    for index, (source, status, transcript) in enumerate(rows):
        if isinstance(transcript, dict):
            transcript = json.dumps(transcript)
        connection.execute("INSERT INTO jobs VALUES (?, ?, ?, ?)",
                           (f"job{index}", source, status, transcript))
    connection.commit()
    connection.close()
    return path


def clip(name: str, reference: str) -> pp.Clip:
    return pp.Clip(Path("/nowhere") / name, reference, 1.0)


def score_store(db: Path, clips: list[pp.Clip]) -> tuple[pp.ErrorCounts, pp.StoreTranscripts]:
    """What a run records: the store's transcripts, scored against the references."""
    store = pp.read_job_store(db, [c.name for c in clips])
    return pp.score(clips, store.texts), store


def test_store_scores(tmp_path: Path) -> None:
    db = make_store(tmp_path / "mmt.db", [
        ("a.wav", "completed", {"text": "Hello, World!", "segments": []}),
        ("b.wav", "completed", {"text": "the patient's  dose"}),
    ])
    clips = [clip("a.wav", "hello world"), clip("b.wav", "The patient's daily dose.")]
    errors, store = score_store(db, clips)
    assert store.problems == []
    assert store.texts == {"a.wav": "Hello, World!", "b.wav": "the patient's  dose"}
    # a: 0 edits of 2 words; b: one deletion ("daily") of 4 words.
    assert (errors.edits, errors.reference_words) == (1, 6)
    assert errors.rate == pytest.approx(1 / 6)


def test_store_scores_counts_missing_and_failed_jobs_as_empty(tmp_path: Path) -> None:
    db = make_store(tmp_path / "mmt.db", [
        ("a.wav", "completed", {"text": "one two"}),
        ("b.wav", "dead_lettered", None),
        ("d.wav", "completed", "not json"),
        ("unrelated.wav", "completed", {"text": "x"}),
    ])
    clips = [clip("a.wav", "one two"), clip("b.wav", "three four five"),
             clip("c.wav", "six"), clip("d.wav", "seven eight")]
    errors, store = score_store(db, clips)
    assert set(store.texts) == {"a.wav"}
    assert len(store.problems) == 3
    assert any(p.startswith("b.wav: status dead_lettered") for p in store.problems)
    assert any(p.startswith("c.wav: no job") for p in store.problems)
    assert any(p.startswith("d.wav: unreadable") for p in store.problems)
    assert (errors.edits, errors.reference_words) == (6, 8)


def test_store_scores_source_may_be_a_path_and_completed_wins(tmp_path: Path) -> None:
    db = make_store(tmp_path / "mmt.db", [
        ("/tmp/in/a.wav", "failed", None),
        ("/tmp/in/a.wav", "completed", {"text": "right"}),
    ])
    errors, store = score_store(db, [clip("a.wav", "right")])
    assert store.texts == {"a.wav": "right"} and store.problems == []
    assert errors.edits == 0


def test_store_scores_missing_text_field(tmp_path: Path) -> None:
    db = make_store(tmp_path / "mmt.db", [("a.wav", "completed", {"segments": []})])
    errors, store = score_store(db, [clip("a.wav", "two words")])
    assert store.texts == {"a.wav": ""}
    assert errors.edits == 2


# --------------------------------------------------------------------------
# Best configuration, ratios, headline
# --------------------------------------------------------------------------


def row(config: str, xrts: list[float], wers: list[float], engine: str = "faster-whisper",
        audio: float = 600.0, process_walls: tuple[float, ...] = ()) -> pp.Row:
    result = pp.Row(engine, config, audio, x_realtimes=list(xrts),
                    walls=[audio / x if x else float("nan") for x in xrts],
                    process_walls=list(process_walls), wers=list(wers),
                    reference_words=100 if wers else 0)
    return result


def test_medians() -> None:
    r = row("c", [10.0, 14.0, 11.0], [0.10, 0.12, 0.11])
    assert r.x_realtime == 11.0
    assert r.wer == pytest.approx(0.11)
    assert pp.median([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(pp.median([]))


def test_choose_best_is_fastest() -> None:
    rows = [row("seq int8", [10.0, 12.0], [0.05, 0.05]),
            row("batched int8", [20.0, 22.0], [0.09, 0.09]),
            row("seq float32", [8.0], [0.04])]
    assert pp.choose_best(rows).config == "batched int8"


def test_choose_best_tie_goes_to_lower_wer_then_first() -> None:
    rows = [row("a", [15.0], [0.10]), row("b", [15.0], [0.08]), row("c", [15.0], [0.08])]
    assert pp.choose_best(rows).config == "b"


def test_choose_best_skips_failed_rows() -> None:
    rows = [row("broken", [float("nan")], [1.0]), row("ok", [3.0], [0.2])]
    assert pp.choose_best(rows).config == "ok"
    assert pp.choose_best([row("broken", [float("nan")], [1.0])]) is None
    assert pp.choose_best([]) is None


def test_ratio() -> None:
    assert pp.ratio(30.0, 15.0) == 2.0
    assert math.isnan(pp.ratio(30.0, 0.0))
    assert math.isnan(pp.ratio(None, 2.0))
    assert math.isnan(pp.ratio(1.0, float("nan")))


def test_headline() -> None:
    mmt = row("int8 independent", [30.0, 32.0], [0.052, 0.052], engine="mmt",
              process_walls=(25.0, 24.0))
    peer = row("batched int8", [20.0], [0.05])
    result = pp.headline(mmt, peer, 0.5)
    assert result["ratio"] == pytest.approx(31.0 / 20.0)
    # process x-realtime: 600 s / median(25, 24) s
    assert result["mmt_process_x_realtime"] == pytest.approx(600 / 24.5)
    assert result["ratio_process"] == pytest.approx(600 / 24.5 / 20.0)
    assert result["wer_diff_points"] == pytest.approx(0.2)
    assert result["wer_within_tolerance"] is True
    assert (result["mmt_config"], result["peer_config"]) == ("int8 independent", "batched int8")


def test_headline_wer_tolerance_boundary() -> None:
    peer = row("p", [10.0], [0.100])
    assert pp.headline(row("m", [10.0], [0.105], engine="mmt"), peer)["wer_within_tolerance"]
    assert not pp.headline(row("m", [10.0], [0.1051], engine="mmt"), peer)["wer_within_tolerance"]
    better = pp.headline(row("m", [5.0], [0.08], engine="mmt"), peer)
    assert better["wer_within_tolerance"] and better["wer_diff_points"] == pytest.approx(-2.0)
    assert better["ratio"] == pytest.approx(0.5)


def test_headline_puts_an_interval_on_the_wer_difference_over_files() -> None:
    clips = [clip(f"{i}.wav", "the patient takes ten milligrams daily") for i in range(6)]
    mmt = row("fp32", [10.0], [0.0], engine="mmt")
    peer = row("seq float32", [5.0], [1 / 6 / 6])
    mmt.file_errors = [pp.file_errors(clips, {c.name: c.reference for c in clips})]
    # The peer gets one word wrong on one file only: its lead is chance.
    peer.file_errors = [pp.file_errors(clips, dict(
        {c.name: c.reference for c in clips}, **{"0.wav": "the patient takes ten milligram daily"}))]
    result = pp.headline(mmt, peer, 0.5, clips)
    low, high = result["wer_diff_interval_points"]
    assert low < result["wer_diff_points"] <= high <= 0.0
    assert result["wer_interval_verdict"] == "within"
    mmt.file_errors, peer.file_errors = [mmt.file_errors[0][:1]], [peer.file_errors[0][:1]]
    one_file = pp.headline(mmt, peer, 0.5, clips[:1])
    assert one_file["wer_diff_interval_points"] is None
    assert one_file["wer_interval_verdict"] == "no interval" and one_file["files"] == 1
    assert pp.headline(mmt, peer, 0.5)["wer_diff_interval_points"] is None  # no clips given


@pytest.mark.parametrize("interval, verdict", [
    ((-1.0, 0.5), "within"),
    ((0.2, 1.4), "undecided"),
    ((0.6, 2.0), "beyond"),
    (None, "no interval"),
])
def test_interval_verdict(interval, verdict: str) -> None:
    assert pp.interval_verdict(interval, 0.5) == verdict


def test_lowest_wer_row() -> None:
    rows = [row("a", [9.0], [0.30]), row("b", [3.0], [0.25]), row("c", [5.0], [])]
    assert pp.lowest_wer(rows).config == "b"
    assert pp.lowest_wer([row("c", [5.0], [])]) is None


def test_headline_without_reference() -> None:
    result = pp.headline(row("m", [10.0], [], engine="mmt"), row("p", [5.0], []))
    assert result["wer_diff_points"] is None and result["wer_within_tolerance"] is None
    assert result["ratio"] == 2.0


# --------------------------------------------------------------------------
# Configuration selection and run order
# --------------------------------------------------------------------------


def test_select_mmt_configs() -> None:
    assert [c.label for c in pp.select_mmt_configs(None)] == [c.label for c in pp.MMT_CONFIGS]
    chosen = pp.select_mmt_configs("int8, int8-conditioned-1x2,INT8_packing")
    assert [c.label for c in chosen] == ["int8", "int8 conditioned 1x2", "int8 packing"]
    with pytest.raises(ValueError):
        pp.select_mmt_configs("int4")
    with pytest.raises(ValueError):
        pp.select_mmt_configs(" , ")


def test_mmt_configs_per_target() -> None:
    long = [c.label for c in pp.MMT_CONFIGS if pp.LONG in c.targets]
    short = [c.label for c in pp.MMT_CONFIGS if pp.SET in c.targets]
    assert long == ["fp32", "int8", "int8 independent", "int8 independent b8", "int8 fast",
                    "int8 fast b3", "int8 fast b2", "int8 conditioned 1x2"]
    assert short == ["fp32", "int8", "int8 fast", "int8 packing", "int8 packing b4",
                     "int8 packing b4 no-fallback", "int8 packing 1x2"]
    by_label = {c.label: c for c in pp.MMT_CONFIGS}
    assert by_label["int8 fast"].args[:3] == (
        "--independent-chunks", "--no-fallback", "--without-timestamps")
    assert not by_label["fp32"].int8 and by_label["int8"].args == ("--no-packing",)
    assert by_label["int8 packing b4"].args == ("--packing", "--batch-size", "4")
    assert by_label["int8 packing 1x2"].args == (
        "--packing", "--workers", "1", "--threads", "2", "--batch-size", "4")


def test_parse_peer_configs() -> None:
    assert pp.parse_peer_configs(pp.DEFAULT_PEER_CONFIGS) == [
        ("seq", "int8"), ("seq", "float32"), ("batched", "int8"), ("batched", "float32")]
    assert pp.parse_peer_configs("batched:int8,seq-float32,batched-int8") == [
        ("batched", "int8"), ("seq", "float32")]
    with pytest.raises(ValueError):
        pp.parse_peer_configs("seq-int16")


def test_schedule_alternates_and_reverses() -> None:
    assert pp.interleave(["m1", "m2", "m3"], ["p1"]) == ["m1", "p1", "m2", "m3"]
    runs = pp.schedule(["m1", "m2"], ["p1", "p2"], 2)
    assert runs == ["m1", "p1", "m2", "p2", "p2", "m2", "p1", "m1"]
    assert pp.schedule(["m"], ["p"], 3) == ["m", "p", "p", "m", "m", "p"]


def test_finite_or_none() -> None:
    data = {"a": float("nan"), "b": [1.0, float("inf")], "c": (2, "x")}
    assert pp.finite_or_none(data) == {"a": None, "b": [1.0, None], "c": [2, "x"]}


def test_fastest_within_tolerance() -> None:
    peer = row("p", [10.0], [0.100])
    rows = [row("fast", [30.0], [0.110], engine="mmt"),
            row("ok", [20.0], [0.104], engine="mmt"),
            row("edge", [25.0], [0.105], engine="mmt"),
            row("slow", [5.0], [0.090], engine="mmt")]
    assert pp.fastest_within_tolerance(rows, peer, 0.5).config == "edge"
    assert pp.fastest_within_tolerance(rows, peer, 0.0).config == "slow"
    assert pp.fastest_within_tolerance(rows[:1], peer, 0.5) is None
    assert pp.fastest_within_tolerance(rows, row("p", [10.0], []), 0.5) is None


# --------------------------------------------------------------------------
# One process per core: the folder split by audio seconds
# --------------------------------------------------------------------------


def _clip(name: str, seconds: float, reference: str = "") -> pp.Clip:
    return pp.Clip(Path(f"/audio/{name}"), reference, seconds)


def test_partition_balances_seconds_and_keeps_manifest_order() -> None:
    clips = [_clip("a", 300), _clip("b", 10), _clip("c", 200), _clip("d", 90), _clip("e", 5)]
    groups = pp.partition_by_seconds(clips, 2)
    assert [[c.name for c in g] for g in groups] == [["a", "e"], ["b", "c", "d"]]
    assert sorted(c.name for g in groups for c in g) == ["a", "b", "c", "d", "e"]
    assert pp.partition_by_seconds(clips, 1) == [clips]
    assert pp.partition_by_seconds(clips[:1], 3)[1:] == [[], []]
    with pytest.raises(ValueError):
        pp.partition_by_seconds(clips, 0)


# --------------------------------------------------------------------------
# medwer: number folding and medical terms
# --------------------------------------------------------------------------


def test_medwer_folds_numbers_and_scores_medical_terms() -> None:
    pytest.importorskip("medwer")
    clips = [_clip("x.wav", 3, "Give metoprolol twenty five milligrams twice daily.")]
    exact = pp.medwer_score(clips, {"x.wav": "give metoprolol 25 milligrams twice daily"})
    assert exact is not None and exact.edits == 0 and exact.medical_reference_words >= 1
    wrong_drug = pp.medwer_score(clips, {"x.wav": "give metro pole 25 milligrams twice daily"})
    assert wrong_drug is not None and wrong_drug.medical_rate > 0
    assert wrong_drug.rate > 0
    assert pp.medwer_score(clips, {}).rate == 1.0


@pytest.mark.parametrize("flags, described", [
    ("fpu sse4_2 avx fma avx2 bmi2", "AVX2, no VNNI"),
    ("avx2 avx512f avx512bw avx512_vnni avx_vnni", "AVX-512 + VNNI"),
    ("avx2 avx512f avx512_vnni amx_tile amx_int8", "AVX-512 + VNNI + AMX"),
    ("avx2 avx_vnni", "AVX2 + VNNI"),
    ("avx2 avx512fp16", "AVX2, no VNNI"),  # whole flags: avx512fp16 is not avx512f
])
def test_vector_extensions_say_whether_int8_products_have_vnni(flags: str, described: str) -> None:
    assert vector_extensions(flags) == described


def test_record_scores_keeps_each_runs_file_errors_and_the_first_texts() -> None:
    clips = [clip("a.wav", "one two"), clip("b.wav", "three four")]
    r = pp.Row("faster-whisper", "seq float32", 2.0)
    r.record_scores(clips, {"a.wav": "one two", "b.wav": "three"})
    r.record_scores(clips, {"a.wav": "one", "b.wav": "three four"})
    r.record_scores(clips, {})  # a run that left no transcripts
    assert r.wers == [0.25, 0.25, 1.0]
    assert r.file_errors == [[pp.ErrorCounts(0, 2), pp.ErrorCounts(1, 2)],
                             [pp.ErrorCounts(1, 2), pp.ErrorCounts(0, 2)]]
    assert r.texts == {"a.wav": "one two", "b.wav": "three"}
    assert r.pooled_file_errors() == [pp.ErrorCounts(1, 4), pp.ErrorCounts(1, 4)]


def test_interval_pools_the_runs_of_a_peer_that_varies() -> None:
    """One run of the peer is lucky on every file, two are not: pooled, the
    interval no longer rests on the first run's draw alone."""
    clips = [clip(f"{i}.wav", "a b c d e f g h i j") for i in range(8)]
    exact = {c.name: c.reference for c in clips}
    one_wrong = {c.name: "a b c d e f g h i x" for c in clips}
    mmt = pp.Row("mmt", "fp32", 8.0)
    mmt.record_scores(clips, one_wrong)
    lucky_first = pp.Row("faster-whisper", "seq float32", 8.0)
    for texts in (exact, one_wrong, {c.name: "a b c d e f g h x x" for c in clips}):
        lucky_first.record_scores(clips, texts)
    first_run_only = pp.Row("faster-whisper", "seq float32", 8.0)
    first_run_only.record_scores(clips, exact)
    # Against the first run alone MMT is 10 points worse on every draw ...
    assert pp.wer_difference_interval(mmt, first_run_only) == pytest.approx((10.0, 10.0))
    # ... against the three runs pooled (10 % on average), it is level.
    assert pp.wer_difference_interval(mmt, lucky_first) == pytest.approx((0.0, 0.0))
    assert pp.wer_difference_interval(mmt, pp.Row("faster-whisper", "x", 8.0)) is None
