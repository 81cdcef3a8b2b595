"""How close the encoder gets to the machine's sgemm rate.

    .venv/bin/python benches/encoder_flops.py [--threads 2]

Measures numpy's float32 matrix product (2048 x 2048, BLAS) on N threads as
the machine's sgemm rate, then the exported encoder (fp32 and int8, batch 1
and 2) through ONNX Runtime with N intra-op threads, and prints each as
GFLOP/s and as a fraction of sgemm. The encoder's work is counted from its
shapes: two convolutions, and per layer the q/k/v/out projections, the
attention products and the MLP (about 37 GFLOP per 30 s window for tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def encoder_gflop(cfg: dict, layers: int) -> float:
    """Multiply-adds x 2 of one window through the encoder."""
    d, frames, mels = cfg["d_model"], cfg["n_audio_ctx"], cfg["n_mels"]
    conv = 2 * frames * d * mels * 3 + frames * d * d * 3      # conv1 at 3000, conv2 at 1500
    per_layer = 4 * frames * d * d + 2 * frames * frames * d + 2 * frames * d * 4 * d
    return 2 * (conv + layers * per_layer) / 1e9


def timed(run, repeats: int) -> float:
    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "tiny.en")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np  # after the thread variables, which BLAS reads at import
    import onnxruntime as ort

    n = 2048
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    sgemm = 2 * n**3 / timed(lambda: a @ b, 10) / 1e9
    print(f"numpy sgemm ({n}x{n}, {args.threads} threads): {sgemm:.0f} GFLOP/s")

    cfg = json.loads((args.model / "mmt-model.json").read_text())
    work = encoder_gflop(cfg, cfg.get("n_encoder_layers", cfg["n_decoder_layers"]))
    print(f"encoder work: {work:.1f} GFLOP per 30 s window")
    for label, folder in (("fp32", args.model), ("int8", Path(f"{args.model}-int8"))):
        if not (folder / "encoder.onnx").is_file():
            print(f"{label}: {folder / 'encoder.onnx'} missing, skipped")
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(folder / "encoder.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        for rows in (1, 2):
            mel = (np.random.RandomState(0).randn(rows, cfg["n_mels"], 3000) * 0.5).astype(np.float32)
            seconds = timed(lambda: session.run(None, {"mel": mel}), args.repeats) / rows
            rate = work / seconds
            print(f"{label} encoder, batch {rows}: {seconds * 1000:.0f} ms per window, "
                  f"{rate:.0f} GFLOP/s = {100 * rate / sgemm:.0f} % of sgemm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
