"""Which connections the edge holds (sans-IO): a total cap, a cap per source address, and idle
eviction under pressure.

A connection is admitted once its handshake completes (its address is then validated, so the
per-source cap cannot be spent by spoofed packets). At the total cap, a newcomer is not simply
refused: the connection that has been idle longest, with no request streams open and idle for at
least `evict_idle_after_s`, is evicted to make room, so a crowd of idle connections cannot lock
legitimate clients out. Only when every connection is busy (or freshly used) is the newcomer
refused. The per-source cap works the same way within one source: a source at its cap gets room
by evicting its own longest-idle connection (clients behind one NAT are not locked out by idle
neighbours), and is refused only when all of its connections are busy. A source throttled for
wrong API keys (`auth_throttle.py`) is refused outright (`throttled_s` > 0), before any of its
streams cost the edge work. `now` is passed in; connections are any hashable handle.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_connections: int = 1024  # connections held at once (handshakes in progress are capped apart)
    max_connections_per_source: int = 256  # from one source address
    evict_idle_after_s: float = 2.0  # seconds without a stream before a connection may be evicted

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_source < 1:
            raise ValueError("max_connections: max_connections and max_connections_per_source must be >= 1")
        if self.evict_idle_after_s < 0:
            raise ValueError("evict_idle_after_s: expected a number >= 0")


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict for a newcomer: admitted (possibly after evicting `evict`), or refused."""

    is_admitted: bool
    evict: Hashable | None = None
    reason: str = ""


@dataclass(slots=True)
class _Held:
    source: str
    num_streams: int
    idle_since: float  # when its last stream finished (or it was admitted)


class ConnectionTable:
    """The admitted connections, their source addresses and how long each has been idle."""

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self._held: dict[Hashable, _Held] = {}
        self._per_source: dict[str, int] = {}
        self.num_evicted = 0
        self.num_refused = 0
        self.num_refused_throttled = 0  # of which: the source was throttled for wrong API keys

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, conn: Hashable) -> bool:
        return conn in self._held

    def num_from(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def admit(
        self, conn: Hashable, source: str, now: float, num_streams: int = 0, throttled_s: float = 0.0
    ) -> Admission:
        """Decide on `conn` from `source`; when admitted it is recorded (and `evict` forgotten).

        `num_streams` counts requests it already opened (0-RTT data comes before the handshake);
        `throttled_s` is how long `source` is still throttled for wrong API keys (0: it is not).
        """
        lim = self.limits
        evict = None
        if throttled_s > 0.0:
            self.num_refused += 1
            self.num_refused_throttled += 1
            return Admission(
                False, reason=f"too many failed API keys from this address; retry in {throttled_s:.1f} s"
            )
        if self.num_from(source) >= lim.max_connections_per_source:
            evict = self._longest_idle(now, source)
            if evict is None:
                self.num_refused += 1
                return Admission(False, reason="too many connections from this address")
        elif len(self._held) >= lim.max_connections:
            evict = self._longest_idle(now)
            if evict is None:
                self.num_refused += 1
                return Admission(False, reason="too many connections")
        if evict is not None:
            self.remove(evict)
            self.num_evicted += 1
        self._held[conn] = _Held(source, num_streams, now)
        self._per_source[source] = self.num_from(source) + 1
        return Admission(True, evict=evict)

    def stream_opened(self, conn: Hashable) -> None:
        held = self._held.get(conn)
        if held is not None:
            held.num_streams += 1

    def stream_closed(self, conn: Hashable, now: float) -> None:
        held = self._held.get(conn)
        if held is not None:
            held.num_streams = max(0, held.num_streams - 1)
            held.idle_since = now

    def remove(self, conn: Hashable) -> None:
        held = self._held.pop(conn, None)
        if held is None:
            return
        left = self._per_source.get(held.source, 1) - 1
        if left > 0:
            self._per_source[held.source] = left
        else:
            self._per_source.pop(held.source, None)

    def _longest_idle(self, now: float, source: str | None = None) -> Hashable | None:
        """The connection (of `source`, if given) idle longest, if idle long enough."""
        best, best_since = None, now - self.limits.evict_idle_after_s
        for conn, held in self._held.items():
            if source is not None and held.source != source:
                continue
            if held.num_streams == 0 and held.idle_since <= best_since:
                best, best_since = conn, held.idle_since
        return best
