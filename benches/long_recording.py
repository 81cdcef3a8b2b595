#!/usr/bin/env python3
"""Builds a long speech recording, and the same speech as shorter files.

For the bounded-memory checks (peak RSS of `mmt run` / `mmt transcribe` on
hours of speech) and the long-against-split WER comparison: `--parts` files
of about `--part-seconds` each are made from every clip of the given
evaluation folders (16 kHz mono 16-bit WAV with a `manifest.jsonl`), each
part the clips in an order shuffled with its own seed, joined with
`--gap-seconds` of silence; then the parts joined (with the same gap) are
the long recording. Written to OUT:

    parts/part_NN.wav + parts/manifest.jsonl   (the split set, with texts)
    long.wav + long/manifest.jsonl             (one file, the joined text)

Standard library only. Example (3.5 h, as in issue 14's acceptance):

    python3 benches/long_recording.py --out /tmp/long \\
        ../shared/eval/dictation ../shared/eval/dictation-neural \\
        ../shared/eval/real ../shared/eval/long
"""

from __future__ import annotations

import argparse
import json
import random
import wave
from pathlib import Path

RATE = 16_000


def read_clips(folders: list[Path]) -> list[tuple[bytes, str]]:
    """Every clip of the folders' manifests: its PCM frames and its text."""
    clips = []
    for folder in folders:
        for line in (folder / "manifest.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            with wave.open(str(folder / entry["audio"])) as audio:
                if (audio.getframerate(), audio.getnchannels(), audio.getsampwidth()) != (
                    RATE,
                    1,
                    2,
                ):
                    raise SystemExit(f"{folder / entry['audio']}: not 16 kHz mono 16-bit")
                clips.append((audio.readframes(audio.getnframes()), entry["text"]))
    if not clips:
        raise SystemExit("no clips found")
    return clips


def make_part(clips, seed: int, part_seconds: float, gap: bytes) -> tuple[bytes, str]:
    """Clips in an order of its own, joined until the part is long enough; a
    clip that would overshoot the part's length is skipped (the 10-minute
    dictation fits only an empty part), so the parts add up to about
    `--parts` x `--part-seconds`."""
    order = list(range(len(clips)))
    random.Random(seed).shuffle(order)
    frames, texts = [], []
    target = part_seconds * RATE
    length = 0
    while length < target:
        added = False
        for index in order:
            pcm, text = clips[index]
            samples = (len(pcm) + len(gap)) // 2
            if length and length + samples > target:
                continue
            frames += [pcm, gap]
            texts.append(text)
            length += samples
            added = True
            if length >= target:
                break
        if not added:
            break
    return b"".join(frames), " ".join(texts)


def write_wav(path: Path, frames: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", type=int, default=21)
    parser.add_argument("--part-seconds", type=float, default=600.0)
    parser.add_argument("--gap-seconds", type=float, default=0.8)
    args = parser.parse_args()

    clips = read_clips(args.folders)
    gap = bytes(2 * round(args.gap_seconds * RATE))
    parts_dir = args.out / "parts"
    manifest, long_frames, long_texts = [], [], []
    for number in range(args.parts):
        frames, text = make_part(clips, number, args.part_seconds, gap)
        name = f"part_{number:02}.wav"
        write_wav(parts_dir / name, frames)
        manifest.append({"audio": name, "text": text, "seconds": len(frames) / 2 / RATE})
        long_frames += [frames, gap]
        long_texts.append(text)
    (parts_dir / "manifest.jsonl").write_text(
        "".join(json.dumps(entry) + "\n" for entry in manifest)
    )
    long_pcm = b"".join(long_frames)
    write_wav(args.out / "long" / "long.wav", long_pcm)
    (args.out / "long" / "manifest.jsonl").write_text(
        json.dumps(
            {"audio": "long.wav", "text": " ".join(long_texts), "seconds": len(long_pcm) / 2 / RATE}
        )
        + "\n"
    )
    print(
        f"{len(clips)} clips; {args.parts} parts, {len(long_pcm) / 2 / RATE:.0f} s in all; "
        f"written to {args.out}"
    )


if __name__ == "__main__":
    main()
