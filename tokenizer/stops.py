"""Stop strings over streamed text.

Text arrives in arbitrary pieces (token deltas), so a stop string can span pieces. The matcher
emits text as soon as it can no longer be part of a stop string, holds back only a tail that is
still a proper prefix of some stop (at most len(longest stop) - 1 characters), and on a match
emits the text before the stop and never the stop itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import TokenizerError


class StopStringMatcher:
    """Find the first occurrence of any of `stops` in a stream of text pieces."""

    def __init__(self, stops: Sequence[str]):
        if isinstance(stops, str):
            raise TokenizerError("stops must be a list of strings, not a string")
        for stop in stops:
            if not isinstance(stop, str) or not stop:
                raise TokenizerError(f"stop strings must be non-empty strings, got {stop!r}")
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(stops))
        self._max_hold = max((len(s) for s in self.stops), default=1) - 1  # chars
        self._held = ""
        self.is_stopped = False
        self.matched: str | None = None  # the stop string that was hit

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was hit).

        After a hit every further push returns ("", True).
        """
        if self.is_stopped:
            return "", True
        buf = self._held + text
        # The stop that completes first wins (ties: the one that starts first), so the result
        # does not depend on where token boundaries fall.
        hit_at, hit, hit_end = -1, None, -1
        for stop in self.stops:
            i = buf.find(stop)
            end = i + len(stop)
            if i != -1 and (hit is None or (end, i) < (hit_end, hit_at)):
                hit_at, hit, hit_end = i, stop, end
        if hit is not None:
            self.is_stopped, self.matched, self._held = True, hit, ""
            return buf[:hit_at], True
        num_hold = self._num_to_hold(buf)
        self._held = buf[len(buf) - num_hold :] if num_hold else ""
        return buf[: len(buf) - num_hold], False

    def _num_to_hold(self, buf: str) -> int:
        # Longest tail of buf that is a proper prefix of some stop string.
        for k in range(min(len(buf), self._max_hold), 0, -1):
            tail = buf[-k:]
            if any(stop.startswith(tail) for stop in self.stops):
                return k
        return 0

    def flush(self) -> str:
        """End of stream: the held-back text (it turned out not to be a stop)."""
        held, self._held = self._held, ""
        return "" if self.is_stopped else held
