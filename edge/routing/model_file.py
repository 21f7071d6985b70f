"""Reading a router weights file, refusing anything unusable with a message naming file and problem.

Kept apart from `model.py` because each check here is a way an operator's file can be wrong:
missing, unreadable, not an `.npz`, pickled objects, missing arrays, bad JSON, another format or
featuriser version, a feature hash that does not match its settings, wrong shapes, non-finite
numbers, a threshold outside [0, 1].
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .hashing import HashingConfig

if TYPE_CHECKING:
    from .model import RouterModel


def read_model_file(cls: type[RouterModel], path: Path) -> RouterModel:
    """Load and check `path`; raises `RouterModelError` starting with the path."""
    from .model import MAX_WEIGHTS_FILE_BYTES, RouterModelError

    def fail(problem: str) -> RouterModelError:
        return RouterModelError(f"router model {path}: {problem}")

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise fail("no such file") from None
    except OSError as exc:
        raise fail(f"cannot read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise fail("not a regular file")
    if size > MAX_WEIGHTS_FILE_BYTES:
        raise fail(f"{size} bytes, more than the {MAX_WEIGHTS_FILE_BYTES} a router file may have")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            missing = {"weights", "meta"} - names
            if missing:
                raise fail(f"not a router weights file (missing {', '.join(sorted(missing))})")
            weights = np.asarray(npz["weights"])
            meta_bytes = np.asarray(npz["meta"])
    except RouterModelError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise fail(f"not a readable .npz weights file ({exc})") from None
    meta = _parse_meta(meta_bytes, fail)
    return _build(cls, meta, weights, path, fail)


def _parse_meta(meta_bytes: np.ndarray, fail: Any) -> dict[str, Any]:
    if meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1:
        raise fail("meta: expected UTF-8 JSON bytes")
    try:
        meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"meta: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise fail("meta: expected a JSON object")
    return meta


def _build(
    cls: type[RouterModel], meta: dict[str, Any], weights: np.ndarray, path: Path, fail: Any
) -> RouterModel:
    from .model import DENSE_FEATURES, FEATURIZER_VERSION, FORMAT_VERSION, config_hash

    if meta.get("format_version") != FORMAT_VERSION:
        raise fail(
            f"incompatible: format version {meta.get('format_version')!r}, "
            f"this isthmus reads {FORMAT_VERSION}"
        )
    if meta.get("featurizer_version") != FEATURIZER_VERSION:
        raise fail(
            f"incompatible: trained with featuriser version {meta.get('featurizer_version')!r}, "
            f"this isthmus computes version {FEATURIZER_VERSION}; retrain with `isthmus router train`"
        )
    if meta.get("dense") != list(DENSE_FEATURES):
        raise fail(f"incompatible: structural features {meta.get('dense')!r} differ from this isthmus's")
    hashing_table = meta.get("hashing")
    if not isinstance(hashing_table, dict):
        raise fail("meta.hashing: expected an object")
    try:
        hashing = HashingConfig(**hashing_table)
    except (TypeError, ValueError) as exc:
        raise fail(f"meta.hashing: {exc}") from None
    if meta.get("config_hash") != config_hash(hashing, DENSE_FEATURES):
        raise fail("corrupt: the feature config hash does not match the file's feature settings")
    expected = 2 * hashing.num_buckets + len(DENSE_FEATURES)
    if weights.ndim != 1 or weights.shape[0] != expected or weights.dtype.kind != "f":
        raise fail(f"weights: expected {expected} floats, got shape {weights.shape} of {weights.dtype}")
    weights = weights.astype(np.float32)
    if not np.all(np.isfinite(weights)):
        raise fail("corrupt: weights contain NaN or infinity")
    bias = _number(meta.get("bias"), "bias", fail)
    platt = meta.get("platt")
    if not (isinstance(platt, list) and len(platt) == 2):
        raise fail("meta.platt: expected [a, b]")
    platt_a = _number(platt[0], "platt[0]", fail)
    platt_b = _number(platt[1], "platt[1]", fail)
    threshold = _number(meta.get("threshold"), "threshold", fail)
    if not 0.0 <= threshold <= 1.0:
        raise fail(f"meta.threshold: expected a probability in [0, 1], got {threshold}")
    mean = meta.get("dense_mean", [])
    if not isinstance(mean, list) or len(mean) not in (0, len(DENSE_FEATURES)):
        raise fail(f"meta.dense_mean: expected {len(DENSE_FEATURES)} numbers")
    dense_mean = tuple(_number(v, "dense_mean", fail) for v in mean)
    info_table = meta.get("info")
    info: dict[str, Any] = info_table if isinstance(info_table, dict) else {}
    weights.setflags(write=False)
    return cls(hashing, weights, bias, platt_a, platt_b, threshold, info, str(path), dense_mean)


def _number(value: object, name: str, fail: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(f"meta.{name}: expected a finite number, got {value!r}")
    return float(value)
