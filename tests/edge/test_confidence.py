"""Confidence monitor: windowed mean entropy, only within the first N tokens."""

from __future__ import annotations

import pytest
from isthmus.edge.confidence import ConfidenceMonitor


def test_confident_answer_never_collapses() -> None:
    m = ConfidenceMonitor(window=4, threshold=2.0, max_checked_tokens=16)
    for _ in range(10):
        assert m.observe([0.5, 1.0]) is False
    assert m.is_done_checking and not m.is_collapsed


def test_collapse_needs_a_full_window_above_threshold() -> None:
    m = ConfidenceMonitor(window=4, threshold=2.0, max_checked_tokens=16)
    assert m.observe([9.0, 9.0, 9.0]) is False  # window not full yet
    assert m.observe([9.0]) is True
    assert m.collapsed_at == 4
    assert m.observe([0.0]) is True  # sticky


def test_one_spike_is_averaged_away() -> None:
    m = ConfidenceMonitor(window=4, threshold=2.0, max_checked_tokens=32)
    assert m.observe([0.1, 0.1, 7.0, 0.1, 0.1, 0.1]) is False
    assert m.last_mean is not None and m.last_mean < 2.0


def test_sliding_window_drops_old_tokens() -> None:
    m = ConfidenceMonitor(window=3, threshold=1.0, max_checked_tokens=32)
    assert m.observe([0.0, 0.0, 0.0, 2.0, 2.0]) is True  # last 3: 0, 2, 2 -> mean 1.33
    assert m.collapsed_at == 5


def test_late_collapse_is_ignored() -> None:
    m = ConfidenceMonitor(window=2, threshold=1.0, max_checked_tokens=4)
    assert m.observe([0.0, 0.0, 0.0, 0.0]) is False
    assert m.observe([5.0, 5.0, 5.0]) is False
    assert m.num_tokens == 5 and m.collapsed_at is None


def test_non_finite_entropies_do_not_crash() -> None:
    m = ConfidenceMonitor(window=2, threshold=1.0, max_checked_tokens=8)
    assert m.observe([float("nan"), float("nan")]) is False
    assert m.observe([float("inf"), float("inf")]) is True


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        ConfidenceMonitor(window=0)
    with pytest.raises(ValueError, match="max_checked_tokens"):
        ConfidenceMonitor(window=8, max_checked_tokens=4)
    with pytest.raises(ValueError, match="threshold"):
        ConfidenceMonitor(threshold=float("nan"))
