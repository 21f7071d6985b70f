"""Router weights files: round trip, and every way a file can be unusable is refused with a message
naming the file and the problem (at load, at edge config load, and at router construction)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from isthmus.edge.config import ConfigError, EdgeConfig
from isthmus.edge.router import Router, RouterConfig, load_model
from isthmus.edge.routing.hashing import HashingConfig
from isthmus.edge.routing.model import (
    DEFAULT_MODEL_PATH,
    DENSE_FEATURES,
    RouterModel,
    RouterModelError,
    prompt_features,
)

SMALL = HashingConfig(num_buckets=256)


def small_model(threshold: float = 0.4) -> RouterModel:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=2 * SMALL.num_buckets + len(DENSE_FEATURES)).astype(np.float32)
    return RouterModel(SMALL, weights, -0.5, 1.5, 0.1, threshold, {"note": "test"}, "<test>", (0.1,) * 10)


def write_npz(path: Path, weights: np.ndarray, meta: object) -> Path:
    blob = json.dumps(meta).encode() if not isinstance(meta, bytes) else meta
    with path.open("wb") as f:
        np.savez(f, weights=weights, meta=np.frombuffer(blob, dtype=np.uint8))
    return path


def test_round_trip(tmp_path: Path) -> None:
    model = small_model()
    loaded = RouterModel.load(model.save(tmp_path / "r.npz"))
    assert loaded.source == str(tmp_path / "r.npz")
    assert (loaded.hashing, loaded.bias, loaded.threshold) == (SMALL, -0.5, 0.4)
    assert loaded.info == {"note": "test"} and loaded.dense_mean == (0.1,) * 10
    np.testing.assert_array_equal(loaded.weights, model.weights)
    f = prompt_features("Prove that sqrt(2) is irrational.")
    assert loaded.probability(f) == pytest.approx(model.probability(f))


def test_bundled_model_loads_and_is_small() -> None:
    assert DEFAULT_MODEL_PATH.stat().st_size < 2 * 1024 * 1024  # bytes
    model = load_model("")
    assert model is not None and 0.0 < model.threshold < 1.0
    assert model.info["cv"]["folds"] == 5


def _meta(model: RouterModel, **changes: object) -> dict[str, object]:
    meta = model.meta()
    meta.update(changes)
    return meta


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("missing", "no such file"),
        ("empty", "not a readable .npz"),
        ("garbage", "not a readable .npz"),
        ("no_meta", "missing meta"),
        ("pickled", "not a readable .npz"),
        ("bad_json", "meta: not valid JSON"),
        ("format", "incompatible: format version"),
        ("featuriser", "incompatible: trained with featuriser version"),
        ("dense", "incompatible: structural features"),
        ("hash", "corrupt: the feature config hash"),
        ("shape", "weights: expected"),
        ("nan", "corrupt: weights contain NaN"),
        ("threshold", "meta.threshold: expected a probability"),
        ("platt", "meta.platt"),
        ("buckets", "meta.hashing: num_buckets"),
    ],
)
def test_bad_files_are_refused_naming_file_and_problem(tmp_path: Path, case: str, problem: str) -> None:
    model = small_model()
    path = tmp_path / "bad.npz"
    w = model.weights
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"PK\x03\x04 this is not really a zip file")
    elif case == "no_meta":
        np.savez(path, weights=w)
    elif case == "pickled":
        np.savez(path, weights=w, meta=np.array([{"a": 1}], dtype=object))
    elif case == "bad_json":
        write_npz(path, w, b"{not json")
    elif case == "format":
        write_npz(path, w, _meta(model, format_version=99))
    elif case == "featuriser":
        write_npz(path, w, _meta(model, featurizer_version=0))
    elif case == "dense":
        write_npz(path, w, _meta(model, dense=["code_signals"]))
    elif case == "hash":
        write_npz(path, w, _meta(model, config_hash="0" * 16))
    elif case == "shape":
        write_npz(path, w[:-1], _meta(model))
    elif case == "nan":
        write_npz(path, np.where(np.arange(w.size) == 3, np.nan, w).astype(np.float32), _meta(model))
    elif case == "threshold":
        write_npz(path, w, _meta(model, threshold=1.5))
    elif case == "platt":
        write_npz(path, w, _meta(model, platt=[1.0]))
    elif case == "buckets":
        write_npz(path, w, _meta(model, hashing={**SMALL.as_dict(), "num_buckets": 300}))
    with pytest.raises(RouterModelError) as info:
        RouterModel.load(path)
    message = str(info.value)
    assert message.startswith(f"router model {path}: "), message
    assert problem in message, message


def test_router_construction_refuses_a_bad_file_and_the_running_router_stays(tmp_path: Path) -> None:
    running = Router()
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(RouterModelError, match=r"corrupt\.npz"):
        Router(RouterConfig(model=str(bad)))
    # loading is a pure function: nothing shared was touched, the running router still decides
    f = prompt_features("hello there")
    assert running.score(f) == Router().score(f)


def test_edge_config_refuses_a_bad_model_at_load(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('model = { path = "m" }\n[router]\nmodel = "weights/missing.npz"\n')
    with pytest.raises(ConfigError) as info:
        EdgeConfig.load(config)
    message = str(info.value)
    assert message.startswith("edge.toml: router.model: router model ")
    assert str(tmp_path / "weights" / "missing.npz") in message and "no such file" in message


def test_edge_config_resolves_a_good_model_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    small_model(threshold=0.3).save(tmp_path / "weights" / "mine.npz")
    config = tmp_path / "edge.toml"
    config.write_text('model = { path = "m" }\n[router]\nmodel = "weights/mine.npz"\n')
    cfg = EdgeConfig.load(config)
    assert cfg.router.model == str((tmp_path / "weights" / "mine.npz").resolve())
    router = Router(cfg.router)
    assert router.base_threshold == 0.3
    for special in ("", "heuristic"):
        config.write_text(f'model = {{ path = "m" }}\n[router]\nmodel = "{special}"\n')
        assert EdgeConfig.load(config).router.model == special
