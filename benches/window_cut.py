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
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from compare_peer import load_manifest  # noqa: E402
from wer import ErrorCounts, corpus_wer  # noqa: E402
from mel_reference import read_wav_s16_mono_16k  # noqa: E402

SAMPLE_RATE = 16_000
WINDOW_FRAMES = 3000
FRAMES_PER_SECOND = 100
MAX_NEW_TOKENS = 224
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
class GreedyDecoder:
    """Greedy decoding without timestamps, one window per call."""

    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    config: dict

    @classmethod
    def load(cls, encoder: Path, decoder: Path, config: dict, threads: int = 2) -> GreedyDecoder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = lambda path: ort.InferenceSession(  # noqa: E731
            str(path), options, providers=["CPUExecutionProvider"])
        return cls(session(encoder), session(decoder), config)

    def encode(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        names = [output.name for output in self.encoder.get_outputs()]
        return dict(zip(names, self.encoder.run(None, {"mel": mel[None]})))

    def tokens(self, mel: np.ndarray) -> list[int]:
        cfg = self.config
        cross = {k: v for k, v in self.encode(mel).items() if k.startswith("cross_")}
        n_heads = cfg["n_heads"]
        head_dim = cfg["d_model"] // n_heads
        empty = np.zeros((1, n_heads, 0, head_dim), np.float32)
        cache = {f"self_{kv}_{i}": empty for i in range(cfg["n_decoder_layers"]) for kv in "kv"}
        prompt = [cfg["sot"], cfg["no_timestamps"]]
        new, past, generated = prompt, 0, []
        outputs = [output.name for output in self.decoder.get_outputs()]
        for step in range(MAX_NEW_TOKENS):
            feed = {
                "tokens": np.array([new], np.int64),
                "positions": np.arange(past, past + len(new), dtype=np.int64)[None],
                "attention_mask": np.zeros((1, past + len(new)), np.float32),
                **cache,
                **cross,
            }
            result = dict(zip(outputs, self.decoder.run(None, feed)))
            logits = result["logits"][0]
            # Text tokens only: no special or timestamp tokens, and (as Whisper
            # suppresses blanks) no end or lone space as the first token.
            logits[cfg["eot"] + 1:] = -np.inf
            if step == 0:
                logits[cfg["eot"]] = -np.inf
                logits[220] = -np.inf
            token = int(np.argmax(logits))
            if token == cfg["eot"]:
                break
            generated.append(token)
            past += len(new)
            new = [token]
            cache = {name[len("new_"):]: value for name, value in result.items()
                     if name.startswith("new_self_")}
        return generated


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

    config = json.loads((model_dir / "mmt-model.json").read_text())
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    features = FeatureExtractor(feature_size=config["n_mels"])
    with tempfile.TemporaryDirectory() as scratch:
        # The full windows go through the shipped graphs, the cut ones
        # through their copies.
        shipped = GreedyDecoder.load(model_dir / "encoder.onnx", model_dir / "decoder.onnx",
                                     config, threads)
        cutting = GreedyDecoder.load(*cut_window_graphs(model_dir, Path(scratch)), config,
                                     threads)
        full, cut = [], {margin: [] for margin in margins}
        for clip in load_manifest(set_dir):
            audio = read_wav_s16_mono_16k(str(clip.path))
            mel = window_mel(audio, features)
            full.append((clip.reference, tokenizer.decode(shipped.tokens(mel))))
            for margin in margins:
                frames = cut_frames(len(audio) / SAMPLE_RATE, margin)
                tokens = cutting.tokens(np.ascontiguousarray(mel[:, :frames]))
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
