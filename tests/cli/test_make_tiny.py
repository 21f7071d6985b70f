"""`isthmus model make-tiny` writes a loadable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from isthmus.cli.main import main


def test_make_tiny_writes_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert (
        main(["model", "make-tiny", str(out), "--arch", "qwen2", "--seed", "3", "--hidden-size", "32"]) == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["model_type"] == "qwen2"
    assert (out / "tokenizer.json").is_file() and list(out.glob("*.safetensors"))


def test_make_tiny_sharded_has_an_index(tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert main(["model", "make-tiny", str(out), "--sharded"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)


def test_same_seed_same_weights(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert main(["model", "make-tiny", str(tmp_path / name), "--seed", "5"]) == 0
    a = sorted((tmp_path / "a").glob("*.safetensors"))[0].read_bytes()
    b = sorted((tmp_path / "b").glob("*.safetensors"))[0].read_bytes()
    assert a == b
