"""Quantize the exported Whisper model's weights to int8 (dynamic quantization).

    python scripts/quantize_onnx.py --src models/tiny.en --out models/tiny.en-int8

MatMul and Gemm weights become int8 (7 bits: :func:`int8_weights`) with
per-channel scales; activations are quantized at run time, **each row on its
own** (:func:`per_row_activations`), and multiplied in integers (ONNX
Runtime's MatMulInteger). The tokenizer and ``mmt-model.json`` are copied
unchanged, so ``MMT_MODEL_DIR`` can point at either folder. Whether int8 is
faster, and what it costs in word error rate, is for ``mmt bench --precision
fp32,int8`` to say.
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
# The graphs whose activations are quantized per row. The decoder runs the
# rows of many recordings in one call. The encoder runs one window per call
# (ENCODER_ROWS in whisper/src/model.rs), so its per-tensor scale is already
# the window's own; per row, it ran slower (11.5 s against 9.2 s of encoder
# calls on the 10-minute dictation) for no gain in invariance.
PER_ROW_GRAPHS = ("decoder.onnx",)
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


def per_row_activations(model: onnx.ModelProto) -> int:
    """Quantize activations per row instead of per tensor; return how many.

    ``quantize_dynamic`` quantizes a MatMul's input with one scale for the
    whole tensor (``DynamicQuantizeLinear``): the largest value of any row of
    a batch sets every row's precision, so one recording's transcript would
    depend on the others decoded beside it. Here each row (the last axis: one
    token position, or one audio frame) gets its own symmetric scale, its
    largest magnitude over 127, centred on the zero point 128. The integer
    product is exact, and what follows multiplies element by element, so a
    row's result is the same bits alone or in any batch.

    The rescaling ``quantize_dynamic`` writes as ``Mul(int_product,
    Mul(a_scale, b_scale))`` becomes ``Mul(Mul(int_product, b_scale),
    a_scale)``: ONNX Runtime fuses the former into ``MatMulIntegerToFloat``,
    which reads ``a_scale`` as a scalar and would apply the first row's scale
    to every row.
    """
    graph = model.graph
    constants = {
        "row_quant_min_amax": np.array(1e-30, np.float32),
        "row_quant_127": np.array(127.0, np.float32),
        "row_quant_128": np.array(128.0, np.float32),
        "row_quant_0": np.array(0.0, np.float32),
        "row_quant_255": np.array(255.0, np.float32),
    }
    row_scales: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        x = node.input[0]
        quantized, scale, zero_point = node.output
        row_scales.add(scale)
        name = node.name

        def op(op_type: str, inputs: list[str], output: str, **attrs) -> None:
            nodes.append(onnx.helper.make_node(op_type, inputs, [output],
                                               name=f"{name}_{output}", **attrs))

        op("Abs", [x], f"{name}_abs")
        op("ReduceMax", [f"{name}_abs"], f"{name}_amax", axes=[-1], keepdims=1)
        op("Max", [f"{name}_amax", "row_quant_min_amax"], f"{name}_amax_safe")
        op("Div", [f"{name}_amax_safe", "row_quant_127"], scale)
        op("Div", [x, scale], f"{name}_scaled")
        op("Round", [f"{name}_scaled"], f"{name}_rounded")
        op("Add", [f"{name}_rounded", "row_quant_128"], f"{name}_shifted")
        op("Clip", [f"{name}_shifted", "row_quant_0", "row_quant_255"], f"{name}_clipped")
        op("Cast", [f"{name}_clipped"], quantized, to=onnx.TensorProto.UINT8)
        op("Constant", [], zero_point,
           value=numpy_helper.from_array(np.array(128, np.uint8), f"{name}_zero_point_value"))
    # Mul(a_scale, b_scale) -> its two factors, and the rescaling that uses it.
    scale_products = {
        node.output[0]: tuple(node.input) for node in nodes
        if node.op_type == "Mul" and node.input[0] in row_scales
    }
    rewritten: list[onnx.NodeProto] = []
    rescalings = 0
    for node in nodes:
        if node.op_type == "Mul" and node.output[0] in scale_products:
            continue
        if node.op_type == "Mul" and node.input[1] in scale_products:
            rescalings += 1
            row_scale, column_scale = scale_products[node.input[1]]
            by_column = f"{node.output[0]}_by_column"
            rewritten.append(onnx.helper.make_node(
                "Mul", [node.input[0], column_scale], [by_column], name=f"{node.name}_by_column"))
            rewritten.append(onnx.helper.make_node(
                "Mul", [by_column, row_scale], list(node.output), name=f"{node.name}_by_row"))
            continue
        rewritten.append(node)
    # One quantized activation may feed several products (Q, K and V of one
    # input); each product's scale must be applied exactly once.
    if rescalings != len(scale_products) or any(
            name in row_scales for node in rewritten
            if node.op_type not in ("Mul", "Div", "Cast") for name in node.input):
        raise ValueError(f"{len(scale_products)} products of quantized activations but "
                         f"{rescalings} rescalings: quantize_dynamic wrote a graph this script "
                         "does not know")
    del graph.node[:]
    graph.node.extend(rewritten)
    if row_scales:
        graph.initializer.extend(numpy_helper.from_array(value, name)
                                 for name, value in constants.items())
    return len(row_scales)


def untie_lookups(model: onnx.ModelProto) -> int:
    """Give every matrix product that reads a table a ``Gather`` also reads
    its own copy of it; return how many.

    The export's vocabulary projection reads the token embeddings (tied), and
    ``quantize_dynamic`` rewrites a ``Gemm(transB=1)`` weight in place, which
    would hand the lookup a transposed, quantized table. Untied, the product
    gets int8 weights and the lookup keeps its float table (made float16 by
    :func:`half_precision_lookups`).
    """
    graph = model.graph
    looked_up = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    tables = {t.name: t for t in graph.initializer if t.name in looked_up}
    copies = 0
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul"):
            continue
        for index, name in enumerate(node.input):
            if name in tables:
                copy = onnx.TensorProto()
                copy.CopyFrom(tables[name])
                copy.name = f"{name}_for_{node.name}"
                graph.initializer.append(copy)
                node.input[index] = copy.name
                copies += 1
    return copies


def int8_weights(model: onnx.ModelProto | Path, out: Path) -> None:
    """Write ``model`` with its MatMul and Gemm weights quantized to int8, per
    output channel, and its activations quantized at run time.

    The weights use 7 of their 8 bits (``reduce_range``: -64..64). ONNX
    Runtime multiplies uint8 activations by int8 weights; on x86 CPUs without
    VNNI (AVX2 and plain AVX-512) its kernel adds each pair of products into a
    16-bit integer, which overflows when both are large (2 x 255 x 127 >
    32,767) and saturates silently. Full-range weights scored 59.7 % WER
    against 46.1 % with 7 bits on the unseen short dictations on a 2-core AMD
    EPYC without VNNI (ADR 12). With VNNI the products are added in 32 bits;
    there, on five sets, 7 bits scored 49.3 % on average against 50.2 % for
    8, so one export serves both kinds of CPU.
    """
    quantize_dynamic(
        model_input=model,
        model_output=out,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        reduce_range=True,
        # Shape inference cannot type the outputs of contrib operators
        # (the encoder's MultiHeadAttention); everything here is float32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copy2(src / name, out / name)
    for name in GRAPHS:
        model = onnx.load(str(src / name))
        untie_lookups(model)
        int8_weights(model, out / name)
        model = onnx.load(str(out / name))
        if name in PER_ROW_GRAPHS:
            per_row_activations(model)
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
