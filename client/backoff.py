"""Exponential backoff with full jitter, sans-IO: the random source is passed in."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before retry number `attempt` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads retries of many clients hit by the same failure (AWS architecture blog,
    "Exponential Backoff And Jitter").
    """

    base: float = 0.05  # seconds
    cap: float = 2.0  # seconds
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt` (>= 1)."""
        if attempt < 1:
            raise ValueError(f"attempt: must be >= 1, got {attempt}")
        ceiling = min(self.cap, self.base * (2.0 ** min(attempt - 1, 62)))
        return self.rng.uniform(0.0, ceiling)
