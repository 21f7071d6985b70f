"""models/tiny_tokenizer.py: determinism, byte-level round trips, sensible pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isthmus.models.tiny_tokenizer import BOS_TOKEN, EOS_TOKEN, write_tiny_tokenizer
from isthmus.tokenizer import Tokenizer


def test_write_is_byte_for_byte_deterministic(tmp_path: Path, tiny_dir: Path) -> None:
    write_tiny_tokenizer(tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_dir / name).read_bytes()
    assert Tokenizer.from_dir(tmp_path / "again").fingerprint == Tokenizer.from_dir(tiny_dir).fingerprint


def test_vocab_size_and_special_tokens(tmp_path: Path, tiny_tok: Tokenizer) -> None:
    assert tiny_tok.vocab_size == 1024
    assert tiny_tok.id_to_token(tiny_tok.bos_token_id or 0) == BOS_TOKEN
    assert tiny_tok.id_to_token(tiny_tok.eos_token_id) == EOS_TOKEN
    assert tiny_tok.pad_token_id == tiny_tok.eos_token_id
    write_tiny_tokenizer(tmp_path, vocab_size=1536)
    assert Tokenizer.from_dir(tmp_path).vocab_size == 1536
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["add_bos_token"] is True and "User: " in config["chat_template"]


def test_too_small_vocab_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_tokenizer(tmp_path, vocab_size=100)


def test_english_and_chinese_get_merged_pieces(tiny_tok: Tokenizer) -> None:
    for text in ("the library opened on Saturdays", "今天天气真好，我们去公园散步吧。"):
        ids = tiny_tok.encode(text, add_special_tokens=False)
        assert len(ids) < len(text.encode("utf-8")) * 0.7  # merges apply, not raw bytes
        assert tiny_tok.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_any_text_round_trips_through_bytes(tiny_tok: Tokenizer, text: str) -> None:
    # Unseen characters, emoji, control characters and lone surrogates excluded by encodability.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return
    ids = tiny_tok.encode(text, add_special_tokens=False)
    assert tiny_tok.decode(ids, skip_special_tokens=False) == text


def test_unseen_rare_chars_and_emoji_round_trip(tiny_tok: Tokenizer) -> None:
    text = "罕见字：龘靐齉 🦜🧬 👩‍👩‍👧 ñ ø ß"
    assert tiny_tok.decode(tiny_tok.encode(text)) == text
