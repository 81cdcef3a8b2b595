"""benches/window_cut.py: the cut-window graphs compute what the shipped ones
do on a full window, take shorter ones, and a margin that reaches the end of
the window gives the shipped graphs' transcripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benches"))

import window_cut  # noqa: E402
from onnx_whisper import OnnxWhisper  # noqa: E402  (scripts/, on the path from conftest)

SAMPLE = REPO / "samples" / "dict_001.wav"


@pytest.fixture(scope="module")
def cut_graphs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return window_cut.cut_window_graphs(model_dir, tmp_path_factory.mktemp("cut"))


@pytest.fixture(scope="module")
def sample_mel(model_dir: Path) -> np.ndarray:
    from faster_whisper.feature_extractor import FeatureExtractor

    config = json.loads((model_dir / "mmt-model.json").read_text())
    audio = window_cut.read_wav_s16_mono_16k(str(SAMPLE))
    return window_cut.window_mel(audio, FeatureExtractor(feature_size=config["n_mels"]))


def _encode(encoder: Path, mel: np.ndarray) -> list[np.ndarray]:
    """Every output of the encoder in `encoder`'s folder, states first."""
    states, cross = OnnxWhisper(encoder.parent).encode(mel[None])
    return [states, *cross.values()]


def test_on_a_full_window_the_cut_encoder_computes_what_the_shipped_one_does(
        model_dir: Path, cut_graphs: tuple[Path, Path], sample_mel: np.ndarray) -> None:
    shipped = _encode(model_dir / "encoder.onnx", sample_mel)
    cut = _encode(cut_graphs[0], sample_mel)
    assert len(cut) == len(shipped)
    # Not bit for bit: with the frames dynamic, ONNX Runtime plans other
    # kernels. The margin test below checks that the transcripts agree.
    for ours, theirs in zip(cut, shipped):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_the_cut_encoder_takes_a_shorter_window(
        cut_graphs: tuple[Path, Path], sample_mel: np.ndarray) -> None:
    states, cross_k, *_ = _encode(cut_graphs[0], np.ascontiguousarray(sample_mel[:, :1000]))
    assert states.shape[:2] == (1, 500)
    assert cross_k.shape[2] == 500


def test_cut_frames_keep_the_audio_and_the_margin_within_one_window() -> None:
    assert window_cut.cut_frames(9.655, 1.0) == 1066
    assert window_cut.cut_frames(9.651, 0.0) == 966
    assert window_cut.cut_frames(25.0, 10.0) == window_cut.WINDOW_FRAMES


def test_a_margin_to_the_end_of_the_window_gives_the_shipped_transcripts(
        model_dir: Path, tmp_path: Path) -> None:
    entries = [json.loads(line) for line in (REPO / "samples" / "manifest.jsonl").read_text()
               .splitlines() if line.strip()][:2]
    for entry in entries:
        (tmp_path / entry["audio"]).symlink_to(REPO / "samples" / entry["audio"])
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))

    full, [whole, short] = window_cut.measure(tmp_path, [30.0, 0.0], model_dir)

    assert full.reference_words > 20
    assert full.rate < 0.5, "the full windows transcribe the samples"
    assert whole.changed == 0 and whole.errors == full
    assert short.errors.reference_words == full.reference_words
