"""Fixtures for the ONNX export tests: the exported model, CTranslate2, clips."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import export_onnx  # noqa: E402

SHARED_EVAL = Path(os.environ.get("MMT_SHARED_EVAL", REPO.parent / "shared" / "eval"))
MODEL_FILES = ("encoder.onnx", "decoder.onnx", "tokenizer.json", "mmt-model.json")
N_DICTATION_CLIPS = 10


def _valid_model_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in MODEL_FILES)


@pytest.fixture(scope="session")
def ct2_dir() -> Path:
    """The CTranslate2 model the export reads (and the reference runs)."""
    return Path(os.environ.get("MMT_CT2_DIR") or export_onnx.default_ct2_dir())


@pytest.fixture(scope="session")
def model_dir(ct2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MMT_MODEL_DIR when it holds a complete export, else a fresh export."""
    configured = os.environ.get("MMT_MODEL_DIR")
    if configured and _valid_model_dir(Path(configured)):
        return Path(configured)
    out = tmp_path_factory.mktemp("export") / "model"
    export_onnx.export(ct2_dir, out, "test")
    return out


@pytest.fixture(scope="session")
def mmt_config(model_dir: Path) -> dict:
    """The exported mmt-model.json."""
    return json.loads((model_dir / "mmt-model.json").read_text(encoding="utf-8"))


def _shared_clips() -> list[Path]:
    real = SHARED_EVAL / "real"
    dictation = SHARED_EVAL / "dictation"
    clips = sorted(real.glob("*.wav")) if real.is_dir() else []
    if dictation.is_dir():
        clips += sorted(dictation.glob("*.wav"))[:N_DICTATION_CLIPS]
    return clips


@pytest.fixture(scope="session")
def clips() -> list[Path]:
    """Repo samples, plus the shared evaluation clips (real + 10 dictation) where
    they exist: the suite needs only the repo, the shared set extends it."""
    repo_clips = sorted((REPO / "samples").glob("*.wav"))
    if not repo_clips:
        pytest.fail("no samples/*.wav in the repo: the export tests need them")
    shared = _shared_clips()
    if not shared:
        print(f"NOTE: shared evaluation clips not found under {SHARED_EVAL}; "
              "testing the repo samples only", file=sys.stderr)
    unique: dict[str, Path] = {}
    for clip in repo_clips + shared:          # samples/ repeats some shared clips
        unique.setdefault(clip.name, clip)
    return list(unique.values())
