"""scripts/quantize_onnx.py: per-row activation quantization keeps rows independent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import quantize_onnx  # noqa: E402


def _matmul_model(path: Path, weight: np.ndarray | None = None) -> None:
    """y = x @ W, x [rows, 16], W [16, 8]: the shape of a decoder projection."""
    if weight is None:
        weight = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="projection")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 8])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def _quantized(tmp_path: Path, per_row: bool,
               weight: np.ndarray | None = None) -> ort.InferenceSession:
    _matmul_model(tmp_path / "fp32.onnx", weight)
    quantize_onnx.int8_weights(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    model = onnx.load(str(tmp_path / "int8.onnx"))
    if per_row:
        assert quantize_onnx.per_row_activations(model) == 1
        assert not [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    # Full optimizations, as the engine runs it (the MatMulIntegerToFloat fusion included).
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _alone_and_beside_a_loud_row(session: ort.InferenceSession) -> tuple[np.ndarray, np.ndarray]:
    rows = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    loud = rows[:1] * 1000.0
    alone = np.concatenate([session.run(["y"], {"x": row[None]})[0] for row in rows])
    batched = session.run(["y"], {"x": np.concatenate([rows, loud])})[0][:3]
    return alone, batched


def test_a_row_gives_the_same_bits_alone_and_beside_a_louder_row(tmp_path: Path) -> None:
    alone, batched = _alone_and_beside_a_loud_row(_quantized(tmp_path, per_row=True))
    np.testing.assert_array_equal(alone, batched)


def test_per_tensor_quantization_couples_the_rows(tmp_path: Path) -> None:
    """What the rewrite removes: with one scale per tensor, a loud row costs the
    others their precision."""
    alone, batched = _alone_and_beside_a_loud_row(_quantized(tmp_path, per_row=False))
    assert not np.array_equal(alone, batched)


def test_weights_keep_to_seven_bits(tmp_path: Path) -> None:
    _quantized(tmp_path, per_row=True)
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "int8.onnx"))
               .graph.initializer if t.data_type == TensorProto.INT8 and t.dims]
    assert weights
    # 2 x 255 x 64 = 32,640: a pair of products fits a 16-bit sum.
    assert min(w.min() for w in weights) >= -64 and max(w.max() for w in weights) <= 64
    # Each channel's scale still spans the range it has.
    assert max(np.abs(w).max() for w in weights) == 64


def test_largest_activations_times_largest_weights_do_not_overflow(tmp_path: Path) -> None:
    """Every activation at its largest against weights at their largest: the
    products where a 16-bit pairwise sum (x86 without VNNI) would saturate."""
    weight = np.ones((16, 8), np.float32)
    weight[:, 1::2] = -1.0
    x = np.ones((1, 16), np.float32)
    for per_row in (True, False):
        session = _quantized(tmp_path, per_row=per_row, weight=weight)
        np.testing.assert_allclose(session.run(["y"], {"x": x})[0], x @ weight, rtol=0.02)


def test_per_row_results_stay_close_to_float(tmp_path: Path) -> None:
    session = _quantized(tmp_path, per_row=True)
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    weight = numpy_helper.to_array(onnx.load(str(tmp_path / "fp32.onnx")).graph.initializer[0])
    np.testing.assert_allclose(session.run(["y"], {"x": x})[0], x @ weight, atol=0.15)
