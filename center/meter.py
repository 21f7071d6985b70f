"""Recent generation throughput for `Status.tokens_per_s` (sans-IO: `now` is passed in)."""

from __future__ import annotations

from collections import deque

DEFAULT_WINDOW_S = 10.0  # seconds of history the rate is averaged over


class RateMeter:
    """Tokens per second over a sliding window.

    ``add(n, now)`` records ``n`` tokens produced at ``now`` (seconds, any monotonic clock);
    ``rate(now)`` is the number of tokens recorded in ``(now - window_s, now]`` divided by the
    window, so a server that stops generating decays to 0 within one window.
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()  # (time s, tokens), oldest first
        self._total = 0

    def add(self, num_tokens: int, now: float) -> None:
        if num_tokens < 0:
            raise ValueError("num_tokens must be >= 0")
        if num_tokens:
            self._events.append((now, num_tokens))
            self._total += num_tokens
        self._expire(now)

    def rate(self, now: float) -> float:
        """Tokens per second over the last window."""
        self._expire(now)
        return self._total / self.window_s

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._events and self._events[0][0] <= cutoff:
            _, n = self._events.popleft()
            self._total -= n
