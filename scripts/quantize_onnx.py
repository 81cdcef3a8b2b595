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

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from export_onnx import save_model

GRAPHS = ("encoder.onnx", "decoder.onnx")
COPIED = ("mmt-model.json", "tokenizer.json")


def half_precision_lookups(model: onnx.ModelProto) -> None:
    """Store the float32 tables that are only looked up (``Gather`` of the token
    embeddings: 80 MB for tiny's 51,864 tokens) as float16, cast back after the
    lookup: 40 MB less, and a lookup needs no more precision than the int8
    projections around it."""
    graph = model.graph
    tables = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes = []
    for node in graph.node:
        nodes.append(node)
        table = tables.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or uses[table.name] != 1:
            continue  # not a table, or also a weight elsewhere: leave it
        table.CopyFrom(numpy_helper.from_array(
            numpy_helper.to_array(table).astype(np.float16), table.name))
        looked_up = node.output[0]
        node.output[0] = f"{looked_up}_f16"
        nodes.append(onnx.helper.make_node("Cast", [node.output[0]], [looked_up],
                                           name=f"{node.name}_to_f32",
                                           to=onnx.TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)


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
            # Shape inference cannot type the outputs of contrib operators
            # (the encoder's MultiHeadAttention); everything here is float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        model = onnx.load(str(out / name))
        half_precision_lookups(model)
        save_model(model, out / name)
        weights = (out / name).with_suffix(".weights")
        source = (src / name).with_suffix(".weights")
        print(f"{weights}: {weights.stat().st_size / 1e6:.1f} MB "
              f"(from {source.stat().st_size / 1e6:.1f} MB)")


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
