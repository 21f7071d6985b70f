"""Mid-answer confidence monitor (sans-IO).

While the edge answers, each new token's entropy (nats) is fed in. If the mean entropy over the
last `window` tokens rises above `threshold` while no more than `max_checked_tokens` tokens have
been produced, the edge model has lost the thread early enough that a hand-over to the center is
worth it. Later tokens are not checked: by then most of the answer has been streamed already.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable


class ConfidenceMonitor:
    """`observe(entropies) -> bool`; True (and stays True) once confidence has collapsed."""

    def __init__(self, window: int = 16, threshold: float = 3.0, max_checked_tokens: int = 64) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"confidence.window: expected an integer >= 1, got {window!r}")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"confidence.threshold: expected a finite number >= 0, got {threshold!r}")
        if not isinstance(max_checked_tokens, int) or max_checked_tokens < window:
            raise ValueError(
                f"confidence.max_checked_tokens: expected an integer >= window ({window}), "
                f"got {max_checked_tokens!r}"
            )
        self.window = window
        self.threshold = float(threshold)  # nats
        self.max_checked_tokens = max_checked_tokens
        self.num_tokens = 0  # tokens observed so far, checked or not
        self.is_collapsed = False
        self.collapsed_at: int | None = None  # token count at which it collapsed
        self.last_mean: float | None = None  # nats: the latest full-window mean
        self._recent: deque[float] = deque(maxlen=window)
        self._sum = 0.0

    def observe(self, entropies: Iterable[float]) -> bool:
        """Feed the entropies of newly produced tokens (nats, one per token)."""
        for entropy in entropies:
            if self.is_collapsed:
                break
            self.num_tokens += 1
            if self.num_tokens > self.max_checked_tokens:
                break
            value = float(entropy)
            if math.isnan(value):
                value = 0.0  # no information about this token: count it as confident
            value = min(max(value, 0.0), 1e6)  # inf would poison the running sum
            if len(self._recent) == self.window:
                self._sum -= self._recent[0]
            self._recent.append(value)
            self._sum += value
            if len(self._recent) == self.window:
                self.last_mean = self._sum / self.window
                if self.last_mean > self.threshold:
                    self.is_collapsed = True
                    self.collapsed_at = self.num_tokens
        return self.is_collapsed

    @property
    def is_done_checking(self) -> bool:
        """True once no further token can trigger a collapse (the caller may stop feeding)."""
        return self.is_collapsed or self.num_tokens >= self.max_checked_tokens
