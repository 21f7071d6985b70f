"""The trained router model: features, a calibrated logistic score, explanations, the weights file.

Input of the model: the prompt text (hashed character and word n-grams, `hashing.py`), the cheap
structural features of `isthmus.edge.features` (code, math, step and constraint signals), the
requested `max_tokens` and the number of chat turns. Output: the calibrated probability that the
prompt needs the center, `sigmoid(platt_a * margin + platt_b)`, where `margin` is the linear model's
log-odds and (platt_a, platt_b) were fitted on out-of-fold margins of the training split.

The weights file is one `.npz` (no pickles): `weights` (float32 [2 * num_buckets + num_dense]) and
`meta` (UTF-8 JSON bytes: format and featuriser versions, hashing settings, dense feature names,
their hash, bias, Platt terms, default threshold and the figures measured when it was trained).
`RouterModel.load` refuses anything else with a `RouterModelError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..features import PromptFeatures, extract_features
from .hashing import HashingConfig, hash_text

FORMAT_VERSION = 1  # layout of the .npz file
FEATURIZER_VERSION = 1  # meaning of the features: bump when hashing.py or dense_features change
DENSE_FEATURES = (
    "code_signals",
    "math_signals",
    "step_markers",
    "constraints",
    "max_tokens",
    "num_turns",
    "prompt_chars",
    "prompt_lines",
    "cjk_share",
    "digit_share",
)
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "routing_data" / "router.npz"
MAX_WEIGHTS_FILE_BYTES = 64 * 1024 * 1024  # bytes: a router file is ~1 MB; refuse absurd ones

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_DIGIT = re.compile(r"\d")
_STATS_CHARS = 4096  # chars: shares are measured on the head only


class RouterModelError(ValueError):
    """A weights file that cannot be used; the message starts with the file's path."""


def dense_features(features: PromptFeatures) -> np.ndarray:
    """[len(DENSE_FEATURES)] float32, each in [0, 1]."""
    text = features.text
    head = text[:_STATS_CHARS]
    num_head = max(1, len(head))
    return np.array(
        [
            features.code,
            features.math,
            features.steps,
            features.constraints,
            min(1.0, math.log1p(features.max_tokens) / math.log1p(8192)),
            features.depth,
            min(1.0, math.log1p(features.num_chars) / math.log1p(32768)),
            min(1.0, math.log1p(text.count("\n")) / math.log1p(256)),
            len(_CJK.findall(head)) / num_head,
            len(_DIGIT.findall(head)) / num_head,
        ],
        dtype=np.float32,
    )


def featurise(features: PromptFeatures, hashing: HashingConfig) -> tuple[np.ndarray, np.ndarray]:
    """The model's sparse input: (indices int64, values float32), hashed slots then dense ones."""
    hashed = hash_text(features.text, hashing)
    offset = 2 * hashing.num_buckets
    dense = dense_features(features)
    indices = np.concatenate([hashed.indices, np.arange(offset, offset + dense.size, dtype=np.int64)])
    return indices, np.concatenate([hashed.values, dense])


def prompt_features(text: str, max_tokens: int = 512, num_turns: int = 1) -> PromptFeatures:
    """`extract_features` with the token count estimated from the text (no tokenizer needed)."""
    return extract_features(text, estimate_tokens(text), max_tokens, num_turns)


def estimate_tokens(text: str) -> int:
    """A tokenizer-free prompt length: ~4 chars per token, one per CJK character (head sampled)."""
    if not isinstance(text, str):
        return 0
    head = text[:_STATS_CHARS]
    num_cjk = len(_CJK.findall(head)) * max(1, len(text)) // max(1, len(head))
    return num_cjk + (len(text) - num_cjk + 3) // 4


def config_hash(hashing: HashingConfig, dense: tuple[str, ...] | list[str]) -> str:
    """Fingerprint of what the weights mean: featuriser version, hashing settings, dense names."""
    blob = json.dumps(
        {"featurizer_version": FEATURIZER_VERSION, "hashing": hashing.as_dict(), "dense": list(dense)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class RouterModel:
    """A fitted router: weights, calibration and default threshold. Immutable once loaded."""

    hashing: HashingConfig
    weights: np.ndarray  # [2 * num_buckets + len(DENSE_FEATURES)] float32
    bias: float
    platt_a: float = 1.0
    platt_b: float = 0.0
    threshold: float = 0.5  # default threshold on the calibrated probability
    info: dict[str, Any] = field(default_factory=dict)  # how it was trained and what it measured
    source: str = "<memory>"
    # mean structural features of the training prompts: explanations report each structural
    # feature's contribution relative to a typical prompt, not to an all-zero one
    dense_mean: tuple[float, ...] = ()

    def margin(self, features: PromptFeatures) -> float:
        """The linear model's log-odds that the prompt needs the center."""
        indices, values = featurise(features, self.hashing)
        return float(np.multiply(self.weights[indices], values).sum()) + self.bias

    def probability(self, features: PromptFeatures) -> float:
        """The calibrated probability in [0, 1] that the prompt needs the center."""
        return _sigmoid(self.platt_a * self.margin(features) + self.platt_b)

    def explain(self, features: PromptFeatures, k: int = 8) -> list[tuple[str, float]]:
        """The `k` features that moved the log-odds most: (name, contribution), largest |c| first.

        Hashed features are named by the first n-gram that landed in their slot, as `"ngram"`;
        structural ones by name, relative to the training prompts' mean. Positive contributions
        push towards the center; all are on the calibrated log-odds scale.
        """
        hashed = hash_text(features.text, self.hashing, with_origins=True)
        origins = hashed.origins or {}
        contrib: list[tuple[str, float]] = []
        for slot, value in zip(hashed.indices.tolist(), hashed.values.tolist(), strict=True):
            c = float(self.weights[slot]) * value * self.platt_a
            contrib.append((json.dumps(origins.get(slot, "?"), ensure_ascii=False), c))
        offset = 2 * self.hashing.num_buckets
        mean = self.dense_mean or (0.0,) * len(DENSE_FEATURES)
        dense = dense_features(features).tolist()
        for i, (name, value, ref) in enumerate(zip(DENSE_FEATURES, dense, mean, strict=True)):
            contrib.append((name, float(self.weights[offset + i]) * (value - ref) * self.platt_a))
        contrib.sort(key=lambda item: -abs(item[1]))
        return contrib[: max(0, k)]

    def meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "featurizer_version": FEATURIZER_VERSION,
            "hashing": self.hashing.as_dict(),
            "dense": list(DENSE_FEATURES),
            "config_hash": config_hash(self.hashing, DENSE_FEATURES),
            "bias": self.bias,
            "platt": [self.platt_a, self.platt_b],
            "threshold": self.threshold,
            "dense_mean": list(self.dense_mean),
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the weights file (`.npz`); returns its path."""
        path = Path(path)
        meta = json.dumps(self.meta(), ensure_ascii=False, sort_keys=True).encode()
        with path.open("wb") as f:
            np.savez_compressed(
                f, weights=self.weights.astype(np.float32), meta=np.frombuffer(meta, dtype=np.uint8)
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> RouterModel:
        """Read and check a weights file; raises `RouterModelError` naming the file and the problem."""
        from .model_file import read_model_file

        return read_model_file(cls, Path(path))


def _sigmoid(x: float) -> float:
    if not math.isfinite(x):
        return 0.0 if x < 0 or math.isnan(x) else 1.0
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


__all__ = [
    "DEFAULT_MODEL_PATH",
    "DENSE_FEATURES",
    "FEATURIZER_VERSION",
    "FORMAT_VERSION",
    "RouterModel",
    "RouterModelError",
    "config_hash",
    "dense_features",
    "featurise",
    "prompt_features",
]
