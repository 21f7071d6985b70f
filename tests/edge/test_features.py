"""Prompt features: each signal fires on what it should and stays quiet on small talk."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from isthmus.edge.features import MAX_HEAD_CHARS, MAX_SCANNED_CHARS, MAX_TAIL_CHARS, extract_features


def test_small_talk_has_no_signals() -> None:
    f = extract_features("Hello there, how are you today?", 9, 32, 1)
    assert (f.code, f.math, f.steps, f.constraints, f.depth) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert 0 < f.length < 0.01


def test_code_fence_saturates_code() -> None:
    f = extract_features("Fix this:\n```python\ndef f(x):\n    return x\n```", 20, 64, 1)
    assert f.code == 1.0
    assert f.math == 0.0


def test_code_words_count_one_each() -> None:
    f = extract_features("Write a python function", 5, 64, 1)
    assert f.num_code_hits == 2
    assert 0 < f.code < 1


def test_math_signals() -> None:
    f = extract_features(r"Prove the theorem: \int_0^1 x^2 dx = 1/3 and compute 3 * 4", 30, 64, 1)
    assert f.math == 1.0
    assert extract_features("nice weather", 2, 8, 1).math == 0.0


def test_steps_and_constraints() -> None:
    text = (
        "Explain step by step. First list the inputs, then sort them, finally print them.\n"
        "1. must be in JSON\n2. at most 3 items\n3. do not use loops"
    )
    f = extract_features(text, 60, 64, 1)
    assert f.steps == 1.0
    assert f.constraints == 1.0


def test_lengths_and_depth_saturate() -> None:
    f = extract_features("x", 10_000, 100_000, 50)
    assert (f.length, f.output_length, f.depth) == (1.0, 1.0, 1.0)
    f = extract_features("x", 1024, 1024, 1)
    assert f.length == 0.5 and f.output_length == 0.5 and f.depth == 0.0


def test_bad_counts_are_clamped() -> None:
    f = extract_features("x", -5, -1, 0)
    assert (f.num_prompt_tokens, f.max_tokens, f.num_turns) == (0, 0, 1)


def test_only_the_head_and_tail_are_scanned() -> None:
    middle = " ```def f(): pass``` prove theorem "
    text = "a" * MAX_HEAD_CHARS + middle + "b" * MAX_SCANNED_CHARS
    f = extract_features(text, 100, 10, 1)
    assert f.code == 0.0 and f.math == 0.0
    assert f.num_chars == len(text) and len(f.text) == MAX_SCANNED_CHARS + 1
    f = extract_features("a" * MAX_SCANNED_CHARS + middle, 100, 10, 1)
    assert f.code == 1.0 and f.math > 0  # the tail is read: "... Summarise the above."
    assert len(middle) < MAX_TAIL_CHARS


@given(st.text(max_size=500), st.integers(-10, 10**6), st.integers(-10, 10**6), st.integers(-10, 500))
def test_every_feature_is_normalised(text: str, n: int, m: int, turns: int) -> None:
    f = extract_features(text, n, m, turns)
    for name, value in f.normalised().items():
        assert 0.0 <= value <= 1.0, name
