"""The one deadline and timing record of a served request (both tiers use it).

`RequestClock` holds a request's arrival, its deadline and when its first token left; the
serving adapter (`serving.py`) awaits every engine output through `RequestClock.wait`, so a
request past its deadline ends with a `TimeoutError` there (and its engine request is aborted),
whichever tier serves it. `now` is passed in, never read from a global clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from isthmus.protocol import Timings

T = TypeVar("T")


def earliest(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional limits (None: no limit)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


class RequestClock:
    """Arrival time, deadline and token times of one request (seconds from `now()`).

    The deadline is the earlier of ``timeout_ms`` (the request's own) and ``time_remaining_s``
    (a transport's deadline, e.g. gRPC's), counted from construction; None: no deadline.
    """

    def __init__(
        self, now: Callable[[], float], timeout_ms: int | None, *, time_remaining_s: float | None = None
    ) -> None:
        self.now = now
        self.arrived = now()
        timeout_s = earliest(None if timeout_ms is None else timeout_ms / 1000.0, time_remaining_s)
        self.deadline = None if timeout_s is None else self.arrived + timeout_s
        self.queue_s: float | None = None
        self.first_token_s: float | None = None  # seconds from arrival to the first token sent
        self._last_token: float | None = None

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` within the deadline; raise `TimeoutError` past it."""
        if self.deadline is None:
            return await awaitable
        left = self.deadline - self.now()
        if left <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise TimeoutError
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that arrives
        # as the awaited item completes, and a cancelled request must stop.
        async with asyncio.timeout(left):
            return await awaitable

    def mark_token(self) -> float | None:
        """Note that tokens were sent now; return the gap since the previous ones (None: first)."""
        now = self.now()
        prev = self._last_token
        self._last_token = now
        if prev is None:
            self.first_token_s = now - self.arrived
            return None
        return now - prev

    def timings(self) -> Timings:
        """Queue, first-token and total time so far, in milliseconds (never negative)."""
        total = self.now() - self.arrived
        return Timings(
            queue_ms=max(0.0, (self.queue_s or 0.0) * 1000.0),
            first_token_ms=max(0.0, (total if self.first_token_s is None else self.first_token_s) * 1000.0),
            total_ms=max(0.0, total * 1000.0),
        )


__all__ = ["RequestClock", "earliest"]
