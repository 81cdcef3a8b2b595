#!/usr/bin/env python3
"""What Whisper's WER does when its 30-s window is cut to the audio it holds.

Whisper encodes every window as 30 s (3000 mel frames), however short the
recording, and the encoder is most of the defaults' time on short clips (see
`mmt bench`'s `encoder_bound_x_realtime`). Encoding only the frames that hold
audio would cost less; this measures what it does to the transcripts.

The shipped graphs take exactly 3000 frames. `cut_window_graphs` writes copies
whose encoder takes any even number of frames (its positional embedding sliced
to the frames given) and whose decoder attends to as many as the encoder
returns; on 3000 frames they compute what the originals do, to float rounding
(ONNX Runtime plans other kernels for a dynamic length). Each file is then
decoded greedily without timestamps, one file per call, from the full window
and from the window cut `margin` seconds after the audio ends, and both are
scored with `benches/wer.py`.

Usage:
    window_cut.py --set DIR [--margins 1,5,10] [--model models/tiny.en]

DIR holds WAV files (16-bit mono 16 kHz) and a manifest.jsonl with "audio"
and "text" per line, as `benches/unseen_sets.py` writes. A file longer than
30 s is cut to its first 30 s on both sides.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from compare_peer import load_manifest  # noqa: E402
from wer import ErrorCounts, corpus_wer  # noqa: E402
from mel_reference import read_wav_s16_mono_16k  # noqa: E402
from onnx_whisper import OnnxWhisper  # noqa: E402

SAMPLE_RATE = 16_000
WINDOW_FRAMES = 3000
FRAMES_PER_SECOND = 100
# The lone space Whisper suppresses as the first token.
BLANK = 220
# The encoder's input to its positional embedding: [batch, frames / 2, d_model].
EMBEDDING_INPUT = "transpose_27"
POSITIONAL_ADD = "n_Add_30"
POSITIONS = "encoder.positions"


def _free_dimension(value_info: onnx.ValueInfoProto, size: int, name: str) -> None:
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.dim_value == size:
            dim.ClearField("dim_value")
            dim.dim_param = name


def cut_window_graphs(model_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Copies of the encoder and decoder that take any window length."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # ONNX Runtime refuses external data that resolves outside the graph's
    # folder (symbolic links included), and onnx refuses a weights file with
    # more than one hard link: the copies get weights of their own.
    for weights in model_dir.glob("*.weights"):
        shutil.copyfile(weights, out_dir / weights.name)
    shutil.copyfile(model_dir / "mmt-model.json", out_dir / "mmt-model.json")

    encoder = onnx.load(model_dir / "encoder.onnx", load_external_data=False)
    _free_dimension(encoder.graph.input[0], WINDOW_FRAMES, "frames")
    for output in encoder.graph.output:
        _free_dimension(output, WINDOW_FRAMES // 2, "audio_ctx")
    encoder.graph.initializer.extend([
        helper.make_tensor("cut.axis1", TensorProto.INT64, [], [1]),
        helper.make_tensor("cut.zero", TensorProto.INT64, [1], [0]),
    ])
    slice_positions = [
        helper.make_node("Shape", [EMBEDDING_INPUT], ["cut.shape"]),
        helper.make_node("Gather", ["cut.shape", "cut.axis1"], ["cut.length"], axis=0),
        helper.make_node("Unsqueeze", ["cut.length", "cut.zero"], ["cut.end"]),
        helper.make_node("Slice", [POSITIONS, "cut.zero", "cut.end", "cut.zero"],
                         ["cut.positions"]),
    ]
    nodes = []
    for node in encoder.graph.node:
        if node.name == POSITIONAL_ADD:
            if list(node.input) != [EMBEDDING_INPUT, POSITIONS]:
                raise ValueError(f"{POSITIONAL_ADD} is not the positional embedding")
            nodes.extend(slice_positions)
            node.input[1] = "cut.positions"
        nodes.append(node)
    if len(nodes) == len(encoder.graph.node):
        raise ValueError(f"no {POSITIONAL_ADD} in the encoder")
    del encoder.graph.node[:]
    encoder.graph.node.extend(nodes)

    decoder = onnx.load(model_dir / "decoder.onnx", load_external_data=False)
    for value in decoder.graph.input:
        _free_dimension(value, WINDOW_FRAMES // 2, "audio_ctx")

    paths = (out_dir / "encoder.onnx", out_dir / "decoder.onnx")
    onnx.save(encoder, paths[0])
    onnx.save(decoder, paths[1])
    return paths


def window_mel(audio: np.ndarray, feature_extractor) -> np.ndarray:
    """[n_mels, 3000]: the audio followed by silence, as Whisper pads it."""
    padded = np.concatenate([audio, np.zeros(WINDOW_FRAMES * SAMPLE_RATE // 100, np.float32)])
    return np.ascontiguousarray(feature_extractor(padded)[:, :WINDOW_FRAMES], dtype=np.float32)


def cut_frames(seconds: float, margin_s: float) -> int:
    """Frames that hold `seconds` of audio and `margin_s` after it: even, at most 3000."""
    frames = int(np.ceil((seconds + margin_s) * FRAMES_PER_SECOND))
    return min(WINDOW_FRAMES, frames + frames % 2)


@dataclass
class TextOnlyRules:
    """Greedy without timestamps: text tokens only, and (as Whisper suppresses
    blanks) no end and no lone space as the first token."""

    config: dict

    def disabled(self, step: int, generated: list[int], logits: np.ndarray) -> np.ndarray:
        eot = self.config["eot"]
        off = np.zeros(len(logits), dtype=bool)
        off[eot + 1:] = True
        if step == 0:
            off[[eot, BLANK]] = True
        return off


def transcribe_tokens(model: OnnxWhisper, mel: np.ndarray) -> list[int]:
    """One window's text tokens, decoded greedily without timestamps."""
    cfg = model.config
    _, cross = model.encode(mel[None])
    return model.greedy(cross, [[cfg["sot"], cfg["no_timestamps"]]],
                        rules=TextOnlyRules(cfg))[0]


@dataclass
class CutResult:
    margin_s: float
    errors: ErrorCounts
    changed: int


def measure(set_dir: Path, margins: list[float], model_dir: Path,
            threads: int = 2) -> tuple[ErrorCounts, list[CutResult]]:
    """WER of the full windows, and of the windows cut at each margin."""
    from faster_whisper.feature_extractor import FeatureExtractor
    from tokenizers import Tokenizer

    # The full windows go through the shipped graphs, the cut ones through
    # their copies.
    shipped = OnnxWhisper(model_dir, threads)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    features = FeatureExtractor(feature_size=shipped.config["n_mels"])
    with tempfile.TemporaryDirectory() as scratch:
        cut_window_graphs(model_dir, Path(scratch))
        cutting = OnnxWhisper(Path(scratch), threads)
        full, cut = [], {margin: [] for margin in margins}
        for clip in load_manifest(set_dir):
            audio = read_wav_s16_mono_16k(str(clip.path))
            mel = window_mel(audio, features)
            full.append((clip.reference, tokenizer.decode(transcribe_tokens(shipped, mel))))
            for margin in margins:
                frames = cut_frames(len(audio) / SAMPLE_RATE, margin)
                tokens = transcribe_tokens(cutting, np.ascontiguousarray(mel[:, :frames]))
                cut[margin].append((clip.reference, tokenizer.decode(tokens)))
    results = [
        CutResult(margin, corpus_wer(pairs),
                  sum(a[1] != b[1] for a, b in zip(full, pairs)))
        for margin, pairs in cut.items()
    ]
    return corpus_wer(full), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, required=True, help="folder with manifest.jsonl")
    parser.add_argument("--margins", default="1,5,10",
                        help="seconds kept after the audio, comma-separated")
    parser.add_argument("--model", type=Path, default=Path("models/tiny.en"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    margins = [float(m) for m in args.margins.split(",")]
    full, results = measure(args.set, margins, args.model, args.threads)
    print(f"{args.set}: greedy, no timestamps, one file per call")
    print(f"  full 30-s window       WER {100 * full.rate:6.2f} %")
    for result in results:
        print(f"  cut + {result.margin_s:4.1f} s            WER {100 * result.errors.rate:6.2f} %"
              f"  ({result.changed} transcript(s) changed)")


if __name__ == "__main__":
    main()
