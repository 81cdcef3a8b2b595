#!/usr/bin/env python3
"""Reference log-mel features from faster-whisper, for whisper/tests/mel_reference.rs.

Usage: mel_reference.py INPUT.wav OUTPUT.bin [--n-mels N]

Reads a 16-bit PCM mono 16 kHz WAV with the standard `wave` module, scales it
exactly as faster_whisper.decode_audio does (int16 / 32768.0, float32), and runs
faster_whisper.feature_extractor.FeatureExtractor(feature_size=N) on it the way
WhisperModel.transcribe calls it (default padding). Writes OUTPUT.bin as:

    u32 LE n_mels, u32 LE n_frames, then n_mels * n_frames f32 LE (row-major).

The Rust test reads the same WAV itself, so both sides see identical samples
and the comparison measures the front end only.
"""

import argparse
import struct
import sys
import wave

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor


def read_wav_s16_mono_16k(path):
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != 16000:
            sys.exit(
                f"{path}: expected 16-bit mono 16 kHz PCM, got {8 * w.getsampwidth()}-bit "
                f"{w.getnchannels()} ch {w.getframerate()} Hz"
            )
        pcm = w.readframes(w.getnframes())
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--n-mels", type=int, default=80)
    args = parser.parse_args()

    audio = read_wav_s16_mono_16k(args.input)
    features = FeatureExtractor(feature_size=args.n_mels)(audio)
    features = np.ascontiguousarray(features, dtype="<f4")
    n_mels, n_frames = features.shape
    with open(args.output, "wb") as f:
        f.write(struct.pack("<II", n_mels, n_frames))
        f.write(features.tobytes())


if __name__ == "__main__":
    main()
