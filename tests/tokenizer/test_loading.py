"""Tokenizer.from_dir: typed errors on bad folders and ids, fingerprints, special-token config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from isthmus.tokenizer import Tokenizer, TokenizerError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(path: Path, **changes: object) -> None:
    cfg_file = path / "tokenizer_config.json"
    config = json.loads(cfg_file.read_text(encoding="utf-8"))
    config.update(changes)
    cfg_file.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")


def test_fingerprint_equal_files_equal_prints(tiny_dir: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_dir, tmp_path / "copy")
    base = Tokenizer.from_dir(tiny_dir).fingerprint
    assert Tokenizer.from_dir(copy).fingerprint == base
    assert len(base) == 64 and int(base, 16) >= 0
    _edit_config(copy, chat_template="something else", model_max_length=8)
    assert Tokenizer.from_dir(copy).fingerprint == base  # token ids unaffected
    _edit_config(copy, eos_token="<｜User｜>")
    assert Tokenizer.from_dir(copy).fingerprint != base


def test_missing_and_malformed_files(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path / "nowhere")
    bad = _copy(tiny_dir, tmp_path / "bad")
    (bad / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"invalid tokenizer\.json"):
        Tokenizer.from_dir(bad)
    bad_cfg = _copy(tiny_dir, tmp_path / "bad_cfg")
    (bad_cfg / "tokenizer_config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TokenizerError, match="JSON object"):
        Tokenizer.from_dir(bad_cfg)


def test_special_token_shapes(tiny_dir: Path, tmp_path: Path) -> None:
    path = _copy(tiny_dir, tmp_path / "t")
    _edit_config(path, bos_token=42)
    with pytest.raises(TokenizerError, match="bos_token"):
        Tokenizer.from_dir(path)
    _edit_config(path, bos_token=None, eos_token=None)
    with pytest.raises(TokenizerError, match="eos_token"):
        Tokenizer.from_dir(path)


def test_special_tokens_map_fallback_and_max_length(tiny_dir: Path, tmp_path: Path) -> None:
    path = _copy(tiny_dir, tmp_path / "t")
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    special = {k: config.pop(k) for k in ("bos_token", "eos_token", "pad_token")}
    config["model_max_length"] = 1e30  # what transformers writes for "no limit"
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (path / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    tok, ref = Tokenizer.from_dir(path), Tokenizer.from_dir(tiny_dir)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 1)
    assert tok.model_max_length > 1 << 20 and ref.model_max_length == 4096


def test_bad_ids_and_inputs_are_typed_errors(tiny_tok: Tokenizer) -> None:
    for ids in ([tiny_tok.vocab_size], [-1], [1.5], [True]):
        with pytest.raises(TokenizerError, match="out of range"):
            tiny_tok.decode(ids)  # type: ignore[list-item]
    with pytest.raises(TokenizerError):
        tiny_tok.encode(b"bytes")  # type: ignore[arg-type]


def test_accessors(tiny_tok: Tokenizer) -> None:
    assert tiny_tok.id_to_token(tiny_tok.eos_token_id) == tiny_tok.eos_token
    assert tiny_tok.token_to_id("<｜User｜>") == 2
    assert tiny_tok.is_special_id(0) and not tiny_tok.is_special_id(2)
    assert tiny_tok.all_special_ids == [0, 1]
    assert len(tiny_tok) == tiny_tok.vocab_size
    assert tiny_tok.id_to_token(10**6) is None
