"""Circuit breaker for one center replica (sans-IO: `now` is passed in, in seconds).

closed -> (``failure_threshold`` consecutive failures) -> open -> (cool-down elapsed) -> half-open,
where up to ``half_open_max_calls`` probe requests go through: a success closes the breaker, a
failure opens it again with the cool-down doubled (up to ``max_cooldown_s``), so a replica that
stays broken is probed ever more rarely.
"""

from __future__ import annotations

from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Tracks consecutive failures of one replica and says whether a request may go to it."""

    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 60.0,
        half_open_max_calls: int = 1,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("breaker: failure_threshold must be >= 1")
        if not 0 < cooldown_s <= max_cooldown_s:
            raise ValueError("breaker: need 0 < cooldown_s <= max_cooldown_s")
        if half_open_max_calls < 1:
            raise ValueError("breaker: half_open_max_calls must be >= 1")
        self.failure_threshold = failure_threshold
        self.base_cooldown_s = cooldown_s  # seconds
        self.max_cooldown_s = max_cooldown_s  # seconds
        self.half_open_max_calls = half_open_max_calls
        self.cooldown_s = cooldown_s  # seconds: the current cool-down (grows while probes fail)
        self.num_consecutive_failures = 0
        self.opened_at: float | None = None
        self._state = BreakerState.CLOSED
        self._num_probes = 0  # probe calls in flight while half-open

    def state(self, now: float) -> BreakerState:
        """The state at `now` (an open breaker whose cool-down has passed reads as half-open)."""
        if self._state is BreakerState.OPEN and self.opened_at is not None:
            if now - self.opened_at >= self.cooldown_s:
                self._state = BreakerState.HALF_OPEN
                self._num_probes = 0
        return self._state

    def can_try(self, now: float) -> bool:
        """Whether a request could be sent now, without claiming a probe slot."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._num_probes < self.half_open_max_calls
        return False

    def allow(self, now: float) -> bool:
        """Claim the right to send one request now (claims a probe slot when half-open)."""
        if not self.can_try(now):
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._num_probes += 1
        return True

    def record_success(self, now: float) -> None:
        """The request (or probe) succeeded: close and reset."""
        self._state = BreakerState.CLOSED
        self.num_consecutive_failures = 0
        self.cooldown_s = self.base_cooldown_s
        self.opened_at = None
        self._num_probes = 0

    def record_failure(self, now: float) -> None:
        """The request failed: count it; open at the threshold, re-open (longer) on a failed probe."""
        state = self.state(now)
        self.num_consecutive_failures += 1
        if state is BreakerState.HALF_OPEN:
            self.cooldown_s = min(self.cooldown_s * 2, self.max_cooldown_s)
            self._open(now)
        elif state is BreakerState.CLOSED and self.num_consecutive_failures >= self.failure_threshold:
            self._open(now)

    def release(self, now: float) -> None:
        """A claimed call ended with neither success nor failure (e.g. the app cancelled it)."""
        if self._state is BreakerState.HALF_OPEN and self._num_probes > 0:
            self._num_probes -= 1

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self.opened_at = now
        self._num_probes = 0
