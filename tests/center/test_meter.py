from __future__ import annotations

import pytest
from isthmus.center.meter import RateMeter


def test_rate_over_window_and_decay() -> None:
    m = RateMeter(window_s=10.0)
    assert m.rate(0.0) == 0.0
    m.add(50, now=1.0)
    m.add(50, now=5.0)
    assert m.rate(6.0) == pytest.approx(10.0)
    assert m.rate(11.5) == pytest.approx(5.0)  # the first batch left the window
    assert m.rate(20.0) == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateMeter(window_s=0)
    with pytest.raises(ValueError):
        RateMeter().add(-1, now=0.0)
