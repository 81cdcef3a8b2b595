"""Checks the ONNX export against CTranslate2 running the same model.bin.

* encoder states agree with ``Whisper.encode`` on real clips;
* greedy decoding through decoder.onnx (with its K/V cache and CTranslate2's
  suppression and timestamp rules) yields CTranslate2's exact token ids;
* batching, including left-padded prompts of different lengths, changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import pytest

ctranslate2 = pytest.importorskip("ctranslate2")
ort = pytest.importorskip("onnxruntime")
fw_audio = pytest.importorskip("faster_whisper.audio")
fw_features = pytest.importorskip("faster_whisper.feature_extractor")

from onnx_whisper import OnnxWhisper, SlotCache  # noqa: E402  (scripts/, on the path from conftest)

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE
N_FRAMES = 3000
ENCODER_TOLERANCE = 2e-3             # max abs difference of encoder states


# ------------------------------------------------------------------- helpers


def log_mel(path: Path, n_mels: int) -> np.ndarray:
    """[n_mels, 3000] log-mel features of the clip's first 30 s window."""
    audio = fw_audio.decode_audio(str(path), sampling_rate=SAMPLE_RATE)[:WINDOW_SAMPLES]
    audio = np.pad(audio, (0, WINDOW_SAMPLES - len(audio)))
    extractor = fw_features.FeatureExtractor(feature_size=n_mels)
    return np.ascontiguousarray(extractor(audio, padding=0)[:, :N_FRAMES], dtype=np.float32)


def ct2_generate(ct2_model, mel: np.ndarray, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """CTranslate2 greedy decoding with its default suppression."""
    results = ct2_model.generate(ctranslate2.StorageView.from_array(mel), [list(p) for p in prompts],
                                 beam_size=1, max_length=448, suppress_blank=True,
                                 suppress_tokens=[-1])
    return [list(r.sequences_ids[0]) for r in results]


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def onnx_whisper(model_dir: Path) -> OnnxWhisper:
    return OnnxWhisper(model_dir)


@pytest.fixture(scope="session")
def ct2_whisper(ct2_dir: Path):
    return ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32",
                                      intra_threads=2)


@pytest.fixture(scope="session")
def mels(clips: list[Path], mmt_config: dict) -> dict[str, np.ndarray]:
    return {clip.name: log_mel(clip, mmt_config["n_mels"]) for clip in clips}


@pytest.fixture(scope="session")
def encoded(onnx_whisper: OnnxWhisper, mels: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Per clip: (encoder_states, {cross_k_i, cross_v_i}) for a batch of one."""
    return {name: onnx_whisper.encode(mel[None]) for name, mel in mels.items()}


# --------------------------------------------------------------------- tests


def _dims(value_info: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_interface(model_dir: Path, mmt_config: dict) -> None:
    """Input/output names, types, shapes and mmt-model.json keys follow docs/model-format.md."""
    cfg = mmt_config
    n_layers, n_heads, d_model = cfg["n_decoder_layers"], cfg["n_heads"], cfg["d_model"]
    head_dim, n_ctx = d_model // n_heads, cfg["n_audio_ctx"]
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    cross = {f"cross_{kv}_{i}": (f32, ["batch", n_heads, n_ctx, head_dim])
             for i in range(n_layers) for kv in "kv"}
    encoder_outputs = {"encoder_states": (f32, ["batch", n_ctx, d_model]), **cross}
    decoder_inputs = {"tokens": (i64, ["batch", "new"]), "positions": (i64, ["batch", "new"]),
                      "attention_mask": (f32, ["batch", "total"])}
    decoder_outputs = {"logits": (f32, ["batch", cfg["vocab_size"]])}
    for i in range(n_layers):
        for kv in "kv":
            decoder_inputs[f"self_{kv}_{i}"] = (f32, ["batch", n_heads, "slots", head_dim])
        for kv in "kv":
            decoder_inputs[f"cross_{kv}_{i}"] = (f32, ["windows", n_heads, n_ctx, head_dim])
        for kv in "kv":
            decoder_outputs[f"step_self_{kv}_{i}"] = (f32, ["batch", n_heads, "new", head_dim])
    expected = {
        "encoder.onnx": ({"mel": (f32, ["batch", cfg["n_mels"], 3000])}, encoder_outputs),
        "decoder.onnx": (decoder_inputs, decoder_outputs),
    }
    for file, (inputs, outputs) in expected.items():
        graph = onnx.load(str(model_dir / file), load_external_data=False).graph
        for got, want in ((graph.input, inputs), (graph.output, outputs)):
            assert [v.name for v in got] == list(want), file
            for v in got:
                assert (v.type.tensor_type.elem_type, _dims(v)) == want[v.name], (file, v.name)
    keys = {"name", "layout", "n_mels", "n_audio_ctx", "n_text_ctx", "d_model", "n_heads",
            "n_encoder_layers", "n_decoder_layers", "vocab_size", "multilingual", "eot", "sot",
            "translate", "transcribe", "sot_prev", "no_speech", "no_timestamps",
            "timestamp_begin", "lang_ids", "suppress_ids", "suppress_ids_begin"}
    assert keys <= set(cfg)
    assert cfg["layout"] == "per-layer-heads-v4"
    assert cfg["timestamp_begin"] == cfg["no_timestamps"] + 1


WEIGHT_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8,
                 "uint8": np.uint8, "int32": np.int32, "int64": np.int64}


@pytest.mark.parametrize("graph_name", ["encoder", "decoder"])
def test_weights_index_matches_the_initializers(model_dir: Path, graph_name: str) -> None:
    """Every large initializer lies in <graph>.weights where <graph>.weights.json says,
    as the engine reads it (docs/model-format.md, "Weights")."""
    from onnx import numpy_helper

    index = json.loads((model_dir / f"{graph_name}.weights.json").read_text(encoding="utf-8"))
    data = (model_dir / index["file"]).read_bytes()
    graph = onnx.load(str(model_dir / f"{graph_name}.onnx")).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    listed = {entry["name"] for entry in index["tensors"]}
    assert listed, "no weights indexed"
    assert all(initializers[name].nbytes < 1024 for name in set(initializers) - listed)
    for entry in index["tensors"]:
        raw = data[entry["offset"]:entry["offset"] + entry["length"]]
        values = np.frombuffer(raw, dtype=WEIGHT_DTYPES[entry["type"]]).reshape(entry["shape"])
        np.testing.assert_array_equal(values, initializers[entry["name"]], err_msg=entry["name"])


def test_decoder_graph_is_lean(model_dir: Path, mmt_config: dict, tmp_path: Path) -> None:
    """After ORT's CPU optimizations, cross K/V feed the fused cross-attention directly
    (no per-step copies, no [rows, H, new, 1500] scores) and the vocabulary projection is a single Gemm on [batch, d_model] that reads the
    token embedding table itself (tied: no transposed copy of it in the graph)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "decoder.opt.onnx")
    ort.InferenceSession(str(model_dir / "decoder.onnx"), options,
                         providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    cross = {f"cross_{kv}_{i}" for i in range(mmt_config["n_decoder_layers"]) for kv in "kv"}
    for node in graph.node:
        if cross & set(node.input):
            # Shape reads the window count of the row groups, not the data.
            assert node.op_type in ("MultiHeadAttention", "Shape"), (node.op_type,
                                                                     list(node.input))
    projection = [n for n in graph.node if "logits" in n.output]
    assert [n.op_type for n in projection] == ["Gemm"]
    assert projection[0].input[1] == "decoder.embeddings"
    assert {a.name: a.i for a in projection[0].attribute}.get("transB") == 1
    # Attention scaling is folded into the weights and GELU is fused: no Mul/Div per step.
    assert not [n.op_type for n in graph.node if n.op_type in ("Mul", "Div")]


def test_encoder_matches_ct2(ct2_whisper, onnx_whisper: OnnxWhisper, mels: dict,
                             encoded: dict) -> None:
    """encoder_states vs CTranslate2 encode() on every clip."""
    worst = 0.0
    for name, mel in mels.items():
        ref = np.asarray(ct2_whisper.encode(ctranslate2.StorageView.from_array(mel[None]),
                                            to_cpu=True))
        diff = float(np.abs(encoded[name][0] - ref).max())
        worst = max(worst, diff)
        assert diff < ENCODER_TOLERANCE, f"{name}: max abs diff {diff:.2e}"
    print(f"\nencoder max abs diff over {len(mels)} clips: {worst:.2e}")


def test_cross_kv_shapes(encoded: dict, mmt_config: dict) -> None:
    """cross_k_i/cross_v_i are [batch, n_heads, n_audio_ctx, head_dim] for every decoder layer."""
    _, cross = next(iter(encoded.values()))
    n_heads = mmt_config["n_heads"]
    shape = (1, n_heads, mmt_config["n_audio_ctx"], mmt_config["d_model"] // n_heads)
    assert sorted(cross) == sorted(f"cross_{kv}_{i}" for i in range(mmt_config["n_decoder_layers"])
                                   for kv in "kv")
    assert all(value.shape == shape for value in cross.values())


def test_cross_kv_match_ct2_encoder_states(encoded: dict, ct2_dir: Path, mmt_config: dict) -> None:
    """cross K/V are the per-head split of the cross-attention projections of encoder_states."""
    import export_onnx

    model = export_onnx.read_ct2_model(ct2_dir / "model.bin")
    d, n_heads = mmt_config["d_model"], mmt_config["n_heads"]
    states, cross = next(iter(encoded.values()))
    for i in range(mmt_config["n_decoder_layers"]):
        weight = model.f32(f"decoder/layer_{i}/attention/linear_1/weight")
        bias = model.f32(f"decoder/layer_{i}/attention/linear_1/bias")
        kv = states[0].astype(np.float64) @ weight.T.astype(np.float64) + bias
        for name, block in ((f"cross_k_{i}", kv[:, :d]), (f"cross_v_{i}", kv[:, d:])):
            want = block.reshape(-1, n_heads, d // n_heads).transpose(1, 0, 2)
            assert np.abs(cross[name][0] - want).max() < 1e-3, name


def _compare_greedy(ct2_whisper, onnx_whisper: OnnxWhisper, mels: dict, encoded: dict,
                    prompt: list[int], timestamps: bool) -> None:
    """Decode every clip with both engines and assert identical token ids."""
    mismatches = []
    n_tokens = 0
    names = list(mels)
    for group in _chunks(names, 8):
        batch = np.stack([mels[n] for n in group])
        expected = ct2_generate(ct2_whisper, batch, [prompt] * len(group))
        for name, want in zip(group, expected):
            n_tokens += len(want)
            got = onnx_whisper.greedy(encoded[name][1], [prompt], timestamps)[0]
            if got != want:
                mismatches.append((name, got, want))
    matched = len(names) - len(mismatches)
    print(f"\ngreedy ({'timestamps' if timestamps else 'no timestamps'}): "
          f"{matched}/{len(names)} clips token-identical to CTranslate2 "
          f"({n_tokens} CTranslate2 tokens)")
    assert not mismatches, "\n".join(f"{n}:\n  onnx {g}\n  ct2  {w}" for n, g, w in mismatches)


def test_greedy_tokens_match_ct2(ct2_whisper, onnx_whisper, mels, encoded, mmt_config) -> None:
    """[sot, no_timestamps] greedy decoding gives CTranslate2's exact token ids."""
    prompt = [mmt_config["sot"], mmt_config["no_timestamps"]]
    _compare_greedy(ct2_whisper, onnx_whisper, mels, encoded, prompt, timestamps=False)


def test_greedy_timestamps_match_ct2(ct2_whisper, onnx_whisper, mels, encoded,
                                     mmt_config) -> None:
    """[sot] greedy decoding with Whisper's timestamp rules matches CTranslate2."""
    prompt = [mmt_config["sot"]]
    _compare_greedy(ct2_whisper, onnx_whisper, mels, encoded, prompt, timestamps=True)


def test_batched_left_padded_prompts(onnx_whisper: OnnxWhisper, mels: dict,
                                     mmt_config: dict) -> None:
    """3 clips in one batch (prompts of different lengths) decode as they do one by one."""
    if len(mels) < 3:
        pytest.skip("needs 3 clips")
    cfg = mmt_config
    names = list(mels)[:3]
    base = [cfg["sot"], cfg["no_timestamps"]]
    # A previous-text prompt makes rows 1 and 2 longer than row 0.
    previous = onnx_whisper.greedy(onnx_whisper.encode(mels[names[0]][None])[1], [base], False)[0]
    prompts = [base,
               [cfg["sot_prev"], *previous[:3], *base],
               [cfg["sot_prev"], *previous[:7], *base]]
    batch_mel = np.stack([mels[n] for n in names])
    _, cross = onnx_whisper.encode(batch_mel)
    batched = onnx_whisper.greedy(cross, prompts, timestamps=False)
    single = [onnx_whisper.greedy(onnx_whisper.encode(mels[n][None])[1], [p], False)[0]
              for n, p in zip(names, prompts)]
    assert batched == single
    assert all(batched), "every row should produce text"


def test_row_groups_share_their_window(onnx_whisper: OnnxWhisper, mels: dict,
                                       mmt_config: dict) -> None:
    """Rows in equal groups per window (samples, beams) read their window's K/V once
    and get the logits they get with a copy of it per row."""
    if len(mels) < 2:
        pytest.skip("needs 2 clips")
    cfg = mmt_config
    names = list(mels)[:2]
    _, cross = onnx_whisper.encode(np.stack([mels[n] for n in names]))
    group = 3
    rows = 2 * group
    # Different tokens per row, so that a row attending to the wrong window or
    # the wrong query shows up in the logits.
    prompt = [cfg["sot"], cfg["no_timestamps"]]
    tokens = np.array([prompt[:1] + [prompt[1] if r % 2 else 220 + r] for r in range(rows)],
                      dtype=np.int64)
    positions = np.tile(np.arange(2, dtype=np.int64), (rows, 1))
    mask = np.zeros((rows, 2), dtype=np.float32)
    windows_of_rows = np.repeat(np.arange(2), group)
    copied = {name: value[windows_of_rows] for name, value in cross.items()}
    decoder = onnx_whisper.decoder
    grouped_logits = SlotCache(cfg, rows).run(decoder, tokens, positions, mask, cross)
    copied_logits = SlotCache(cfg, rows).run(decoder, tokens, positions, mask, copied)
    np.testing.assert_allclose(grouped_logits, copied_logits, rtol=1e-4, atol=1e-4)
    # The two windows differ, so rows of different groups must differ too.
    assert not np.allclose(grouped_logits[0], grouped_logits[group], atol=1e-2)


def test_timestamp_tokens_valid(onnx_whisper: OnnxWhisper, encoded: dict,
                                mmt_config: dict) -> None:
    """With timestamps, output starts with a timestamp and timestamps never decrease."""
    begin = mmt_config["timestamp_begin"]
    name = next(iter(encoded))
    tokens = onnx_whisper.greedy(encoded[name][1], [[mmt_config["sot"]]], timestamps=True)[0]
    stamps = [t for t in tokens if t >= begin]
    assert tokens and tokens[0] >= begin
    assert stamps == sorted(stamps)
    assert all(t < mmt_config["vocab_size"] for t in tokens)


# ------------------------------------------------- other sizes (synthetic weights)


@dataclass(frozen=True)
class SyntheticShape:
    """Dimensions of a random-weight Whisper used to test size independence."""

    n_mels: int
    d_model: int
    n_heads: int
    n_encoder_layers: int
    n_decoder_layers: int
    multilingual: bool


SYNTHETIC_SHAPES = [
    SyntheticShape(128, 256, 4, 2, 3, multilingual=True),    # large-v3-like front end
    SyntheticShape(80, 192, 3, 3, 2, multilingual=False),
]


def _synthetic_vocabulary(ct2_dir: Path, multilingual: bool) -> list[str]:
    """tiny.en's vocabulary, shifted by one regular token for the multilingual layout."""
    tokens = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    if multilingual:
        eot = tokens.index("<|endoftext|>")
        tokens = tokens[:eot] + ["<|synthetic|>"] + tokens[eot:]
    return tokens


def _fill_linear(spec, rng: np.random.Generator, n_out: int, n_in: int) -> None:
    spec.weight = rng.normal(0, n_in ** -0.5, (n_out, n_in)).astype(np.float32)
    spec.bias = rng.normal(0, 0.02, n_out).astype(np.float32)


def _fill_norm(spec, rng: np.random.Generator, d: int) -> None:
    spec.gamma = (1 + rng.normal(0, 0.1, d)).astype(np.float32)
    spec.beta = rng.normal(0, 0.02, d).astype(np.float32)


def _fill_layer(layer, rng: np.random.Generator, d: int, cross: bool) -> None:
    _fill_norm(layer.self_attention.layer_norm, rng, d)
    _fill_linear(layer.self_attention.linear[0], rng, 3 * d, d)
    _fill_linear(layer.self_attention.linear[1], rng, d, d)
    if cross:
        _fill_norm(layer.attention.layer_norm, rng, d)
        _fill_linear(layer.attention.linear[0], rng, d, d)
        _fill_linear(layer.attention.linear[1], rng, 2 * d, d)
        _fill_linear(layer.attention.linear[2], rng, d, d)
    _fill_norm(layer.ffn.layer_norm, rng, d)
    _fill_linear(layer.ffn.linear_0, rng, 4 * d, d)
    _fill_linear(layer.ffn.linear_1, rng, d, 4 * d)


def build_synthetic_ct2(out: Path, shape: SyntheticShape, ct2_dir: Path) -> None:
    """Save a random-weight WhisperSpec model (float16, like the shipped one) into ``out``."""
    from ctranslate2.specs import whisper_spec

    rng = np.random.default_rng(1234)
    d, tokens = shape.d_model, _synthetic_vocabulary(ct2_dir, shape.multilingual)
    spec = whisper_spec.WhisperSpec(shape.n_encoder_layers, shape.n_heads,
                                    shape.n_decoder_layers, shape.n_heads)
    enc, dec = spec.encoder, spec.decoder
    enc.conv1.weight = rng.normal(0, 0.1, (d, shape.n_mels, 3)).astype(np.float32)
    enc.conv1.bias = rng.normal(0, 0.02, d).astype(np.float32)
    enc.conv2.weight = rng.normal(0, (3 * d) ** -0.5, (d, d, 3)).astype(np.float32)
    enc.conv2.bias = rng.normal(0, 0.02, d).astype(np.float32)
    enc.position_encodings.encodings = rng.normal(0, 0.5, (1500, d)).astype(np.float32)
    _fill_norm(enc.layer_norm, rng, d)
    for layer in enc.layer:
        _fill_layer(layer, rng, d, cross=False)
    dec.embeddings.weight = rng.normal(0, 0.05, (len(tokens), d)).astype(np.float32)
    dec.projection.weight = dec.embeddings.weight
    dec.position_encodings.encodings = rng.normal(0, 0.05, (448, d)).astype(np.float32)
    _fill_norm(dec.layer_norm, rng, d)
    for layer in dec.layer:
        _fill_layer(layer, rng, d, cross=True)

    eot = tokens.index("<|endoftext|>")
    sot, translate = eot + 1, tokens.index("<|translate|>")
    spec.config.suppress_ids = [1, 2, 7, 8, 9, 10, 14, 25, translate, translate + 1]
    spec.config.suppress_ids_begin = [220, eot]
    spec.config.lang_ids = list(range(sot + 1, translate))
    spec.config.alignment_heads = [[0, 0]]
    spec.register_vocabulary(tokens)
    spec.validate()
    spec.optimize(quantization="float16")
    out.mkdir(parents=True)
    spec.save(str(out))
    added = [{"id": i, "content": t} for i, t in enumerate(tokens)
             if i >= eot and t.startswith("<|") and not t[2:3].isdigit()]
    (out / "tokenizer.json").write_text(json.dumps({"added_tokens": added,
                                                    "model": {"vocab": {}}}))


@pytest.mark.parametrize("shape", SYNTHETIC_SHAPES,
                         ids=lambda s: f"mels{s.n_mels}-d{s.d_model}-h{s.n_heads}"
                                       f"-e{s.n_encoder_layers}-d{s.n_decoder_layers}"
                                       f"-{'multi' if s.multilingual else 'en'}")
def test_other_sizes_match_ct2(shape: SyntheticShape, ct2_dir: Path, clips: list[Path],
                               tmp_path: Path) -> None:
    """A random-weight model of another size/layout exports and matches CTranslate2."""
    import export_onnx

    synthetic = tmp_path / "ct2"
    build_synthetic_ct2(synthetic, shape, ct2_dir)
    config = export_onnx.export(synthetic, tmp_path / "onnx", "synthetic")
    assert config["multilingual"] == shape.multilingual
    assert (config["n_mels"], config["d_model"], config["n_heads"]) == (
        shape.n_mels, shape.d_model, shape.n_heads)
    assert (config["n_encoder_layers"], config["n_decoder_layers"]) == (
        shape.n_encoder_layers, shape.n_decoder_layers)
    assert config["sot"] == config["eot"] + 1
    assert config["lang_ids"] and config["lang_ids"][0] == config["sot"] + 1

    onnx_model = OnnxWhisper(tmp_path / "onnx")
    ct2_model = ctranslate2.models.Whisper(str(synthetic), device="cpu", compute_type="float32",
                                           intra_threads=2)
    mel = np.stack([log_mel(clip, shape.n_mels) for clip in clips[:2]])
    states, cross = onnx_model.encode(mel)
    ref = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
    assert float(np.abs(states - ref).max()) < ENCODER_TOLERANCE

    prompt = [config["sot"]]
    if shape.multilingual:
        prompt += [config["lang_ids"][0], config["transcribe"]]
    prompt.append(config["no_timestamps"])
    max_new = 16
    expected = [list(r.sequences_ids[0]) for r in ct2_model.generate(
        ctranslate2.StorageView.from_array(mel), [prompt] * len(mel), beam_size=1,
        max_length=2 * max_new)]
    got = onnx_model.greedy(cross, [prompt] * len(mel), timestamps=False,
                            max_new_tokens=max_new)
    print(f"\nsynthetic {shape}: tokens {got}")
    assert got == expected
