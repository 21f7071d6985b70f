"""Circuit breaker: closed -> open -> half-open -> closed/open, with `now` passed in."""

from __future__ import annotations

import pytest
from isthmus.edge.breaker import BreakerState, CircuitBreaker


def test_opens_after_consecutive_failures() -> None:
    b = CircuitBreaker(failure_threshold=3, cooldown_s=5.0)
    b.record_failure(0.0)
    b.record_failure(0.1)
    assert b.state(0.2) is BreakerState.CLOSED and b.allow(0.2)
    b.record_failure(0.3)
    assert b.state(0.3) is BreakerState.OPEN
    assert not b.allow(1.0)


def test_success_resets_the_count() -> None:
    b = CircuitBreaker(failure_threshold=2)
    b.record_failure(0.0)
    b.record_success(0.1)
    b.record_failure(0.2)
    assert b.state(0.2) is BreakerState.CLOSED


def test_half_open_allows_one_probe_then_closes() -> None:
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5.0)
    b.record_failure(0.0)
    assert not b.can_try(4.9)
    assert b.state(5.0) is BreakerState.HALF_OPEN
    assert b.allow(5.0)
    assert not b.allow(5.1)  # only one probe at a time
    b.record_success(6.0)
    assert b.state(6.0) is BreakerState.CLOSED and b.allow(6.0) and b.allow(6.0)


def test_failed_probe_reopens_with_longer_cooldown() -> None:
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5.0, max_cooldown_s=8.0)
    b.record_failure(0.0)
    assert b.allow(5.0)
    b.record_failure(5.5)
    assert b.state(5.5) is BreakerState.OPEN and b.cooldown_s == 8.0
    assert not b.can_try(13.0)
    assert b.can_try(13.5)
    b.record_success(14.0)
    assert b.cooldown_s == 5.0


def test_released_probe_frees_the_slot() -> None:
    b = CircuitBreaker(failure_threshold=1, cooldown_s=1.0)
    b.record_failure(0.0)
    assert b.allow(2.0)
    b.release(2.1)
    assert b.allow(2.2)


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown_s=10.0, max_cooldown_s=5.0)
