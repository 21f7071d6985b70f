"""Throttling of failed API-key attempts per source address (sans-IO).

Each source address has a token bucket of failed attempts: `max_failures` of them at once, one
more credited every `window_s / max_failures` seconds. A source with no credit left is refused
(`RATE_LIMITED`, retryable, with the seconds to wait) before its key is even looked at, so a
guesser learns nothing while throttled. Each time a source runs out again before its bucket has
refilled completely, its wait doubles (one credit's time, then 2x, 4x, ... up to `max_backoff_s`):
a guesser that spends each credit as soon as it comes back backs off exponentially, while a
source that stays quiet for a whole window starts afresh. Each wait is stretched by a random part
of itself (`jitter`), so sources throttled together (one attacker's many addresses) do not all
come back, and cost the edge a handshake each, in the same instant. IPv6 sources are grouped by /64, the
block one subscriber usually holds. The table is bounded: when full, a source whose bucket has
refilled is dropped first (it carries no state worth keeping), else the least recently failing
one. `now` is passed in; callers use `time.monotonic()`.
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThrottleLimits:
    """How many wrong keys a source may present, and how many sources are remembered."""

    max_failures: int = 10  # failed attempts a source may make in a burst
    window_s: float = 60.0  # seconds for a source's full burst to be credited back
    max_sources: int = 65_536  # sources remembered (bounds the table's memory)
    max_backoff_s: float = 900.0  # seconds: the longest wait the doubling may reach
    jitter: float = 0.5  # each wait is stretched by a random 0 to this fraction of itself

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError("max_failed_attempts: expected an integer >= 1")
        if self.window_s <= 0:
            raise ValueError("failed_attempt_window_s: expected a number > 0")
        if self.max_sources < 1:
            raise ValueError("max_throttled_sources: expected an integer >= 1")
        if self.max_backoff_s <= 0:
            raise ValueError("max_backoff_s: expected a number > 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter: expected a number in [0, 1]")


def source_key(source: str) -> str:
    """The throttling key for an address: itself, or its /64 for IPv6; odd strings pass as-is."""
    try:
        addr = ipaddress.ip_address(source.split("%", 1)[0])
    except ValueError:
        return source[:128]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(slots=True)
class _Bucket:
    credits: float  # failed attempts left at `at`
    at: float  # when `credits` was counted; refilling starts then (later than now while backing off)
    level: int = 0  # times in a row the source ran out before its bucket refilled


class FailureThrottle:
    """Token buckets of failed attempts, keyed by source address, with exponential backoff."""

    def __init__(self, limits: ThrottleLimits | None = None, rng: random.Random | None = None) -> None:
        self.limits = limits or ThrottleLimits()
        self._rng = rng or random.Random()  # for the jitter
        self._rate = self.limits.max_failures / self.limits.window_s  # credits per second
        # key -> bucket; order = least recently failing first
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.num_refused = 0  # requests refused while throttled

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, source: str, now: float) -> float:
        """Seconds until `source` may try again; 0.0 when it is not throttled."""
        key = source_key(source)
        credits = self._credits(key, now)
        if credits >= 1.0:
            return 0.0
        bucket = self._buckets[key]
        return (1.0 - credits) / self._rate + max(0.0, bucket.at - now)

    def check(self, source: str, now: float) -> float:
        """Like `retry_after`, and counts a refusal when the source is throttled."""
        wait = self.retry_after(source, now)
        if wait > 0.0:
            self.num_refused += 1
        return wait

    def record_failure(self, source: str, now: float) -> None:
        """`source` presented a wrong or missing key: spend one credit. Out of credit again
        before its bucket refilled: the wait doubles (refilling starts later)."""
        key = source_key(source)
        credits = self._credits(key, now)
        old = self._buckets.pop(key, None)
        # a full bucket forgets the past: the source stayed quiet for a whole window
        level = 0 if old is None or credits >= self.limits.max_failures else old.level
        bucket = _Bucket(max(0.0, credits - 1.0), now, level)
        if bucket.credits < 1.0:
            bucket.level += 1
            base = (1.0 - bucket.credits) / self._rate  # the wait for one credit
            wait = min(self.limits.max_backoff_s, base * 2.0 ** (bucket.level - 1))
            wait *= 1.0 + self.limits.jitter * self._rng.random()
            bucket.at = now + max(0.0, wait - base)
        if len(self._buckets) >= self.limits.max_sources:
            self._make_room(now)
        self._buckets[key] = bucket

    def _credits(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.limits.max_failures)
        return min(float(self.limits.max_failures), bucket.credits + max(0.0, now - bucket.at) * self._rate)

    def _make_room(self, now: float) -> None:
        """Drop one source: the oldest whose bucket is full again, else the oldest."""
        full = float(self.limits.max_failures)
        for i, key in enumerate(self._buckets):
            if i >= 64:  # look a short way only: the oldest are the likeliest to have refilled
                break
            if self._credits(key, now) >= full:
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)
