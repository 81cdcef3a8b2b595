"""benches/unseen_sets.py: the long set with several recordings.

espeak-ng is not part of the test set-up, so ``synthesize`` is replaced by
silence of a length proportional to the text (the grammar, the voices, the
pauses and the files are the real code's).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))

import unseen_sets as us  # noqa: E402


@pytest.fixture
def silent_voice(monkeypatch: pytest.MonkeyPatch) -> None:
    # About 2.5 words a second, as the dictation voices speak.
    monkeypatch.setattr(us, "synthesize", lambda text, voice: us.silence(len(text.split()) / 2.5))


def make(folder: Path, count: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return us.make_long(folder, 0.5, count, rng, us.SentenceSource(rng, set()))


def test_several_long_recordings_share_no_sentence(tmp_path: Path, silent_voice: None) -> None:
    entries = make(tmp_path / "long", 3)
    assert [e["audio"] for e in entries] == [
        "long_0.5min_01.wav", "long_0.5min_02.wav", "long_0.5min_03.wav"]
    sentences = [us.normalize(s["text"]) for e in entries for s in e["segments"]]
    assert len(sentences) == len(set(sentences))
    for entry in entries:
        assert entry["seconds"] >= 30.0
        assert (tmp_path / "long" / entry["audio"]).stat().st_size > 30 * us.SAMPLE_RATE * 2
    listed = (tmp_path / "long" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["audio"] for line in listed] == [e["audio"] for e in entries]


def test_one_long_recording_keeps_its_name_and_is_the_first_of_several(
        tmp_path: Path, silent_voice: None) -> None:
    alone = make(tmp_path / "one", 1)
    several = make(tmp_path / "two", 2)
    assert [e["audio"] for e in alone] == ["long_0.5min.wav"]
    assert alone[0]["text"] == several[0]["text"]


def test_the_count_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        us.parse_args(["--long-count", "0"])
