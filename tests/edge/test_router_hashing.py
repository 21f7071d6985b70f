"""Hashed n-gram features: stable across processes, any script, bounded work, unit-length blocks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from isthmus.edge.routing.hashing import HashingConfig, codepoints, hash_text, is_word_char, normalise

CFG = HashingConfig()


def test_slots_are_pinned() -> None:
    # weights files depend on these exact slots: a change here must bump FEATURIZER_VERSION
    h = hash_text("hello world", CFG, with_origins=True)
    assert h.indices[:6].tolist() == [2206, 2287, 4824, 5395, 6762, 10177]
    assert h.origins is not None and h.origins[2206] == "orl"


def test_same_slots_in_another_process() -> None:
    code = (
        "from isthmus.edge.routing.hashing import HashingConfig, hash_text;"
        "print(hash_text('设计一个限流器 rate limiter', HashingConfig()).indices.sum())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == int(hash_text("设计一个限流器 rate limiter", CFG).indices.sum())


def test_chinese_gets_character_ngrams_and_no_words() -> None:
    h = hash_text("设计一个分布式限流器", CFG, with_origins=True)
    assert h.origins is not None
    names = set(h.origins.values())
    assert {"设", "设计", "分布式", "限流器"} <= names
    assert int((h.indices >= CFG.num_buckets).sum()) == 0  # no word slots: ideographs are not words
    mixed = hash_text("用Python写一个 web server", CFG, with_origins=True)
    assert mixed.origins is not None and {"python", "web server"} <= set(mixed.origins.values())


def test_blocks_are_unit_length_and_case_and_digits_fold() -> None:
    h = hash_text("The quick brown fox, 42 times", CFG)
    chars = h.values[h.indices < CFG.num_buckets]
    words = h.values[h.indices >= CFG.num_buckets]
    assert np.isclose(np.linalg.norm(chars), 1.0) and np.isclose(np.linalg.norm(words), 1.0)
    a, b = hash_text("HELLO 12", CFG), hash_text("hello 99", CFG)
    assert a.indices.tolist() == b.indices.tolist()
    assert normalise("Ｈｅｌｌｏ\t\n  World", CFG) == "hello world"  # NFKC folds full-width forms


def test_only_head_and_tail_are_hashed() -> None:
    long = "start " + "x" * 100_000 + " end"
    norm = normalise(long, CFG)
    assert len(norm) <= CFG.max_head_chars + CFG.max_tail_chars + 1
    assert norm.startswith("start") and norm.endswith("end")


def test_word_characters() -> None:
    cps = codepoints("ab_1 é 中 한 .")
    assert is_word_char(cps).tolist() == [
        True,
        True,
        True,
        True,
        False,
        True,
        False,
        False,
        False,
        True,
        False,
        False,
    ]


@given(st.text(max_size=400))
def test_any_text_hashes(text: str) -> None:
    h = hash_text(text, CFG, with_origins=True)
    assert h.indices.shape == h.values.shape
    assert h.indices.size == 0 or (0 <= h.indices.min() and h.indices.max() < 2 * CFG.num_buckets)
    assert np.all(np.diff(h.indices) > 0)
    assert np.all(np.isfinite(h.values))
