"""The exported encoder and decoder run from Python with ONNX Runtime.

One greedy loop over `decoder.onnx` (its self-attention cache, left-padded
prompts of different lengths, a batch of rows) for the export tests, which
compare it with CTranslate2 token for token, and for the benches that decode
outside `mmt` (`benches/window_cut.py`). What a step may emit is the caller's
choice of `Rules`; `DecodeRules` are CTranslate2's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import onnxruntime as ort

MAX_NEW_TOKENS = 224                 # CTranslate2: min(max_length / 2, max_length - start_step)
MAX_INITIAL_TIMESTAMP_INDEX = 50     # CTranslate2's default
MASK_VALUE = -1e9


class Rules(Protocol):
    def disabled(self, step: int, generated: Sequence[int], logits: np.ndarray) -> np.ndarray:
        """Boolean [vocab] mask of the tokens forbidden at ``step`` for one row."""


@dataclass
class DecodeRules:
    """CTranslate2's Whisper logits processing for greedy search."""

    config: dict
    vocab_size: int
    timestamps: bool

    def disabled(self, step: int, generated: Sequence[int], logits: np.ndarray) -> np.ndarray:
        cfg = self.config
        off = np.zeros(self.vocab_size, dtype=bool)
        off[cfg["suppress_ids"]] = True
        if step == 0:
            off[cfg["suppress_ids_begin"]] = True
        if self.timestamps:
            self._timestamp_rules(step, generated, logits, off)
        return off

    def _timestamp_rules(self, step: int, generated: Sequence[int], logits: np.ndarray,
                         off: np.ndarray) -> None:
        cfg = self.config
        begin, eot = cfg["timestamp_begin"], cfg["eot"]
        off[cfg["no_timestamps"]] = True
        check_probs = False
        if step == 0:
            off[:begin] = True
            off[begin + MAX_INITIAL_TIMESTAMP_INDEX + 1:] = True
        else:
            last = generated[-1]
            if last >= begin:
                penultimate = generated[-2] if step > 1 else last
                if penultimate >= begin:
                    off[begin:] = True
                else:
                    off[:eot] = True
                    off[begin:last] = True
                    check_probs = True
            else:
                check_probs = True
                stamps = [t for t in generated if t >= begin]
                if stamps:
                    off[begin:stamps[-1] + 1] = True
        if check_probs:
            masked = np.where(off, -np.inf, logits.astype(np.float64))
            log_probs = masked - np.logaddexp.reduce(masked)
            if np.logaddexp.reduce(log_probs[begin:]) > log_probs[:begin].max():
                off[:begin] = True


class OnnxWhisper:
    """The encoder.onnx / decoder.onnx of a model folder (with its mmt-model.json)."""

    def __init__(self, model_dir: Path, threads: int = 2) -> None:
        self.config = json.loads((model_dir / "mmt-model.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(model_dir / "encoder.onnx"), options,
                                            providers=providers)
        self.decoder = ort.InferenceSession(str(model_dir / "decoder.onnx"), options,
                                            providers=providers)

    def encode(self, mel: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """mel [B, n_mels, frames] -> (encoder_states, {cross_k_i / cross_v_i: array})."""
        names = [o.name for o in self.encoder.get_outputs()]
        states, *cross = self.encoder.run(None, {"mel": mel})
        return states, dict(zip(names[1:], cross))

    def greedy(self, cross: dict[str, np.ndarray], prompts: Sequence[Sequence[int]],
               timestamps: bool = False, *, rules: Rules | None = None,
               max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[int]]:
        """Greedy decoding of a batch; prompts of different lengths are left-padded.

        `rules` defaults to CTranslate2's, with or without `timestamps`.
        """
        cfg = self.config
        rules = rules or DecodeRules(cfg, cfg["vocab_size"], timestamps)
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        pads = [width - len(p) for p in prompts]
        tokens = np.array([[cfg["eot"]] * pad + list(p) for p, pad in zip(prompts, pads)],
                          dtype=np.int64)
        positions = np.array([[max(0, i - pad) for i in range(width)] for pad in pads],
                             dtype=np.int64)
        mask = np.array([[MASK_VALUE] * pad + [0.0] * (width - pad) for pad in pads],
                        dtype=np.float32)
        n_layers, n_heads = cfg["n_decoder_layers"], cfg["n_heads"]
        empty = np.zeros((batch, n_heads, 0, cfg["d_model"] // n_heads), dtype=np.float32)
        cache = {f"self_{kv}_{i}": empty for i in range(n_layers) for kv in "kv"}
        cache_outputs = [f"new_self_{kv}_{i}" for i in range(n_layers) for kv in "kv"]
        generated: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        for step in range(max_new_tokens):
            logits, *new_cache = self.decoder.run(["logits", *cache_outputs], {
                "tokens": tokens, "positions": positions, "attention_mask": mask,
                **cache, **cross})
            cache = {name[len("new_"):]: value for name, value in zip(cache_outputs, new_cache)}
            next_tokens = []
            for row in range(batch):
                if done[row]:
                    next_tokens.append(cfg["eot"])
                    continue
                off = rules.disabled(step, generated[row], logits[row])
                token = int(np.argmax(np.where(off, -np.inf, logits[row])))
                done[row] = token == cfg["eot"]
                if not done[row]:
                    generated[row].append(token)
                next_tokens.append(token)
            if all(done):
                break
            tokens = np.array(next_tokens, dtype=np.int64)[:, None]
            positions = positions[:, -1:] + 1
            mask = np.concatenate([mask, np.zeros((batch, 1), dtype=np.float32)], axis=1)
        return generated
