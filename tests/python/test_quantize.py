"""scripts/quantize_onnx.py: per-row activation quantization keeps rows independent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import quantize_onnx  # noqa: E402


def _matmul_model(path: Path) -> None:
    """y = x @ W, x [rows, 16], W [16, 8]: the shape of a decoder projection."""
    weight = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="projection")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 8])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def _quantized(tmp_path: Path, per_row: bool) -> ort.InferenceSession:
    _matmul_model(tmp_path / "fp32.onnx")
    quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", per_channel=True,
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
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


def test_per_row_results_stay_close_to_float(tmp_path: Path) -> None:
    session = _quantized(tmp_path, per_row=True)
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    weight = numpy_helper.to_array(onnx.load(str(tmp_path / "fp32.onnx")).graph.initializer[0])
    np.testing.assert_allclose(session.run(["y"], {"x": x})[0], x @ weight, atol=0.15)
