"""Quantize the exported Whisper model's weights to int8 (dynamic quantization).

    python scripts/quantize_onnx.py --src models/tiny.en --out models/tiny.en-int8

MatMul and Gemm weights become int8 with per-channel scales; activations are
quantized at run time (ONNX Runtime's MatMulInteger / DynamicQuantizeLinear).
The tokenizer and ``mmt-model.json`` are copied unchanged, so ``MMT_MODEL_DIR``
can point at either folder. Whether int8 is faster, and what it costs in word
error rate, is for ``mmt bench --precision fp32,int8`` to say.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

GRAPHS = ("encoder.onnx", "decoder.onnx")
COPIED = ("mmt-model.json", "tokenizer.json")


def quantize(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copy2(src / name, out / name)
    for name in GRAPHS:
        quantize_dynamic(
            model_input=src / name,
            model_output=out / name,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
        print(f"{out / name}: {(out / name).stat().st_size / 1e6:.1f} MB "
              f"(from {(src / name).stat().st_size / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("models/tiny.en"))
    parser.add_argument("--out", type=Path, default=Path("models/tiny.en-int8"))
    args = parser.parse_args(argv)
    for name in GRAPHS + COPIED:
        if not (args.src / name).is_file():
            print(f"{args.src / name} is missing: export the model first", file=sys.stderr)
            return 1
    quantize(args.src, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
