"""Source addresses refused before their handshake (sans-IO): who is blocked, until when, and
whether a new connection attempt from one gets a refusal or is silently dropped.

A source the edge has throttled (wrong API keys, or requests refused for breaking the limits) is
blocked until its wait is over. While blocked, its new connections are stopped at their first
Initial packet, before any TLS work: the cheapest refusal there is. One attempt per
`reply_interval_s` gets a stateless CONNECTION_CLOSE that says why and for how long, so an honest
client learns it; every other attempt is dropped, so a flood of reconnections costs the edge a
dictionary lookup and a header parse each. Connections a blocked source already holds are not the
gate's business (`quic_connection.py` closes the ones that have proved nothing). Keyed by the exact
address (the lookup runs for every datagram); the throttles behind it group IPv6 by /64.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# why a source is refused (the reason phrases of its refusals)
WRONG_KEYS = "too many failed API keys from this address"
REFUSED_REQUESTS = "too many refused requests from this address"


class Verdict(enum.Enum):
    PASS = "pass"  # not blocked: the packet goes on to QUIC
    REPLY = "reply"  # blocked: answer this attempt with a stateless refusal
    DROP = "drop"  # blocked, and answered recently: drop it


@dataclass(frozen=True, slots=True)
class GateLimits:
    max_sources: int = 65_536  # blocked sources remembered (bounds the table)
    reply_interval_s: float = 1.0  # seconds between stateless refusals to one source

    def __post_init__(self) -> None:
        if self.max_sources < 1 or self.reply_interval_s < 0:
            raise ValueError("gate: max_sources must be >= 1 and reply_interval_s >= 0")


@dataclass(slots=True)
class _Blocked:
    until: float
    reason: str
    replied_at: float = float("-inf")


class SourceGate:
    """Blocked source addresses and their deadlines; `verdict` for each new connection attempt."""

    def __init__(self, limits: GateLimits | None = None) -> None:
        self.limits = limits or GateLimits()
        self._blocked: dict[str, _Blocked] = {}
        self.num_blocked = 0  # times a source was blocked (or its block extended)
        self.num_replied = 0  # attempts answered with a stateless refusal
        self.num_dropped = 0  # attempts dropped

    def __len__(self) -> int:
        return len(self._blocked)

    def block(self, source: str, until: float, reason: str, now: float) -> None:
        """Refuse new connections from `source` until `until` (a later deadline wins)."""
        entry = self._blocked.get(source)
        if entry is not None:
            if until > entry.until:
                entry.until, entry.reason = until, reason
                self.num_blocked += 1
            return
        if len(self._blocked) >= self.limits.max_sources:
            self._make_room(now)
        self._blocked[source] = _Blocked(until, reason)
        self.num_blocked += 1

    def blocked_for(self, source: str, now: float) -> float:
        """Seconds `source` is still blocked (0.0: not blocked). The per-datagram fast path."""
        entry = self._blocked.get(source)
        if entry is None:
            return 0.0
        if entry.until <= now:
            del self._blocked[source]
            return 0.0
        return entry.until - now

    def verdict(self, source: str, now: float) -> Verdict:
        """For a new connection attempt (an Initial packet of an unknown connection) from `source`."""
        if self.blocked_for(source, now) <= 0.0:
            return Verdict.PASS
        entry = self._blocked[source]
        if now - entry.replied_at >= self.limits.reply_interval_s:
            entry.replied_at = now
            self.num_replied += 1
            return Verdict.REPLY
        self.num_dropped += 1
        return Verdict.DROP

    def reason(self, source: str, now: float) -> str:
        """Why `source` is refused and for how long (for the stateless refusal)."""
        entry = self._blocked.get(source)
        if entry is None:
            return ""
        return f"{entry.reason}; retry in {max(0.0, entry.until - now):.1f} s"

    def _make_room(self, now: float) -> None:
        """Forget expired blocks; if none expired, the oldest block."""
        expired = [s for s, e in self._blocked.items() if e.until <= now]
        for source in expired:
            del self._blocked[source]
        if not expired:
            del self._blocked[next(iter(self._blocked))]
