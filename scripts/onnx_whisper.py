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
CACHE_SLOTS_STEP = 32                # the engine's: the cache grows by this many slots


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
        cache = SlotCache(cfg, batch)
        generated: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        for step in range(max_new_tokens):
            logits = cache.run(self.decoder, tokens, positions, mask, cross)
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


class SlotCache:
    """The decoder's self-attention cache, filled in place, as the engine keeps it.

    A call reads every slot (the unfilled ones masked) and returns only its
    new keys and values, which go into the slots after the filled ones; the
    cache starts with none and grows by whole steps when they do not fit.
    """

    def __init__(self, cfg: dict, batch: int) -> None:
        n_layers, n_heads = cfg["n_decoder_layers"], cfg["n_heads"]
        self.shape = (batch, n_heads, 0, cfg["d_model"] // n_heads)
        self.names = [f"self_{kv}_{i}" for i in range(n_layers) for kv in "kv"]
        self.arrays = {name: self._zeros(0) for name in self.names}
        self.filled = 0

    def _zeros(self, slots: int) -> np.ndarray:
        batch, heads, _, head_dim = self.shape
        return np.zeros((batch, heads, slots, head_dim), dtype=np.float32)

    @property
    def slots(self) -> int:
        return self.arrays[self.names[0]].shape[2]

    def run(self, decoder: ort.InferenceSession, tokens: np.ndarray, positions: np.ndarray,
            mask: np.ndarray, cross: dict[str, np.ndarray]) -> np.ndarray:
        """One call; ``mask`` is [batch, filled + new]. Returns the logits."""
        new = tokens.shape[1]
        needed = self.filled + new
        graph_mask = np.full((tokens.shape[0], self.slots + new), MASK_VALUE, dtype=np.float32)
        graph_mask[:, :self.filled] = mask[:, :self.filled]
        graph_mask[:, self.slots:] = mask[:, self.filled:]
        outputs = ["logits", *(f"step_{name}" for name in self.names)]
        logits, *steps = decoder.run(outputs, {
            "tokens": tokens, "positions": positions, "attention_mask": graph_mask,
            **self.arrays, **cross})
        if needed > self.slots:
            slots = -(-needed // CACHE_SLOTS_STEP) * CACHE_SLOTS_STEP
            for name, array in self.arrays.items():
                grown = self._zeros(slots)
                grown[:, :, :self.filled] = array[:, :, :self.filled]
                self.arrays[name] = grown
        for name, step in zip(self.names, steps):
            self.arrays[name][:, :, self.filled:needed] = step
        self.filled = needed
        return logits
