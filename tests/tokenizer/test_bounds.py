"""The byte bound on token counts: it holds for real tokenizers on any text, and it refuses to
promise anything for tokenizers that can fold or drop text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isthmus.tokenizer import Tokenizer
from isthmus.tokenizer.bounds import max_bytes_per_token, min_num_tokens

TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)), max_size=200
) | st.sampled_from(["", " " * 500, "漢字かな" * 50, "\u212a" * 100, "ᄀ\u1161\u11a8" * 40, "<s></s>" * 20])


def _check(tok: Tokenizer, text: str) -> None:
    num_bytes = len(text.encode("utf-8"))
    assert tok.max_bytes_per_token is not None
    assert len(tok.encode(text, add_special_tokens=False)) >= tok.min_num_tokens(num_bytes)


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_bound_holds_for_the_tiny_byte_level_bpe(tiny_tok: Tokenizer, text: str) -> None:
    _check(tiny_tok, text)


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_bound_holds_for_sentencepiece_style(sp_tok: Tokenizer, text: str) -> None:
    _check(sp_tok, text)


def test_bound_is_tight_enough_to_refuse_a_megabyte_early(tiny_tok: Tokenizer) -> None:
    # its longest token is a special one ("<｜end▁of▁sentence｜>", 29 bytes): a 1 MiB prompt is
    # still provably past a 32k-token context without tokenizing it
    assert tiny_tok.max_bytes_per_token == 29
    assert tiny_tok.min_num_tokens(1 << 20) > 32768


def test_long_texts_encode_the_same_through_the_gil_free_path(tiny_tok: Tokenizer) -> None:
    text = "Hello, world. 漢字かな 12345 " * 400  # past GIL_FREE_MIN_CHARS
    expected = list(tiny_tok._tok.encode(text, add_special_tokens=True).ids)
    assert tiny_tok.encode(text) == expected


def _spec(**parts: object) -> dict[str, object]:
    base: dict[str, object] = {
        "normalizer": None, "pre_tokenizer": {"type": "ByteLevel"}, "added_tokens": [],
        "model": {"type": "BPE", "vocab": {"a": 0, "abcd": 1}},
    }
    return base | parts


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({}, 4),
        ({"normalizer": {"type": "NFC"}}, 16),
        ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}}, 48),
        ({"normalizer": {"type": "Strip"}}, None),
        ({"normalizer": {"type": "Replace", "pattern": {"Regex": " +"}, "content": " "}}, None),
        ({"normalizer": {"type": "Replace", "pattern": {"String": "  "}, "content": " "}}, 8),
        ({"pre_tokenizer": {"type": "WhitespaceSplit"}}, None),
        ({"pre_tokenizer": {"type": "Split", "behavior": "Removed"}}, None),
        ({"pre_tokenizer": {"type": "Split", "behavior": "Isolated"}}, 4),  # not byte level: >= 4
        ({"model": {"type": "WordPiece", "vocab": {"a": 0}}}, None),
        (
            {"pre_tokenizer": None,
             "model": {"type": "BPE", "vocab": {"a": 0}, "unk_token": "a", "fuse_unk": True}},
            None,
        ),
        ({"added_tokens": [{"content": "<|a very long special|>"}]}, 23),
        ({"added_tokens": [{"content": "<m>", "lstrip": True}]}, None),
        ({"truncation": {"max_length": 8}}, None),
    ],
)
def test_which_tokenizers_get_a_bound(parts: dict[str, object], expected: int | None) -> None:
    assert max_bytes_per_token(json.loads(json.dumps(_spec(**parts)))) == expected


def test_min_num_tokens() -> None:
    assert min_num_tokens(0, 4) == 0 and min_num_tokens(9, 4) == 3 and min_num_tokens(10**6, None) == 0
